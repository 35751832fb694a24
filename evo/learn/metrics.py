"""Continual-learning metrics from an accuracy matrix.

R[i, j] is the test accuracy on increment j's classes after training on increment i (j <= i);
entries above the diagonal are NaN (not yet seen). Accuracies are fractions in [0, 1]. Metrics
that need at least two increments (forgetting, BWT) are NaN with one; `to_dict` writes NaN as None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from evo.errors import DataError


def _as_matrix(r: Any) -> np.ndarray:
    m = np.asarray(r, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise DataError(f"accuracy matrix must be square T x T with T >= 1; got shape {m.shape}")
    lower = np.tril(np.ones_like(m, dtype=bool))
    if not np.isfinite(m[lower]).all():
        raise DataError(
            "accuracy matrix has NaN/inf on or below the diagonal; every R[i, j<=i] must be measured"
        )
    return m


def average_incremental_accuracy(accuracies: Sequence[float]) -> float:
    """Mean over increments of the accuracy on all classes seen so far (Rebuffi et al. 2017)."""
    a = np.asarray(accuracies, dtype=np.float64)
    if a.ndim != 1 or len(a) == 0 or not np.isfinite(a).all():
        raise DataError(f"accuracies must be a non-empty 1-D list of finite numbers; got {accuracies!r}")
    return float(a.mean())


def final_accuracy(r: Any) -> float:
    """Mean accuracy over all increments after the last one: ACC = mean_j R[T, j] (Lopez-Paz & Ranzato 2017)."""
    m = _as_matrix(r)
    return float(m[-1].mean())


def forgetting(r: Any) -> float:
    """Average forgetting (Chaudhry et al. 2018): mean over j < T of max_{l<T} R[l, j] − R[T, j]."""
    m = _as_matrix(r)
    t = m.shape[0] - 1
    if t == 0:
        return math.nan
    drops = [np.max(m[j:t, j]) - m[t, j] for j in range(t)]
    return float(np.mean(drops))


def bwt(r: Any) -> float:
    """Backward transfer (Lopez-Paz & Ranzato 2017): mean over j < T of R[T, j] − R[j, j]; negative = forgetting."""
    m = _as_matrix(r)
    t = m.shape[0] - 1
    if t == 0:
        return math.nan
    return float(np.mean([m[t, j] - m[j, j] for j in range(t)]))


def _json_float(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


class AccuracyMatrix:
    """Grows one row per increment: `append([R[i,0], ..., R[i,i]], seen_accuracy=...)`.

    `seen_accuracy` is the accuracy on the pooled test set of all classes seen so far; if omitted
    it is the row mean, which equals it only when every increment's test set has the same size.
    """

    def __init__(self) -> None:
        self.rows: list[list[float]] = []
        self.seen_accuracies: list[float] = []

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, row: Sequence[float], seen_accuracy: float | None = None) -> AccuracyMatrix:
        row = [float(v) for v in row]
        i = len(self.rows)
        if len(row) != i + 1:
            raise DataError(f"row {i} must hold {i + 1} accuracies (increments 0..{i}); got {len(row)}")
        values = row + ([] if seen_accuracy is None else [float(seen_accuracy)])
        if not all(0.0 <= v <= 1.0 for v in values):
            raise DataError(f"accuracies must be fractions in [0, 1] (not percentages); got {values}")
        self.rows.append(row)
        self.seen_accuracies.append(float(np.mean(row)) if seen_accuracy is None else float(seen_accuracy))
        return self

    @property
    def matrix(self) -> np.ndarray:
        """The T x T matrix R, NaN above the diagonal."""
        t = len(self.rows)
        m = np.full((t, t), np.nan)
        for i, row in enumerate(self.rows):
            m[i, : i + 1] = row
        return m

    def _need_rows(self) -> None:
        if not self.rows:
            raise DataError("accuracy matrix is empty; append a row after each increment first")

    def average_incremental_accuracy(self) -> float:
        self._need_rows()
        return average_incremental_accuracy(self.seen_accuracies)

    def final_accuracy(self) -> float:
        self._need_rows()
        return final_accuracy(self.matrix)

    def forgetting(self) -> float:
        self._need_rows()
        return forgetting(self.matrix)

    def bwt(self) -> float:
        self._need_rows()
        return bwt(self.matrix)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: the rows, the seen-class accuracies and the summary metrics."""
        out: dict[str, Any] = {
            "rows": [list(r) for r in self.rows],
            "seen_accuracies": list(self.seen_accuracies),
        }
        if self.rows:
            out |= {
                "average_incremental_accuracy": self.average_incremental_accuracy(),
                "final_accuracy": self.final_accuracy(),
                "forgetting": _json_float(self.forgetting()),
                "bwt": _json_float(self.bwt()),
            }
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AccuracyMatrix:
        m = cls()
        for row, seen in zip(d["rows"], d["seen_accuracies"], strict=True):
            m.append(row, seen)
        return m
