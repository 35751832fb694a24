"""`replay`: fine-tune on the increment together with the exemplar memory (experience replay)."""

from __future__ import annotations

import numpy as np

from evo.learn.strategies.base import Context, register_strategy
from evo.learn.strategies.sgd import SGDStrategy


@register_strategy("replay")
class Replay(SGDStrategy):
    """Increment ∪ memory, shuffled together, trained with cross-entropy over all classes so far."""

    def training_set(self, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        return with_memory(ctx)


def with_memory(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """The increment's images and labels followed by the memory's exemplars (if any)."""
    if ctx.memory is None or not len(ctx.memory):
        return ctx.images, ctx.labels
    return (np.concatenate([ctx.images, ctx.memory.images]),
            np.concatenate([ctx.labels, ctx.memory.labels]).astype(np.int64))
