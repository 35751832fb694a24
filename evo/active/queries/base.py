"""The query-strategy registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from evo.registry import Registry

if TYPE_CHECKING:  # tensors come in, but listing the strategies (the CLI's parser) must not import torch
    from torch import Tensor

QueryFn = Callable[["Tensor", "Tensor", int, np.random.Generator], tuple[list[int], list[float]]]
QUERIES: Registry[QueryFn] = Registry("query strategy")


def register_query(name: str) -> Callable[[QueryFn], QueryFn]:
    return QUERIES.register(name)


def top_k(scores: Tensor, k: int) -> tuple[list[int], list[float]]:
    """The k highest scores, best first (ties: lower index)."""
    order = np.argsort(-scores.double().numpy(), kind="stable")[:k]
    return [int(i) for i in order], [float(scores[i]) for i in order]


def margin_scores(proba: Tensor) -> Tensor:
    """Uncertainty as 1 − (p_best − p_second): 1 for a tie, 0 for a sure prediction."""
    top = proba.topk(min(2, proba.shape[1]), dim=1).values
    second = top[:, 1] if top.shape[1] > 1 else 0.0
    return 1.0 - (top[:, 0] - second)
