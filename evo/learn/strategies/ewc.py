"""`ewc`: Elastic Weight Consolidation (Kirkpatrick et al. 2017), online variant (Schwarz et al. 2018).

After each increment the diagonal Fisher information of the trained weights is estimated from
the increment's data: squared gradients of the mean log-likelihood of the true labels over
mini-batches of `fisher_batch`, averaged over batches (the usual mini-batch approximation, as in
Avalanche); it decays by `gamma` and accumulates. Training on later
increments adds (λ/2) Σ F (θ − θ*)². The head grows, so only its old rows are anchored.
The Fisher pass is charged as forward+backward steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from evo.checks import check_int
from evo.errors import ConfigError
from evo.graph.archgraph import ArchGraph
from evo.learn.device import batch_to
from evo.learn.strategies.base import Context, Workload, head_growth_flops, register_strategy
from evo.learn.strategies.sgd import SGDOptions, SGDStrategy
from evo.learn.train import LossFn, StepPricer, set_trainable, step_flops_per_image, trainable_nodes


@dataclass
class EWCOptions(SGDOptions):
    ewc_lambda: float = 5000.0
    gamma: float = 1.0
    fisher_samples: int = 1024
    fisher_batch: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("ewc_lambda", "gamma"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
                raise ConfigError(f"ewc option {name} must be a finite number >= 0; got {v!r}")
        for name in ("fisher_samples", "fisher_batch"):
            check_int(f"ewc option {name}", getattr(self, name))


@register_strategy("ewc")
class EWC(SGDStrategy):
    Options = EWCOptions
    uses_memory = False

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.fisher_: dict[str, Tensor] = {}
        self.anchor_: dict[str, Tensor] = {}

    def loss_fn(self, ctx: Context, net: nn.Module) -> LossFn | None:
        if not self.fisher_:
            return None
        named = dict(net.named_parameters())
        terms = [(named[k], f.to(ctx.device), self.anchor_[k].to(ctx.device)) for k, f in self.fisher_.items()
                 if k in named and _fits(named[k], f)]
        lam = self.stable_lambda([f for _, f, _ in terms])

        def loss(net: nn.Module, x: Tensor, y: Tensor, idx: np.ndarray) -> Tensor:
            penalty = sum(((f * (p[: len(a)] - a) ** 2).sum() for p, f, a in terms if p.requires_grad),
                          torch.zeros((), device=x.device))
            return F.cross_entropy(net(x), y) + 0.5 * lam * penalty

        return loss

    def stable_lambda(self, fishers: list[Tensor]) -> float:
        """`ewc_lambda`, capped at 1 / (lr · max F).

        Plain SGD on the penalty (λ/2)·F·(θ − θ*)² multiplies the offset by (1 − lr·λ·F) each step,
        which diverges once lr·λ·F > 2 (2(1 + β) with momentum β); with λ = 5000 and lr = 0.01 one Fisher entry above 0.04 is
        enough (seen on Lite0's BN weights: the loss became inf within 30 steps). The cap keeps
        every coordinate's factor in [0, 1).
        """
        top = max((float(f.max()) for f in fishers if f.numel()), default=0.0)
        lam = self.options.ewc_lambda
        if top > 0 and self.options.optimizer == "sgd":
            lam = min(lam, 1.0 / (self.options.lr * top))
        self.effective_lambda_ = lam
        return lam

    def after_training_flops(self, graph: ArchGraph, work: Workload) -> int:
        """The Fisher pass: one training step per sampled image."""
        step = step_flops_per_image(graph, self.options.trainable) + 3 * head_growth_flops(graph, work.n_classes)
        return min(self.options.fisher_samples, work.n_train) * step

    def after_training(self, ctx: Context, graph: ArchGraph, net: nn.Module) -> None:
        opts = self.options
        rng = np.random.default_rng(opts.seed + ctx.index)
        rows = rng.permutation(len(ctx.labels))[: opts.fisher_samples]
        params = set_trainable(net, graph, opts.trainable)
        keep = trainable_nodes(graph, opts.trainable)
        names = [k for k, p in net.named_parameters() if k.split(".")[0] in keep]
        fisher = {k: torch.zeros_like(p) for k, p in net.named_parameters() if k in names}
        net.eval()
        price = StepPricer(net, tuple(graph.input_shape), opts.channels_last)
        flops, batches = 0, 0
        for start in range(0, len(rows), opts.fisher_batch):
            idx = rows[start : start + opts.fisher_batch]
            x = batch_to(ctx.preprocess, ctx.images[idx], ctx.device)
            y = torch.as_tensor(ctx.labels[idx], dtype=torch.int64).to(ctx.device)
            net.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            for k, p in net.named_parameters():
                if k in fisher and p.grad is not None:
                    fisher[k] += p.grad.detach() ** 2
            flops += price(len(idx))
            batches += 1
        ctx.meter.add_flops(flops)
        del params
        for p in net.parameters():
            p.requires_grad_(True)
            p.grad = None
        n = max(batches, 1)
        for k, f in fisher.items():  # kept on the CPU: the state is device-agnostic
            f = (f / n).cpu()
            old = self.fisher_.get(k)
            if old is not None and _fits(f, old):
                grown = torch.zeros_like(f)
                grown[: len(old)] = old * opts.gamma
                f = f + grown
            self.fisher_[k] = f
            self.anchor_[k] = dict(net.named_parameters())[k].detach().cpu().clone()

    def state_dict(self) -> dict[str, Tensor]:
        sd: dict[str, Tensor] = {f"fisher.{k}": v.detach().cpu().clone() for k, v in self.fisher_.items()}
        sd |= {f"anchor.{k}": v.detach().cpu().clone() for k, v in self.anchor_.items()}
        return sd

    def load_state_dict(self, state: Mapping[str, Tensor]) -> EWC:
        self.fisher_ = {k[len("fisher."):]: v.clone() for k, v in state.items() if k.startswith("fisher.")}
        self.anchor_ = {k[len("anchor."):]: v.clone() for k, v in state.items() if k.startswith("anchor.")}
        return self


def _fits(new: Tensor, old: Tensor) -> bool:
    """Whether `old` covers a prefix of `new` along dim 0 (a grown head) with the same other dims."""
    return new.shape[1:] == old.shape[1:] and new.shape[0] >= old.shape[0]
