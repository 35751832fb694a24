"""`entropy`: the highest predictive entropy (Shannon 1948; Settles 2009's survey)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from evo.active.queries.base import register_query, top_k

if TYPE_CHECKING:
    from torch import Tensor


@register_query("entropy")
def entropy(proba: Tensor, features: Tensor, k: int, rng: np.random.Generator) -> tuple[list[int], list[float]]:
    p = proba.double().clamp_min(1e-300)
    return top_k(-(p * p.log()).sum(dim=1), k)
