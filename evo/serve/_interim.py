"""A stand-in for `evo.active.Corrections` until the corrections engine lands on this branch.

It speaks the engine's API (ACTIVE_API) so the server can be built and tested against it: predictions
come from the run's latest committed version; a correction is remembered by image hash (no model
update, nothing durable). Deleted as soon as `evo.active` is merged; nothing else imports it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evo.errors import EvoError


class CorrectionError(EvoError, ValueError):
    """A correction's image, label or id is not acceptable."""


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float
    top: list[tuple[str, float]]


@dataclass(frozen=True)
class CorrectionResult:
    id: int
    label: str
    previous: str
    predicted: str
    probability: float
    weight: float = 1.0
    holds: bool = True
    seconds: float = 0.0
    broken: list[int] = field(default_factory=list)
    conflicts: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class CorrectionRecord:
    id: int
    created: str
    image_sha256: str
    previous: str
    label: str
    weight: float
    holds: bool
    undone: bool
    source: str
    external_id: str | None


class Corrections:
    def __init__(self, run_dir: Path, learner, version: int) -> None:
        self._learner, self._version, self._lock = learner, version, threading.Lock()
        self._records: list[CorrectionRecord] = []
        self._classes = list(learner.classes_)

    @classmethod
    def open(cls, run_dir, write: bool = True) -> Corrections:
        from evo.learn import Learner
        from evo.runs import Run

        run = Run.open(run_dir)
        graph, meta, state = run.load_version()
        learner = Learner(graph, progress=False)
        if meta.get("increment") is not None:
            learner.load_state_dict(state, graph)
        return cls(Path(run_dir), learner, run.latest())

    def close(self) -> None:
        pass

    def __enter__(self) -> Corrections:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def classes(self) -> list[str]:
        return list(self._classes)

    @property
    def model_version(self) -> str:
        return f"v{self._version}+c{len(self._records)}"

    def _live(self) -> dict[str, CorrectionRecord]:
        return {r.image_sha256: r for r in self._records if not r.undone}

    def predict(self, images: np.ndarray) -> list[Prediction]:
        with self._lock:
            images = np.asarray(images)
            proba = self._learner.predict_proba(images)
            live, out = self._live(), []
            for img, p in zip(images, proba, strict=True):
                ranked = [(self._learner.classes_[i], float(p[i])) for i in np.argsort(-p)[:3]]
                fixed = live.get(hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest())
                if fixed is not None:
                    ranked = [(fixed.label, 1.0)] + [t for t in ranked if t[0] != fixed.label][:2]
                out.append(Prediction(ranked[0][0], ranked[0][1], ranked))
            return out

    def correct(self, image, label: str, *, source: str = "python", external_id: str | None = None):
        if not isinstance(label, str) or not label.strip() or len(label) > 200 or not label.isprintable():
            raise CorrectionError(f"label {label!r} must be 1-200 printable characters")
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise CorrectionError(f"image must be uint8 (H, W[, 3]); got {image.dtype} {image.shape}")
        pred = self.predict(image[None])[0]
        with self._lock:
            if label not in self._classes:
                self._classes.append(label)
            rec = CorrectionRecord(len(self._records) + 1, time.strftime("%Y-%m-%dT%H:%M:%S"),
                                   hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest(), pred.label,
                                   label, 1.0, True, False, source, external_id)
            self._records.append(rec)
            return CorrectionResult(rec.id, label, pred.label, pred.label, pred.probability)

    def undo(self, cid: int) -> None:
        with self._lock:
            rec = next((r for r in self._records if r.id == cid), None)
            if rec is None or rec.undone:
                raise CorrectionError(f"correction {cid} is unknown or already undone")
            rec.undone = True

    def find(self, external_id: str) -> int | None:
        with self._lock:
            return next((r.id for r in self._records if r.external_id == external_id and not r.undone), None)

    def list(self) -> list[CorrectionRecord]:
        with self._lock:
            return list(self._records)
