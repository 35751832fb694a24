"""A CSV manifest of video clips: `path,label[,start,end]` (seconds), so one long video can carry
several labelled segments. Relative paths resolve against the CSV's folder (or `root`)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from evo.data.sources._images import inside, natural_key
from evo.data.sources.base import SOURCES
from evo.data.sources.video_folder import images_only, sampling_from
from evo.errors import DataError

if TYPE_CHECKING:
    from evo.data.video.frames import VideoFrames

_HEADER = {"path", "file", "filename", "video", "filepath"}


def _seconds(cell: str, where: str, name: str) -> float | None:
    if not cell:
        return None
    try:
        value = float(cell[:-1] if cell.endswith("s") else cell)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < 0:
        raise DataError(f"{where}: {name} must be seconds >= 0 (e.g. 12.5); got {cell!r}")
    return value


def read_clip_rows(path: Path, base: Path):
    """Clips of a video manifest; an optional header row (path,label,start,end) is skipped."""
    from evo.data.video.frames import Clip

    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = [(n, [c.strip() for c in row]) for n, row in enumerate(csv.reader(f), 1) if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read manifest {path}: {e}") from None
    if rows and rows[0][1][0].lower() in _HEADER:
        rows = rows[1:]
    clips = []
    for n, cells in rows:
        where = f"{path}:{n}"
        if not 2 <= len(cells) <= 4 or not cells[0] or not cells[1]:
            raise DataError(f"{where}: expected 'path,label[,start,end]' with path and label set; got {cells!r}")
        start = _seconds(cells[2], where, "start") if len(cells) > 2 else None
        end = _seconds(cells[3], where, "end") if len(cells) > 3 else None
        clips.append(Clip(str(inside(base, cells[0])), cells[1], start or 0.0, end))
    return clips


def video_csv_frames(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
    sampling: str = "uniform",
    frames: int = 8,
    fps: float = 1.0,
    detector: str | None = "content",
    threshold: float | None = None,
    min_shot: float = 0.4,
    size: int | Sequence[int] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[VideoFrames, VideoFrames]:
    """Each row is a clip; frames carry the row's clip id, and the train/test split is by clip.
    Sampling options as for `video_folder`. Unreadable videos are skipped and listed."""
    from evo.data.video.frames import read_videos

    path = Path(path)
    base = Path(root) if root is not None else path.parent
    if not base.is_dir():
        raise DataError(f"manifest root {base} does not exist or is not a folder")
    clips = read_clip_rows(path, base)
    if not clips:
        raise DataError(f"manifest {path} has no rows; expected 'path,label[,start,end]' lines")
    if classes is not None:
        classes = [str(c) for c in classes]
        unknown = sorted({c.label for c in clips} - set(classes))
        if unknown:
            raise DataError(f"manifest {path}: unknown labels {unknown}; declared classes: {classes}")
    else:
        classes = sorted({c.label for c in clips}, key=natural_key)
    spec = sampling_from(sampling, frames, fps, detector, threshold, min_shot, size)
    return read_videos(clips, classes, spec, f"manifest {path}").split(test_fraction, seed)


video_csv = SOURCES.register("video_csv")(images_only(video_csv_frames))
