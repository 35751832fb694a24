"""`margin`: the smallest gap between the two most probable classes (Scheffer et al. 2001)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from evo.active.queries.base import margin_scores, register_query, top_k

if TYPE_CHECKING:
    from torch import Tensor


@register_query("margin")
def margin(proba: Tensor, features: Tensor, k: int, rng: np.random.Generator) -> tuple[list[int], list[float]]:
    return top_k(margin_scores(proba), k)
