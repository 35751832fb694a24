"""`lwf`: Learning without Forgetting (Li & Hoiem 2017) — distil the parent's logits on new data.

Loss = cross-entropy over all classes so far + `distill_weight` · T² · KL(parent ‖ model) on the
old classes' logits at temperature T. The parent's forward pass on each batch is charged to the
step's cost. With `replay=True` the memory is mixed in too (iCaRL-style replay + distillation,
the training a grown candidate gets in the growth search).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from evo.errors import ConfigError
from evo.learn.cost import forward_flops
from evo.learn.strategies.base import Context, register_strategy
from evo.learn.strategies.replay import with_memory
from evo.learn.strategies.sgd import SGDOptions, SGDStrategy
from evo.learn.train import LossFn


@dataclass
class LwFOptions(SGDOptions):
    distill_weight: float = 1.0
    temperature: float = 2.0
    replay: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("distill_weight", "temperature"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
                raise ConfigError(f"lwf option {name} must be a finite number >= 0; got {v!r}")
        if self.temperature <= 0:
            raise ConfigError(f"lwf option temperature must be > 0; got {self.temperature!r}")
        if not isinstance(self.replay, bool):
            raise ConfigError(f"lwf option replay must be True (also replay the exemplar memory: iCaRL-style) or "
                              f"False; got {self.replay!r}")


def distillation(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), batch mean (Hinton et al. 2015)."""
    return F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction="batchmean",
                    log_target=True) * t * t


@register_strategy("lwf")
class LwF(SGDStrategy):
    Options = LwFOptions
    uses_memory = False

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.uses_memory = bool(self.options.replay)

    def training_set(self, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        return with_memory(ctx) if self.options.replay else (ctx.images, ctx.labels)

    def _teacher(self, ctx: Context) -> nn.Module | None:
        if ctx.parent is None or self.options.distill_weight == 0:
            return None
        return ctx.parent.to_module().eval().to(ctx.device, memory_format=torch.channels_last)

    def loss_fn(self, ctx: Context, net: nn.Module) -> LossFn | None:
        teacher = self._teacher(ctx)
        if teacher is None:
            return None
        old = len(ctx.parent.classes)
        w, t = self.options.distill_weight, self.options.temperature

        def loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
            logits = net(x)
            with torch.no_grad():
                target = teacher(x)[:, :old]
            return F.cross_entropy(logits, y) + w * distillation(logits[:, :old], target, t)

        return loss

    def extra_flops_per_image(self, graph) -> int:
        """The teacher's forward (the parent is no larger than the graph being trained)."""
        return graph.flops(batch=1) if self.options.distill_weight else 0

    def extra_step_flops(self, ctx: Context) -> Callable[[int], int] | None:
        if ctx.parent is None or self.options.distill_weight == 0:
            return None
        teacher = ctx.parent.to_module()
        shape = tuple(ctx.parent.input_shape)
        return lambda batch: forward_flops(teacher, torch.empty((batch, *shape)))
