"""Data sources, registered by name in SOURCES; `load_source` also accepts a folder or a .csv path."""

from __future__ import annotations

import inspect
import os
import reprlib
from pathlib import Path
from typing import Any

from evo.data.dataset import check_size
from evo.data.sources import (  # noqa: F401  (registers the sources)
    digits,
    fashion_mnist,
    folder,
    manifest,
    video_folder,
    video_manifest,
)
from evo.data.sources.base import SOURCES, Split
from evo.errors import ConfigError, DataError

BUILTIN = "builtin:"


def _takes_path(name: str) -> bool:
    return "path" in inspect.signature(SOURCES.get(name)).parameters


def builtin_names() -> list[str]:
    """Registered sources that need no path (datasets shipped by a package)."""
    return [n for n in SOURCES.names() if not _takes_path(n)]


def check_source(source: str | os.PathLike, names: bool = True) -> str | Path:
    """What `source` names, refused as `load_source` would but without reading a file (nor importing
    torch): a registered source's name (`builtin:NAME`, or a bare name when `names` and no such path
    exists), or a folder or .csv path that exists."""
    builtins = ", ".join(BUILTIN + n for n in builtin_names())
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigError(f"a data source is a built-in dataset name ({builtins}) or the path of an image folder or "
                          f"CSV manifest (a str or os.PathLike); got {type(source).__name__} {reprlib.repr(source)}")
    if isinstance(source, str) and source.startswith(BUILTIN):
        name = source[len(BUILTIN):]
        if name not in SOURCES or _takes_path(name):
            raise DataError(f"{source!r}: no built-in dataset {name!r}; built-in datasets: {builtins}")
        return name
    path = Path(source)
    if path.exists():
        if path.is_dir() or path.suffix.lower() == ".csv":
            return path
        raise DataError(f"{path} is a file but not a .csv manifest; pass an image folder (one subfolder per class) "
                        "or a CSV of path,label rows")
    if path.suffix.lower() == ".csv":
        raise DataError(f"manifest {path} does not exist")
    if names and isinstance(source, str) and source in SOURCES:
        return source  # a path-taking source (folder, csv) then needs its `path=` option
    raise DataError(f"{str(source)!r} is not an image folder or .csv manifest that exists; built-in datasets are "
                    f"named {builtins}")


def _resolve(source: str | os.PathLike, names: bool) -> tuple[str, dict[str, Any]]:
    """(source name, implied options): a folder → `folder`, a .csv → `csv` (`video_folder` when its class
    folders hold videos and no images, `video_csv` when its first row names a video)."""
    found = check_source(source, names)
    if isinstance(found, str):
        return found, {}
    if found.is_dir():
        return ("video_folder" if _holds_videos(found) else "folder"), {"path": found}
    return ("video_csv" if _lists_videos(found) else "csv"), {"path": found}


def _holds_videos(root: Path) -> bool:
    from evo.data.sources._images import IMAGE_EXTENSIONS
    from evo.data.video.decode import VIDEO_EXTENSIONS

    suffixes = {p.suffix.lower() for d in root.iterdir() if d.is_dir() for p in d.rglob("*")}
    return bool(suffixes & VIDEO_EXTENSIONS) and not suffixes & IMAGE_EXTENSIONS


def _lists_videos(path: Path) -> bool:
    from evo.data.video.decode import VIDEO_EXTENSIONS

    try:
        with path.open(encoding="utf-8-sig") as f:
            for line in f:
                first = line.split(",")[0].strip().strip('"')
                if first and first.lower() not in {"path", "file", "filename", "image", "video", "filepath"}:
                    return Path(first).suffix.lower() in VIDEO_EXTENSIONS
    except (OSError, UnicodeDecodeError):
        return False  # the csv source reports the unreadable file
    return False


def load_source(source: str | os.PathLike, names: bool = True, **options: Any) -> Split:
    """(train, test) ImageSets from `builtin:NAME`, an image folder or a CSV manifest (a path that exists
    always wins). `names=True` also accepts a bare built-in name such as `digits` (search spaces);
    the CLI passes False, so a typo or a missing folder is never silently a built-in dataset.

    Options go to the source function; an option it does not take is a ConfigError listing valid ones.
    Two options every source honours: `size` (height, width, or one side for a square), resizing as it
    reads or after; and `permute` (an int seed), every image's pixels shuffled by one fixed permutation
    after resizing (permuted Fashion-MNIST: a data type that pretrained conv features describe poorly).
    """
    name, implied = _resolve(source, names)
    fn = SOURCES.get(name)
    kwargs = {**implied, **options}
    if "size" in kwargs and kwargs["size"] is not None:
        kwargs["size"] = check_size(kwargs["size"], "data source option size")
    params = inspect.signature(fn).parameters
    size = kwargs.pop("size", None) if "size" not in params else None  # resized here when the source does not
    permute = kwargs.pop("permute", None)
    if permute is not None and (isinstance(permute, bool) or not isinstance(permute, int) or permute < 0):
        raise ConfigError(f"data source option permute must be an integer seed >= 0 (one pixel permutation for "
                          f"every image); got {permute!r}")
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as e:
        valid = [p for p in params if p not in implied]
        raise ConfigError(f"data source {name!r}: {e}; valid options: {valid}") from None
    train, test = fn(**kwargs)
    if size is not None:
        train, test = train.resized(tuple(size)), test.resized(tuple(size))
    if permute is not None:
        train, test = train.permuted(permute), test.permuted(permute)
    return train, test


__all__ = ["BUILTIN", "SOURCES", "Split", "builtin_names", "check_source", "load_source"]
