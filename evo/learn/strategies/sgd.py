"""Shared base of the gradient-trained strategies (joint, naive, replay, EWC, LwF).

A subclass says what it trains on (`training_set`) and, optionally, what it adds to the loss
(`loss_fn`) and to each step's cost (`extra_step_flops`); `SGDStrategy.learn` does the rest:
new head rows, the training loop of `evo.learn.train.fit`, and the trained graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from evo.errors import ConfigError
from evo.graph.archgraph import ArchGraph
from evo.learn.strategies.base import Context, Result, Strategy, Workload, head_growth_flops
from evo.learn.train import LossFn, TrainConfig, fit, step_flops_per_image, uniform_fan_in


@dataclass
class SGDOptions(TrainConfig):
    """Training options (`evo.learn.train.TrainConfig`, validated on construction), plus
    `on_epoch_end(epoch, net, stats)`, an optional callback (e.g. to measure accuracy per epoch; it
    costs nothing here)."""

    on_epoch_end: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.on_epoch_end is not None and not callable(self.on_epoch_end):
            raise ConfigError(f"on_epoch_end must be a callable (epoch, net, stats) or None; got {self.on_epoch_end!r}")

    def config(self) -> TrainConfig:
        names = {f.name for f in fields(TrainConfig)}
        return TrainConfig.build(**{k: v for k, v in vars(self).items() if k in names})


class SGDStrategy(Strategy):
    """Base of the SGD strategies: one hook each for the data, the loss and the per-step extra cost."""

    Options = SGDOptions

    def training_set(self, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        return ctx.images, ctx.labels

    def start_graph(self, ctx: Context) -> ArchGraph:
        """The graph training starts from (default: the current model with its new head rows)."""
        return ctx.graph

    def loss_fn(self, ctx: Context, net: nn.Module) -> LossFn | None:
        return None  # cross-entropy

    def extra_step_flops(self, ctx: Context) -> Callable[[int], int] | None:
        return None

    def after_training(self, ctx: Context, graph: ArchGraph, net: nn.Module) -> None:
        """Called with the trained model (EWC estimates its Fisher information here)."""

    # -- cost: each hook above has its price here -------------------------------------------------

    def price(self, graph: ArchGraph, work: Workload) -> int:
        """Training steps over `training_rows` images per epoch (capped by `max_flops`), each with
        `extra_flops_per_image`, plus `after_training_flops`, plus a forward over the increment and
        twice over the memory (the exemplar selection's features)."""
        grow = head_growth_flops(graph, work.n_classes)
        cfg = self.options.config()
        per_image = step_flops_per_image(graph, cfg.trainable) + 3 * grow + self.extra_flops_per_image(graph)
        train = cfg.epochs * self.training_rows(work) * per_image
        if cfg.max_flops is not None:
            train = min(train, cfg.max_flops)
        upkeep = (graph.flops(batch=1) + grow) * (work.n_train + 2 * work.n_memory)
        return int(train + self.after_training_flops(graph, work) + upkeep)

    def training_rows(self, work: Workload) -> int:
        """Images trained on per epoch (default: the increment and a full memory)."""
        return work.n_train + work.n_memory

    def extra_flops_per_image(self, graph: ArchGraph) -> int:
        """What `extra_step_flops` adds per image."""
        return 0

    def after_training_flops(self, graph: ArchGraph, work: Workload) -> int:
        """What `after_training` spends."""
        return 0

    def learn(self, ctx: Context) -> Result:
        graph = init_new_rows(self.start_graph(ctx), ctx.new_classes, self.options.seed + ctx.index)
        net = graph.to_module()
        images, labels = self.training_set(ctx)
        stats = fit(net, graph, images, labels, ctx.preprocess, self.options.config(), ctx.meter,
                    loss_fn=self.loss_fn(ctx, net), extra_step_flops=self.extra_step_flops(ctx),
                    progress=ctx.progress, desc=f"{self.name} (increment {ctx.index})",
                    on_epoch_end=self.options.on_epoch_end, device=ctx.device)
        trained = graph.with_weights(net)
        self.after_training(ctx, trained, net)
        return Result(trained, None, {"steps": stats["steps"], "train_flops": stats["flops"],
                                      "stopped_by_cap": stats["stopped_by_cap"], "loss": stats["loss"]})


def init_new_rows(graph: ArchGraph, rows: list[int], seed: int) -> ArchGraph:
    """Re-initialise head rows `rows` as a fresh nn.Linear would (uniform ±1/sqrt(in), bias 0).

    `add_classes` leaves them at weight 0 and bias −1e4, which SGD would take many steps to undo.
    """
    if not rows:
        return graph
    out = graph.copy()
    ps = out.params(out.head)
    w, b = ps["weight"].clone(), ps["bias"].clone()
    gen = torch.Generator().manual_seed(seed)
    idx = torch.as_tensor(rows, dtype=torch.int64)
    w[idx] = uniform_fan_in((len(rows), w.shape[1]), w.shape[1], gen).to(w.dtype)
    b[idx] = 0.0
    out.set_params(out.head, weight=w, bias=b)
    return out
