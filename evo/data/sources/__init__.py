"""Data sources, registered by name in SOURCES; `load_source` also accepts a folder or a .csv path."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

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


def _resolve(source: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """A registered name as is; a directory → `folder` (`video_folder` when its class folders hold
    videos and no images), a .csv file → `csv` (`video_csv` when its first row names a video)."""
    if isinstance(source, str) and source in SOURCES:
        return source, {}
    path = Path(source)
    if path.is_dir():
        return ("video_folder" if _holds_videos(path) else "folder"), {"path": path}
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise DataError(f"manifest {path} does not exist")
        return ("video_csv" if _lists_videos(path) else "csv"), {"path": path}
    if isinstance(source, os.PathLike) or os.sep in str(source):
        raise DataError(f"{source} is neither an image folder nor a .csv manifest")
    return str(source), {}  # SOURCES.get raises, listing the valid names


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


def load_source(source: str | os.PathLike, **options: Any) -> Split:
    """(train, test) ImageSets from a registered source name, an image folder or a CSV manifest.

    Options go to the source function; an option it does not take is a ConfigError listing valid ones.
    """
    name, implied = _resolve(source)
    fn = SOURCES.get(name)
    kwargs = {**implied, **options}
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as e:
        valid = [p for p in inspect.signature(fn).parameters if p not in implied]
        raise ConfigError(f"data source {name!r}: {e}; valid options: {valid}") from None
    return fn(**kwargs)


__all__ = ["SOURCES", "Split", "load_source"]
