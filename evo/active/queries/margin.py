"""`margin`: the smallest gap between the two most probable classes (Scheffer et al. 2001)."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from evo.active.queries.base import margin_scores, register_query, top_k


@register_query("margin")
def margin(proba: Tensor, features: Tensor, k: int, rng: np.random.Generator) -> tuple[list[int], list[float]]:
    return top_k(margin_scores(proba), k)
