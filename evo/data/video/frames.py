"""VideoFrames: sampled frames as an ImageSet, with each frame's clip, shot and time alongside.

The ImageSet's `groups` are the clip ids, so every split evo makes (the source's train/test split,
the search's validation split) keeps a clip's frames on one side. Reading a collection never stops
at a bad file: it is logged and listed in `skipped` with the reason, and the rest is read.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from evo.data.dataset import ImageSet, holdout_split
from evo.data.video.decode import VideoError, probe
from evo.data.video.sample import ClipReader, Sampling, capped_size
from evo.data.video.shots import Shot
from evo.errors import DataError

log = logging.getLogger("evo.data")


@dataclass(frozen=True)
class Clip:
    """One labelled clip: [start, end) seconds of `path` (end None: to the end of the file)."""

    path: str
    label: str
    start: float = 0.0
    end: float | None = None
    shots: list[Shot] = field(default_factory=list)


@dataclass(frozen=True, eq=False)
class VideoFrames:
    """`data.images[i]` is a frame of clip `clip[i]` (an index into `clips`, also `data.groups`),
    in that clip's shot `shot[i]`, at `time[i]` seconds of its file."""

    data: ImageSet
    clip: np.ndarray
    shot: np.ndarray
    time: np.ndarray
    clips: list[Clip]

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return (f"VideoFrames({len(self)} frames of {len(set(self.clip.tolist()))} clips, "
                f"{len(self.data.classes)} classes, {len(self.data.skipped)} skipped)")

    def subset(self, rows: np.ndarray) -> VideoFrames:
        rows = np.asarray(rows, dtype=np.int64)
        return VideoFrames(self.data.subset(rows), self.clip[rows], self.shot[rows], self.time[rows], self.clips)

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple[VideoFrames, VideoFrames]:
        """(train, test) by clip, stratified by class: a clip's frames all fall on one side."""
        train, test = holdout_split(self.data, test_fraction, seed)
        in_test = np.isin(self.clip, np.unique(test.groups)) if len(test) else np.zeros(len(self), bool)
        return self.subset(np.flatnonzero(~in_test)), self.subset(np.flatnonzero(in_test))


def common_size(paths: Sequence[str], size: tuple[int, int] | None) -> tuple[tuple[int, int] | None, dict[str, str]]:
    """The frame size for a collection (given, else the most common video size capped to MAX_SIDE), and
    the files that could not even be probed, with the reason."""
    bad: dict[str, str] = {}
    sizes: Counter = Counter()
    for p in dict.fromkeys(paths):
        try:
            info = probe(p)
            sizes[capped_size(info.height, info.width)] += 1
        except VideoError as e:
            bad[p] = str(e)
    if size is not None or not sizes:
        return size, bad
    return max(sizes, key=lambda hw: (sizes[hw], hw[0] * hw[1], hw)), bad


def read_videos(clips: Sequence[Clip], classes: Sequence[str], sampling: Sampling | None = None,
                origin: str = "videos") -> VideoFrames:
    """Sample every clip; a clip that fails is logged, listed in `skipped` as 'path: reason' and left out.

    Classes left with no readable clip are dropped with a warning (as image sources do).
    """
    sampling = sampling or Sampling()
    if not clips:
        raise DataError(f"{origin} lists no video files")
    size, bad = common_size([c.path for c in clips], sampling.size)
    sampling = replace(sampling, size=size)
    frames, labels, clip_ids, shot_ids, times, kept, skipped = [], [], [], [], [], [], []
    for clip in clips:
        if clip.path in bad:
            skipped.append(_named(clip.path, bad[clip.path]))
            continue
        try:
            reader = ClipReader(clip.path, sampling, clip.start, clip.end)
            batches = list(reader)
            if not batches:
                raise VideoError(f"{clip.path}: no frame was sampled from [{clip.start}, {clip.end}) s")
        except VideoError as e:
            log.warning("skipping video %s", e)
            skipped.append(_named(clip.path, str(e)))
            continue
        t = np.concatenate([b.time for b in batches])
        frames += [b.frames for b in batches]
        labels.append(np.full(len(t), classes.index(clip.label) if clip.label in classes else -1))
        clip_ids.append(np.full(len(t), len(kept)))
        shot_ids.append(reader.shot_of(t))
        times.append(t)
        kept.append(replace(clip, shots=list(reader.shots)))
    if not kept:
        raise DataError(f"{origin}: none of its {len(clips)} videos could be read; first: {skipped[0]}")
    present = {c.label for c in kept}
    names = [c for c in classes if c in present]
    for c in classes:
        if c not in present:
            log.warning("%s: class %r has no readable video and is dropped", origin, c)
    remap = np.array([names.index(c) if c in present else -1 for c in classes], dtype=np.int64)
    clip_arr = np.concatenate(clip_ids).astype(np.int64)
    data = ImageSet(np.concatenate(frames), remap[np.concatenate(labels)], names, skipped, clip_arr)
    return VideoFrames(data, clip_arr, np.concatenate(shot_ids).astype(np.int64), np.concatenate(times), kept)


def _named(path: str, reason: str) -> str:
    return reason if path in reason else f"{path}: {reason}"


def video_files(class_dir: Path, extensions: frozenset[str]) -> list[Path]:
    return [p for p in class_dir.rglob("*")
            if p.suffix.lower() in extensions and not p.name.startswith(".") and (p.is_file() or p.is_symlink())]
