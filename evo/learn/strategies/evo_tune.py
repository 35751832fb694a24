"""`evo_tune`: the fast path, then fine-tune the backbone on increment + replay, then refit the exact head.

This is how grown capacity gets trained: a growth candidate's new units start as exact copies (or
zero branches) and only become useful once gradients reach them. After fine-tuning, the ridge
statistics no longer match the features, so the head is refit from the exemplar memory plus the
increment (the old data is gone); that is a loss where memory is small next to the data seen, and
why the search keeps the plain `evo` fast path as a candidate in every round.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from evo.graph.archgraph import ArchGraph
from evo.learn.strategies.base import (
    Context,
    Result,
    Workload,
    head_growth_flops,
    register_strategy,
)
from evo.learn.strategies.evo import Evo
from evo.learn.strategies.replay import with_memory
from evo.learn.train import TrainConfig, config_from, fit, step_flops_per_image


@register_strategy("evo_tune")
class EvoTune(Evo):
    """Closed-form head → SGD on increment ∪ memory (trainable part configurable) → closed-form refit."""

    @dataclass
    class Options(Evo.Options):
        """Evo's options plus training: see `evo.learn.train.TrainConfig` (`trainable` defaults to the
        head plus the last 2 blocks; `max_flops` caps the fine-tuning compute)."""

        epochs: int = 1
        lr: float = 0.01
        optimizer: str = "sgd"
        momentum: float = 0.9
        weight_decay: float = 1e-4
        trainable: str | int = 2
        train_batch_size: int = 64
        max_flops: int | None = None
        seed: int = 0
        warmup: float = 0.0

        def __post_init__(self) -> None:
            super().__post_init__()
            self.train_config()

        def train_config(self) -> TrainConfig:
            return config_from(self)

    def price(self, graph: ArchGraph, work: Workload) -> int:
        """The fast path, fine-tuning on increment + memory (capped by `max_flops`), then the features
        of memory and increment again and a second solve."""
        g = self.prepare(graph) if work.first else graph
        grow = head_growth_flops(g, work.n_classes)
        cfg = self.options.train_config()
        n, m = work.n_train, work.n_memory
        train = cfg.epochs * (n + m) * (step_flops_per_image(g, cfg.trainable) + 3 * grow)
        if cfg.max_flops is not None:
            train = min(train, cfg.max_flops)
        d = max(g.attrs(g.head)["in_features"], self.statistics_width(g))
        refit = (g.flops(batch=1) + grow) * (n + 3 * m) + self._solve_price(work, d)
        return int(self._fast_price(g, work) + train + refit)

    def learn(self, ctx: Context) -> Result:
        first = super().learn(ctx)  # a good head for every class before any gradient step
        graph = first.graph
        net = graph.to_module()
        images, labels = with_memory(ctx)
        stats = fit(net, graph, images, labels, ctx.preprocess, self.options.train_config(), ctx.meter,
                    progress=ctx.progress, desc=f"evo_tune (increment {ctx.index})", device=ctx.device)
        tuned = graph.with_weights(net)
        refit = super().learn(replace(ctx, graph=tuned, backbone_changed=True, stats_graph=None))
        # exact when the refit (memory + increment) still counts every image the first solve did
        exact = bool(first.info.get("exact_head")) and refit.info.get("n_samples") == first.info.get("n_samples")
        refit.info = {**(refit.info or {}), "train_steps": stats["steps"], "train_flops": stats["flops"],
                      "stopped_by_cap": stats["stopped_by_cap"], "exact_head": exact}
        return refit
