"""`entropy`: the highest predictive entropy (Shannon 1948; Settles 2009's survey)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from evo.active.queries.base import register_query, top_k


@register_query("entropy")
def entropy(proba: Tensor, features: Tensor, k: int, rng: np.random.Generator) -> tuple[list[int], list[float]]:
    p = proba.double().clamp_min(1e-300)
    return top_k(-(p * torch.log(p)).sum(dim=1), k)
