"""`naive`: fine-tune on the increment only — the lower bound (it forgets old classes)."""

from __future__ import annotations

from evo.learn.strategies.base import register_strategy
from evo.learn.strategies.sgd import SGDStrategy


@register_strategy("naive")
class Naive(SGDStrategy):
    """Plain fine-tuning on the new data; no memory, no regulariser."""

    uses_memory = False
