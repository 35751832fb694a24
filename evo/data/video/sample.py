"""Which frames of a clip become samples: uniform N per clip, a fixed rate, or keyframes per shot.

`ClipReader` streams one clip: it decodes in bounded batches, feeds every decoded frame to the shot
detector and yields only the sampled frames, in batches. After iteration `shots` holds the clip's
shots, and `shot_of(times)` maps sample times to shot indices. Sampling picks, for each target
time, the decoded frame nearest to it; several targets falling on one frame give one sample.
`shots` mode needs the cuts before it knows which frames are keyframes, so it decodes twice
(detection, then the keyframes); the other modes decode once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from evo.data.video.decode import FrameBatch, VideoError, VideoInfo, iter_frames, probe
from evo.data.video.shots import DETECTORS, Shot, make_detector, shots_from_cuts
from evo.errors import ConfigError

MODES = ("uniform", "fps", "shots")
MAX_FPS_FLOOR = 240.0  # `fps` sampling is capped at the video's rate, but never below this (see `_targets`)
MAX_SIDE = 256  # frames larger than this are scaled down (aspect kept) unless `size` is given


@dataclass(frozen=True)
class Sampling:
    """How a clip becomes samples.

    mode: 'uniform' (`frames` per clip, evenly spaced), 'fps' (`fps` frames per second, at most the
    video's own rate or 240: above it every frame is sampled once) or 'shots'
    (`frames` keyframes per detected shot, evenly spaced inside it). `detector` (a DETECTORS name,
    or None for one shot per clip), `threshold` (None: the detector's default) and `min_shot`
    (seconds) set shot detection. `size` (height, width) fixes the frame size; None keeps the
    video's own, scaled down to at most MAX_SIDE pixels a side.
    """

    mode: str = "uniform"
    frames: int = 8
    fps: float = 1.0
    detector: str | None = "content"
    threshold: float | None = None
    min_shot: float = 0.4
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"sampling mode must be one of {list(MODES)}; got {self.mode!r}")
        if isinstance(self.frames, bool) or not isinstance(self.frames, int) or self.frames < 1:
            raise ConfigError(f"sampling frames must be an integer >= 1; got {self.frames!r}")
        if not (isinstance(self.fps, (int, float)) and math.isfinite(self.fps) and self.fps > 0):
            raise ConfigError(f"sampling fps must be a positive number; got {self.fps!r}")
        if self.detector is not None:
            DETECTORS.get(self.detector)  # an unknown name lists the valid ones
        elif self.mode == "shots":
            raise ConfigError("sampling mode 'shots' needs a shot detector; set detector='content' or 'histogram'")
        if self.size is not None:
            size = (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)
            if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
                raise ConfigError(f"sampling size must be a positive int or (height, width); got {self.size!r}")
            object.__setattr__(self, "size", size)

    def frame_size(self, info: VideoInfo) -> tuple[int, int]:
        """(height, width) frames are decoded at for a video."""
        if self.size is not None:
            return self.size  # type: ignore[return-value]
        return capped_size(info.height, info.width)


def capped_size(height: int, width: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    scale = min(1.0, max_side / max(height, width, 1))
    return max(int(round(height * scale)), 1), max(int(round(width * scale)), 1)


def _detect_view(frame: np.ndarray) -> np.ndarray:
    """A strided view of at most ~160 px a side: detection needs no more."""
    step = max(1, max(frame.shape[:2]) // 160)
    return frame[::step, ::step]


class _Picker:
    """Selects, from frames streaming in time order, the frame nearest each target time."""

    def __init__(self, targets: Iterator[float], period: float) -> None:
        self._targets, self._half = targets, period / 2
        self._next = next(self._targets, None)

    def take(self, t: float) -> bool:
        hit = False
        while self._next is not None and self._next < t + self._half:
            hit = True
            self._next = next(self._targets, None)
        return hit


class ClipReader:
    """Stream the sampled frames of one clip ([start, end) seconds of `path`) in batches."""

    def __init__(self, path: str | os.PathLike, sampling: Sampling | None = None, start: float = 0.0,
                 end: float | None = None, batch: int = 64) -> None:
        self.path, self.sampling = str(path), sampling or Sampling()
        self.start, self.batch = float(start), int(batch)
        if not math.isfinite(self.start) or self.start < 0:
            raise VideoError(f"{path}: clip start must be a number >= 0 seconds; got {start!r}")
        self.info = probe(path)
        self.size = self.sampling.frame_size(self.info)
        self.end = float(end) if end is not None else None
        if self.end is not None and not self.end > self.start:
            raise VideoError(f"{path}: clip [{start}, {end}) s is empty (zero length); end must exceed start")
        self.shots: list[Shot] = []
        self.decoded = 0

    @property
    def _period(self) -> float:
        return 1.0 / self.info.fps

    def _detector(self):
        s = self.sampling
        if s.detector is None:
            return None
        return make_detector(s.detector, s.threshold, s.min_shot, self.info.fps)

    def _targets(self, last: float | None) -> Iterator[float]:
        s = self.sampling
        if s.mode == "fps":  # capped: a faster rate picks no more frames, only walks more targets (1e9 hung);
            # never below MAX_FPS_FLOOR, since a container's rate may be a guess (none stored: 25) or an average
            rate = min(s.fps, max(self.info.fps, MAX_FPS_FLOOR))
            return (self.start + k / rate for k in range(10**12))
        if s.mode == "uniform":
            stop = last if last is not None else self.end
            span = max(stop - self.start, self._period)
            return iter([self.start + (k + 0.5) * span / s.frames for k in range(s.frames)])
        return iter([sh.start + (k + 0.5) * (sh.end - sh.start) / s.frames
                     for sh in self.shots for k in range(s.frames)])

    def _clip_end(self) -> float:
        """The clip's end: `end` clamped to the video's duration; when the container gives no duration,
        one extra decode pass at 2x2 pixels finds the last frame."""
        if self.info.duration is not None and self.info.duration > 0:
            return min(self.end, self.info.duration) if self.end is not None else self.info.duration
        if self.end is not None:
            return self.end
        last = 0.0
        for b in iter_frames(self.path, self.start, None, (2, 2), self.batch):
            last = float(b.time[-1]) + self._period
        return last

    def _frames(self) -> Iterator[FrameBatch]:
        return iter_frames(self.path, self.start, self.end, self.size, self.batch)

    def _detect(self) -> float:
        """Pass 1 of 'shots' mode: run the detector over the clip; returns the end time."""
        det, last = self._detector(), self.start
        for b in self._frames():
            for t, f in zip(b.time, b.frames, strict=True):
                det.push(float(t), _detect_view(f))
            last = float(b.time[-1]) + self._period
            self.decoded += len(b.time)
        self.shots = shots_from_cuts(det.finish(), self.start, last)
        return last

    def __iter__(self) -> Iterator[FrameBatch]:
        self.decoded = 0
        if self.sampling.mode == "shots":
            self._detect()
            det, last = None, None
        else:
            det, last = self._detector(), self._clip_end() if self.sampling.mode == "uniform" else None
        picker = _Picker(self._targets(last), self._period)
        frames, times, n, t_end = [], [], 0, self.start
        for b in self._frames():
            for t, f in zip(b.time, b.frames, strict=True):
                if det is not None:
                    det.push(float(t), _detect_view(f))
                if picker.take(float(t)):
                    frames.append(f)
                    times.append(float(t))
            if self.sampling.mode != "shots":
                self.decoded += len(b.time)
            t_end = float(b.time[-1]) + self._period
            while len(frames) >= self.batch:
                yield FrameBatch(np.stack(frames[: self.batch]), np.asarray(times[: self.batch]),
                                 np.arange(n, n + self.batch))
                frames, times, n = frames[self.batch:], times[self.batch:], n + self.batch
        if frames:
            yield FrameBatch(np.stack(frames), np.asarray(times), np.arange(n, n + len(frames)))
        if self.sampling.mode != "shots":
            cuts = det.finish() if det is not None else []
            self.shots = shots_from_cuts(cuts, self.start, t_end)

    def shot_of(self, times: Sequence[float] | np.ndarray) -> np.ndarray:
        """Shot index of each time (after iteration)."""
        starts = np.array([s.start for s in self.shots[1:]])
        return np.searchsorted(starts, np.asarray(times, dtype=np.float64), side="right").astype(np.int64)


def read_clip(path: str | os.PathLike, sampling: Sampling | None = None, start: float = 0.0,
              end: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Shot]]:
    """(frames uint8 (n, H, W, 3), times (n,), shot index (n,), shots) of one clip."""
    reader = ClipReader(path, sampling, start, end)
    batches = list(reader)
    if not batches:
        raise VideoError(f"{path}: no frame was sampled from [{start}, {end}) s")
    frames = np.concatenate([b.frames for b in batches])
    times = np.concatenate([b.time for b in batches])
    return frames, times, reader.shot_of(times), reader.shots


