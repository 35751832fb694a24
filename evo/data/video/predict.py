"""Per-shot and whole-clip predictions for a video, from any frame classifier.

Frames are sampled at `fps` in one streaming decode pass, classified batch by batch (only their
probabilities, or features, are kept), then aggregated: a shot's prediction is the mean of its
frames' probabilities (`aggregate='proba'`), or the head applied to the mean of its frames'
features (`aggregate='features'`, which needs `embed` and `head`); the clip's is the same over all
frames. `smooth=k` replaces each shot's probabilities by the duration-weighted mean over shots
i-k..i+k, which steadies short shots between longer ones of the same concept.
A shot shorter than the sampling period, which caught no frame, takes its nearest frame's output.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evo.data.video.sample import ClipReader, Sampling
from evo.data.video.shots import Shot
from evo.errors import ConfigError, DataError

ArrayFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ShotPrediction:
    index: int
    start: float
    end: float
    label: str
    probability: float
    frames: int
    top: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"shot": self.index, "start": round(self.start, 3), "end": round(self.end, 3), "label": self.label,
                "probability": round(self.probability, 4), "frames": self.frames,
                "top": [[c, round(p, 4)] for c, p in self.top]}


@dataclass(frozen=True)
class VideoPrediction:
    """`shots` in time order; `label`/`probability` is the whole clip's prediction."""

    path: str
    classes: list[str]
    shots: list[ShotPrediction]
    label: str
    probability: float
    top: list[tuple[str, float]]
    frames: int
    decoded: int
    seconds: float
    shot_probabilities: np.ndarray = field(repr=False)  # (shots, classes)

    def to_dict(self) -> dict[str, Any]:
        return {"video": self.path, "label": self.label, "probability": round(self.probability, 4),
                "top": [[c, round(p, 4)] for c, p in self.top], "frames_sampled": self.frames,
                "frames_decoded": self.decoded, "seconds": round(self.seconds, 3),
                "shots": [s.to_dict() for s in self.shots]}


def _top(p: np.ndarray, classes: Sequence[str], k: int = 3) -> list[tuple[str, float]]:
    order = np.argsort(-p, kind="stable")[:k]
    return [(classes[i], float(p[i])) for i in order]


def _per_shot(values: np.ndarray, times: np.ndarray, shot_ids: np.ndarray, shots: list[Shot]) -> tuple[np.ndarray, np.ndarray]:
    """(mean of `values` per shot, frames per shot); a shot without frames takes its nearest frame."""
    out = np.zeros((len(shots), values.shape[1]))
    counts = np.bincount(shot_ids, minlength=len(shots))
    np.add.at(out, shot_ids, values)
    for s, n in enumerate(counts):
        if n:
            out[s] /= n
        else:
            mid = (shots[s].start + shots[s].end) / 2
            out[s] = values[int(np.argmin(np.abs(times - mid)))]
    return out, counts


def smooth_shots(proba: np.ndarray, shots: list[Shot], radius: int) -> np.ndarray:
    """Each shot's row replaced by the duration-weighted mean of the rows of shots i-radius..i+radius."""
    if radius <= 0 or len(shots) < 2:
        return proba
    w = np.array([max(s.end - s.start, 1e-6) for s in shots])
    out = np.empty_like(proba)
    for i in range(len(shots)):
        lo, hi = max(0, i - radius), min(len(shots), i + radius + 1)
        out[i] = (proba[lo:hi] * w[lo:hi, None]).sum(0) / w[lo:hi].sum()
    return out


def _check(classes: Sequence[str], aggregate: str, predict_proba, embed, head, smooth: int) -> None:
    if aggregate not in ("proba", "features"):
        raise ConfigError(f"aggregate must be 'proba' or 'features'; got {aggregate!r}")
    if aggregate == "proba" and predict_proba is None:
        raise ConfigError("aggregate='proba' needs predict_proba")
    if aggregate == "features" and (embed is None or head is None):
        raise ConfigError("aggregate='features' needs embed (frames -> features) and head (features -> probabilities)")
    if isinstance(smooth, bool) or not isinstance(smooth, int) or smooth < 0:
        raise ConfigError(f"smooth must be an integer >= 0 (shots on each side); got {smooth!r}")
    if not classes:
        raise ConfigError("predict_video needs the model's class list")


def predict_video(path: str | os.PathLike, predict_proba: ArrayFn | None, classes: Sequence[str], *,
                  fps: float = 2.0, detector: str | None = "content", threshold: float | None = None,
                  min_shot: float = 0.4, size: tuple[int, int] | None = None, smooth: int = 0,
                  aggregate: str = "proba", embed: ArrayFn | None = None, head: ArrayFn | None = None,
                  start: float = 0.0, end: float | None = None, batch: int = 64) -> VideoPrediction:
    """Per-shot rows (start, end, class, probability) and the clip prediction for one video.

    `predict_proba(uint8 (N, H, W, 3)) -> (N, len(classes))`, e.g. `Learner.predict_proba`. Memory is
    bounded by one batch of frames plus one row of outputs per sampled frame.
    """
    _check(classes, aggregate, predict_proba, embed, head, smooth)
    classes = [str(c) for c in classes]
    t0 = time.perf_counter()
    reader = ClipReader(path, Sampling(mode="fps", fps=fps, detector=detector, threshold=threshold,
                                       min_shot=min_shot, size=size), start, end, batch)
    outputs, times = [], []
    fn = predict_proba if aggregate == "proba" else embed
    for b in reader:
        out = np.asarray(fn(b.frames), dtype=np.float64)
        if out.ndim != 2 or len(out) != len(b.frames):
            raise DataError(f"the classifier returned shape {out.shape} for {len(b.frames)} frames")
        outputs.append(out)
        times.append(b.time)
    if not outputs:
        raise DataError(f"{path}: no frame was sampled at {fps} fps in [{start}, {end}) s")
    values, t = np.concatenate(outputs), np.concatenate(times)
    shots = reader.shots
    per_shot, counts = _per_shot(values, t, reader.shot_of(t), shots)
    clip = values.mean(axis=0, keepdims=True)
    if aggregate == "features":
        per_shot, clip = np.asarray(head(per_shot), np.float64), np.asarray(head(clip), np.float64)
    if per_shot.shape[1] != len(classes):
        raise DataError(f"the classifier gives {per_shot.shape[1]} columns for {len(classes)} classes")
    per_shot = smooth_shots(per_shot, shots, smooth)
    rows = [ShotPrediction(s.index, s.start, s.end, classes[int(p.argmax())], float(p.max()), int(n), _top(p, classes))
            for s, p, n in zip(shots, per_shot, counts, strict=True)]
    c = clip[0]
    return VideoPrediction(str(path), classes, rows, classes[int(c.argmax())], float(c.max()), _top(c, classes),
                           len(t), reader.decoded, time.perf_counter() - t0, per_shot)


def shot_frames(path: str | os.PathLike, *, shot: int | None = None, at: float | None = None, frames: int = 5,
                detector: str = "content", threshold: float | None = None, min_shot: float = 0.4,
                size: tuple[int, int] | None = None) -> tuple[np.ndarray, Shot]:
    """`frames` evenly spaced frames (uint8 (n, H, W, 3)) of shot number `shot`, or of the shot playing at
    `at` seconds, and that shot: the samples a correction of that shot is made from."""
    if (shot is None) == (at is None):
        raise ConfigError("give exactly one of shot (a shot number) or at (seconds)")
    reader = ClipReader(path, Sampling(mode="shots", frames=frames, detector=detector, threshold=threshold,
                                       min_shot=min_shot, size=size))
    kept: list[np.ndarray] = []
    target: int | None = shot
    for b in reader:
        if target is None:  # cuts are known once the detection pass is done, i.e. at the first batch
            target = int(reader.shot_of([float(at)])[0])  # type: ignore[arg-type]
            if at is not None and not 0 <= at < reader.shots[-1].end:
                raise DataError(f"{path}: --at {at}s lies outside the video (0 to {reader.shots[-1].end:.2f} s)")
        if not 0 <= target < len(reader.shots):
            raise DataError(f"{path} has {len(reader.shots)} shots (0..{len(reader.shots) - 1}); got shot {target}")
        kept += list(b.frames[reader.shot_of(b.time) == target])
    if not kept:
        raise DataError(f"{path}: shot {target} yielded no frame")
    return np.stack(kept), reader.shots[target]


def clip_scores(frames, proba: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """Frame-level and clip-level accuracy of per-frame probabilities on labelled `VideoFrames`.

    `proba` columns follow `classes` (the model's list); a clip's prediction is the mean of its frames'
    probabilities. Labels are matched by class name, so the two class lists may differ in order."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape != (len(frames), len(classes)):
        raise DataError(f"proba must be ({len(frames)}, {len(classes)}); got {proba.shape}")
    names = np.array(frames.data.classes)[frames.data.labels]
    pred = np.array(list(classes))[proba.argmax(1)]
    ids = np.unique(frames.clip)
    clip_right = [np.array(list(classes))[proba[frames.clip == c].mean(0).argmax()] == names[frames.clip == c][0]
                  for c in ids]
    return {"frame_accuracy": float((pred == names).mean()) if len(names) else float("nan"),
            "clip_accuracy": float(np.mean(clip_right)) if len(ids) else float("nan"),
            "frames": len(names), "clips": len(ids)}
