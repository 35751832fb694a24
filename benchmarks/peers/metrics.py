"""One definition of the table's metrics for every family (evo, closed-form, Avalanche, joint).

Each method records, after increment i, its predictions on the pooled test set of every class
seen so far. From those: R[i, j] = accuracy on increment j's classes (the accuracy matrix),
`accuracy[i]` = pooled accuracy; final accuracy = accuracy[-1]; average incremental accuracy =
mean_i accuracy[i] (Rebuffi et al. 2017); forgetting = mean_{j<T} max_{l<T} R[l, j] − R[T, j]
(Chaudhry et al. 2018), the same formulas as evo.learn.metrics. Pure numpy: the Avalanche
runner imports it from its own venv.
"""

from __future__ import annotations

import math
import resource
import sys
from collections.abc import Sequence

import numpy as np


class Recorder:
    """Collects one row of the accuracy matrix per increment from predictions on the test set."""

    def __init__(self, test_labels: np.ndarray, class_to_increment: Sequence[int]) -> None:
        self.labels = np.asarray(test_labels, dtype=np.int64)
        self.task = np.asarray(class_to_increment, dtype=np.int64)[self.labels]
        self.rows: list[list[float]] = []
        self.accuracy: list[float] = []

    def seen_mask(self, increment: int) -> np.ndarray:
        """Test samples of the classes seen up to and including `increment`."""
        return self.task <= increment

    def add(self, increment: int, predictions: np.ndarray) -> float:
        """Record predictions (class indices) for the test samples in `seen_mask(increment)`."""
        mask = self.seen_mask(increment)
        pred = np.asarray(predictions, dtype=np.int64)
        truth, task = self.labels[mask], self.task[mask]
        if pred.shape != truth.shape:
            raise ValueError(f"increment {increment}: {pred.shape[0]} predictions for {truth.shape[0]} test samples")
        hit = pred == truth
        self.rows.append([float(hit[task == j].mean()) for j in range(increment + 1)])
        self.accuracy.append(float(hit.mean()))
        return self.accuracy[-1]

    def summary(self) -> dict:
        return summarize(self.rows, self.accuracy)


def summarize(rows: Sequence[Sequence[float]], accuracy: Sequence[float]) -> dict:
    t = len(rows) - 1
    forgetting = (float(np.mean([max(rows[i][j] for i in range(j, t)) - rows[t][j] for j in range(t)]))
                  if t > 0 else None)
    return {"final_accuracy": float(accuracy[-1]),
            "average_incremental_accuracy": float(np.mean(accuracy)),
            "forgetting": forgetting,
            "matrix": [list(r) for r in rows],
            "accuracy": list(accuracy)}


def peak_rss_bytes() -> int:
    """This process's resident-set high-water mark (each method runs in its own process)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def mean_std(values: Sequence[float | None]) -> tuple[float, float] | None:
    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return None
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else 0.0)
