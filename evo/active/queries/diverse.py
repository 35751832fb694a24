"""`diverse`: k-center greedy (Sener & Savarese 2018) over the most uncertain images.

Uncertainty alone picks near-duplicates: ten views of one confusing shoe teach the head one thing.
Here the `POOL_FACTOR`·k images with the smallest margin are candidates; the first pick is the most
uncertain, and each next pick is the candidate farthest (cosine distance of the head's features)
from everything picked so far. Scores are those distances (the first: its margin score).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from evo.active.queries.base import margin_scores, register_query, top_k

if TYPE_CHECKING:
    from torch import Tensor

POOL_FACTOR = 5


@register_query("diverse")
def diverse(proba: Tensor, features: Tensor, k: int, rng: np.random.Generator) -> tuple[list[int], list[float]]:
    uncertain, _ = top_k(margin_scores(proba), min(len(proba), POOL_FACTOR * k))
    x = features[uncertain].double()
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    picked, scores = [0], [float(margin_scores(proba[uncertain[:1]])[0])]
    dist = 1.0 - x @ x[0]
    for _ in range(1, min(k, len(uncertain))):
        j = int(dist.argmax())
        picked.append(j)
        scores.append(float(dist[j]))
        dist = dist.minimum(1.0 - x @ x[j])
        dist[picked] = -1.0
    return [uncertain[j] for j in picked], scores
