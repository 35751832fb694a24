"""`random`: a uniform sample (the baseline every strategy has to beat)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from evo.active.queries.base import register_query

if TYPE_CHECKING:
    from torch import Tensor


@register_query("random")
def random(proba: Tensor, features: Tensor, k: int, rng: np.random.Generator) -> tuple[list[int], list[float]]:
    order = rng.permutation(len(proba))[:k]
    return [int(i) for i in order], [0.0] * len(order)
