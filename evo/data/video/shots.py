"""Shot-boundary detectors, registered by name in DETECTORS; each is fed decoded frames one at a time.

- `content` (default): PySceneDetect's ContentDetector (HSV + edge change between consecutive
  frames, `threshold` default 27 on its 0..255 scale), driven frame by frame from evo's own PyAV
  decode loop, so detection and sampling share one decode pass.
- `histogram`: a dependency-free fallback. Each frame gets a 16-bin histogram per RGB channel;
  a cut is declared where half the L1 distance between consecutive frames' normalised
  histograms (0 = same, 1 = disjoint) reaches `threshold` (default 0.35). Cheap and robust to
  motion inside a shot, blind to cuts between shots with the same colours.

Both enforce `min_shot` seconds between cuts. A detector returns cut times: the time of the first
frame of each new shot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from evo.errors import ConfigError
from evo.registry import Registry


@dataclass(frozen=True)
class Shot:
    """Shot `index` of a clip spans [start, end) seconds."""

    index: int
    start: float
    end: float


class ShotDetector(Protocol):
    def push(self, time: float, frame: np.ndarray) -> None:
        """The next decoded frame (uint8 RGB (H, W, 3)) and its time in seconds; frames come in order."""

    def finish(self) -> list[float]:
        """Cut times (seconds), ascending, after the last frame was pushed."""


DetectorFactory = Callable[..., ShotDetector]
DETECTORS: Registry[DetectorFactory] = Registry("shot detector")


def _check_threshold(threshold: float, low: float, high: float, name: str) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = float("nan")
    if not low < value <= high:
        raise ConfigError(f"{name} shot detector: threshold must be in ({low}, {high}]; got {threshold!r}")
    return value


class _HistogramDetector:
    def __init__(self, threshold: float = 0.35, min_shot: float = 0.4, bins: int = 16) -> None:
        self.threshold = _check_threshold(threshold, 0.0, 1.0, "histogram")
        self.min_shot, self.bins = float(min_shot), int(bins)
        self._last: np.ndarray | None = None
        self._last_cut = -np.inf
        self._cuts: list[float] = []

    def _hist(self, frame: np.ndarray) -> np.ndarray:
        q = (frame.reshape(-1, 3).astype(np.int64) * self.bins) >> 8
        h = np.stack([np.bincount(q[:, c], minlength=self.bins) for c in range(3)]).astype(np.float64)
        return h / h.sum(axis=1, keepdims=True)

    def push(self, time: float, frame: np.ndarray) -> None:
        h = self._hist(frame)
        if self._last is not None:
            distance = 0.5 * np.abs(h - self._last).sum(axis=1).mean()
            if distance >= self.threshold and time - self._last_cut >= self.min_shot:
                self._cuts.append(time)
                self._last_cut = time
        elif self._last_cut == -np.inf:
            self._last_cut = time
        self._last = h

    def finish(self) -> list[float]:
        return list(self._cuts)


class _ContentDetector:
    """PySceneDetect's ContentDetector behind evo's push/finish protocol."""

    def __init__(self, threshold: float = 27.0, min_shot: float = 0.4, fps: float = 25.0) -> None:
        try:
            from scenedetect.common import FrameTimecode
            from scenedetect.detectors import ContentDetector
        except ImportError:
            raise ConfigError("the 'content' shot detector needs PySceneDetect: pip install 'evo[video]' "
                              "(or scenedetect); or use detector='histogram'") from None
        self._detector = ContentDetector(threshold=_check_threshold(threshold, 0.0, 255.0, "content"),
                                         min_scene_len=float(min_shot))
        self._tc, self._fps = FrameTimecode, float(fps)
        self._times: list[float] = []
        self._cuts: list[float] = []

    def _time_of(self, tc) -> float:
        return self._times[min(tc.frame_num, len(self._times) - 1)]

    def push(self, time: float, frame: np.ndarray) -> None:
        self._times.append(float(time))
        tc = self._tc(len(self._times) - 1, fps=self._fps)
        bgr = np.ascontiguousarray(frame[..., ::-1])
        self._cuts += [self._time_of(c) for c in self._detector.process_frame(tc, bgr)]

    def finish(self) -> list[float]:
        if self._times:
            last = self._tc(len(self._times) - 1, fps=self._fps)
            self._cuts += [self._time_of(c) for c in self._detector.post_process(last)]
        first = self._times[0] if self._times else 0.0
        return sorted({c for c in self._cuts if c > first})


DETECTORS.add("content", _ContentDetector)
DETECTORS.add("histogram", _HistogramDetector)


def make_detector(name: str = "content", threshold: float | None = None, min_shot: float = 0.4,
                  fps: float = 25.0) -> ShotDetector:
    """A fresh detector by name; `threshold=None` keeps the detector's default."""
    factory = DETECTORS.get(name)
    kwargs: dict = {"min_shot": min_shot}
    if threshold is not None:
        kwargs["threshold"] = threshold
    if name == "content":
        kwargs["fps"] = fps
    return factory(**kwargs)


def shots_from_cuts(cuts: list[float], start: float, end: float) -> list[Shot]:
    """Shots [start, c1), [c1, c2), ... [ck, end)."""
    edges = [start, *[c for c in cuts if start < c < end], end]
    return [Shot(i, a, b) for i, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True))]


def boundary_scores(found: list[float], truth: list[float], tolerance: float) -> dict[str, float]:
    """Precision, recall and F1 of detected cut times against true ones; a match lies within
    `tolerance` seconds and each true cut matches at most one detection (greedy by distance)."""
    pairs = sorted((abs(f - t), i, j) for i, f in enumerate(found) for j, t in enumerate(truth)
                   if abs(f - t) <= tolerance)
    used_f, used_t = set(), set()
    for _, i, j in pairs:
        if i not in used_f and j not in used_t:
            used_f.add(i)
            used_t.add(j)
    tp = len(used_f)
    precision = tp / len(found) if found else 1.0
    recall = tp / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "found": len(found), "true": len(truth)}
