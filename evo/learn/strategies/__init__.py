"""Incremental-learning strategies, registered by name (`STRATEGIES`); one file each.

- `evo`: frozen multi-layer features + exact closed-form ridge head (the fast path);
- `evo_tune`: the fast path, then fine-tune (grown capacity) with replay, then refit the head;
- `evo_latent`: train above a frozen cut on increment + stored latents, recompute the statistics exactly;
- `joint`: retrain on all data so far (upper bound, cost reference);
- `naive`: fine-tune on the increment only (lower bound);
- `replay`: increment + exemplar memory;
- `ewc`: elastic weight consolidation;
- `lwf`: distillation from the parent's logits (`replay=True` adds the memory: iCaRL-style).
"""

from evo.learn.strategies.base import (
    STRATEGIES,
    Context,
    Result,
    Strategy,
    Workload,
    canonical_training,
    make_strategy,
    option_defaults,
    register_strategy,
    split_settings,
)

# Importing each strategy module registers it.
from evo.learn.strategies import evo, evo_latent, evo_tune, ewc, joint, lwf, naive, replay  # noqa: E402,F401  isort: skip


def list_strategies() -> list[str]:
    return STRATEGIES.names()


__all__ = ["STRATEGIES", "Context", "Result", "Strategy", "canonical_training", "list_strategies", "make_strategy", "option_defaults", "register_strategy",
           "split_settings", "Workload"]
