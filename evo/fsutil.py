"""Crash-safe file writes: the one place that knows evo's temporary names, fsync and atomic swaps.

Every temporary file or folder evo creates starts with `TMP_PREFIX`, so clean-up after a killed
process can remove exactly what evo made and nothing else (never a wildcard over hidden files).
A write is durable before it is visible: data and folder are fsynced, then renamed into place.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

TMP_PREFIX = ".evo-tmp-"


def is_evo_temp(name: str) -> bool:
    """Whether a file or folder name is one of evo's own temporary names."""
    return name.startswith(TMP_PREFIX)


def temp_dir(parent: Path, name: str) -> Path:
    """A new empty folder beside `parent/name` with evo's temporary prefix."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}.", dir=parent))


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file and folder under `path` (before the rename that publishes it)."""
    for root, _dirs, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader sees the old file or the new one, never a part."""
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, doc: Any) -> None:
    write_text_atomic(path, json.dumps(doc, indent=1, default=_json_default))


def _json_default(x: Any) -> Any:
    if hasattr(x, "to_dict"):
        return x.to_dict()
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"cannot write {type(x).__name__} as JSON")


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.cache
def _renameat2():
    """libc's renameat2, looked up on first use (the process's own symbols: no library search)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def swap_dir(new: Path, target: Path) -> None:
    """Publish folder `new` at `target`. An existing `target` is exchanged atomically (Linux
    renameat2 RENAME_EXCHANGE) so there is never a moment without it, then the old copy is removed.
    Elsewhere the old folder is moved aside first (a short window without `target`)."""
    fsync_tree(new)
    if not target.exists():
        os.replace(new, target)
        fsync_dir(target.parent)
        return
    exchange = _renameat2()
    if exchange is not None and exchange(_AT_FDCWD, os.fsencode(new), _AT_FDCWD, os.fsencode(target),
                                         _RENAME_EXCHANGE) == 0:
        fsync_dir(target.parent)
        shutil.rmtree(new, ignore_errors=True)  # `new` now holds the old contents
        return
    old = target.with_name(f"{TMP_PREFIX}{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(new, target)
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def remove_evo_temps(folder: Path) -> list[str]:
    """Remove evo's own temporary files and folders at the top of `folder` (not recursive)."""
    removed: list[str] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if not is_evo_temp(p.name):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(str(p))
    return removed


def mark_folder(folder: Path, marker: str, by: str) -> None:
    """Write `folder/marker` listing every file now in `folder`: the proof that evo wrote them all, which
    `marked_folder` checks before evo replaces the folder."""
    names = sorted(p.name for p in folder.iterdir() if p.name != marker)
    (folder / marker).write_text(json.dumps({"written_by": by, "files": names}))


def marked_folder(folder: Path, marker: str) -> bool | None:
    """Whether `folder` holds exactly the plain files its marker lists (so evo may replace it whole);
    None where there is no readable marker (the caller decides about folders older than markers)."""
    try:
        listed = json.loads((folder / marker).read_text()).get("files")
        if not isinstance(listed, list) or not all(isinstance(f, str) for f in listed):
            return False
        return {p.name for p in folder.iterdir()} == {marker, *listed} \
            and all((folder / f).is_file() and not (folder / f).is_symlink() for f in listed)
    except (OSError, ValueError, AttributeError):
        return None
