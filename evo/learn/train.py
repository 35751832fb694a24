"""The SGD training loop shared by every gradient-based strategy, with measured compute.

`fit(net, data, ...)` trains the compiled graph (an `EvoNet`) for a few epochs on uint8 images
preprocessed per batch. A strategy changes *what* is minimised through `loss_fn(net, x, y, idx)`
and, optionally, what else each step costs (`extra_step_flops`, e.g. a teacher's forward for
distillation); the loop owns batching, the optimiser, the trainable-layer choice, progress bars
and cost accounting. FLOPs are priced once per batch size on the meta device
(`evo.learn.cost.train_flops`, with the real trainable set, so frozen layers skip their weight
gradients) and multiplied by the steps taken.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from evo.checks import check_int
from evo.errors import ConfigError, DataError
from evo.graph.taps import blocks
from evo.learn.cost import CostMeter, forward_flops, train_flops
from evo.learn.device import autocast, batch_to, feature_batch, grad_scaler

LossFn = Callable[[nn.Module, Tensor, Tensor, np.ndarray], Tensor]
OPTIMIZERS = ("sgd", "adamw")


@dataclass
class TrainConfig:
    """How a gradient-based strategy trains. Unset (None) options fall through to these defaults.

    - `trainable`: "all", "head" (the final Linear only) or an int N: the head plus the last N
      blocks of the backbone (see `evo.graph.taps.blocks`). Frozen layers keep BN in eval mode.
    - `max_flops`: stop once the training FLOPs of this call reach this cap (the growth search's
      per-candidate compute cap); None trains the full schedule.
    - `warmup`: the fraction of the steps over which the learning rate ramps up linearly from
      lr / 25 to lr before the cosine decay (the one-cycle shape); 0 is cosine from the first step.
      Adam's first steps move every weight by about lr whatever its gradient, before its moment
      estimates settle; a ramp keeps those steps from undoing what pretrained layers knew.
      The schedule spans every epoch: a `max_flops` cap that stops training early ends it before
      the decay (during the ramp, if the cap is that tight).
    """

    epochs: int = 2
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    trainable: str | int = "all"
    channels_last: bool = True
    max_flops: int | None = None
    seed: int = 0
    warmup: float = 0.0

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs, 0)
        check_int("batch_size", self.batch_size)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {list(OPTIMIZERS)}; got {self.optimizer!r}")
        for name in ("lr", "momentum", "weight_decay"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"{name} must be a finite number >= 0; got {v!r}")
        t = self.trainable
        if not (t in ("all", "head") or (isinstance(t, int) and not isinstance(t, bool) and t >= 0)):
            raise ConfigError(f"trainable must be 'all', 'head' or an int N >= 0 (last N blocks); got {t!r}")
        if not isinstance(self.channels_last, bool):
            raise ConfigError(f"channels_last must be True or False; got {self.channels_last!r}")
        if self.max_flops is not None:
            check_int("max_flops", self.max_flops)
        check_int("seed", self.seed, 0)
        w = self.warmup
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < 1:
            raise ConfigError(f"warmup must be a fraction of the steps in [0, 1); got {w!r}")

    @classmethod
    def build(cls, **options: Any) -> TrainConfig:
        """Build from keyword options, dropping None (timm-style: unset falls through to defaults)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown training option(s) {unknown}; valid: {sorted(known)}")
        return cls(**{k: v for k, v in options.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def config_from(options: Any, **overrides: Any) -> TrainConfig:
    """The TrainConfig of a closed-form strategy that also trains (`evo_tune`, `evo_latent`): every
    TrainConfig field its options have, with `train_batch_size` as the batch (its own `batch_size` is
    the feature pass's), plus `overrides`. New TrainConfig fields reach them through here."""
    names = {f.name for f in fields(TrainConfig)} - {"batch_size"}
    opts = {k: v for k, v in vars(options).items() if k in names}
    return TrainConfig.build(**opts, batch_size=options.train_batch_size, **overrides)


WARMUP_START = 1 / 25  # the one-cycle ramp starts at lr / 25 (torch's OneCycleLR default)


def lr_factor(step: int, total: int, warmup: float = 0.0) -> float:
    """The learning rate at `step` of `total`, relative to `lr`: a linear ramp from WARMUP_START over
    the first `warmup` fraction of the steps, then cosine decay to 0."""
    ramp = min(int(warmup * total + 1e-9), total - 1)  # the peak is always reached, and decay follows
    if step < ramp:
        return WARMUP_START + (1 - WARMUP_START) * step / ramp
    rest = max(total - ramp, 1)
    return 0.5 * (1 + math.cos(math.pi * min(step - ramp, rest) / rest))


def uniform_fan_in(shape: tuple[int, ...], fan_in: int, generator: torch.Generator) -> Tensor:
    """A seeded fp32 draw from U(±1/√fan_in), torch's nn.Linear default: what a fresh classifier starts
    from in a joint fine-tune, so a strategy's new head rows start where the ceiling's do."""
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound


# -- which layers train ---------------------------------------------------------------------------


# Set while a search space's own `trainable` value is checked against the model (`evo.search.launch`): there
# N above the block count is an error; elsewhere it means every block, so that a default such as evo_tune's
# 2 still trains a one-block model.
STRICT_TRAINABLE: contextvars.ContextVar[bool] = contextvars.ContextVar("strict_trainable", default=False)


def trainable_nodes(graph, trainable: str | int) -> set[str]:
    """Names of the nodes whose parameters train under `trainable` (the head always does)."""
    head = {graph.head} if graph.head else set()
    if trainable == "all":
        return {n for n in graph.nodes() if graph.params(n)}
    if trainable == "head":
        return head
    found = blocks(graph)
    if trainable > len(found) and STRICT_TRAINABLE.get():  # a value set on purpose, meant for another model?
        span = f": {found[0][0]} … {found[-1][0]}" if found else ""
        raise ConfigError(f"trainable: {trainable} is more blocks than the network it trains has ({len(found)}{span}); "
                          f"use 'all' to train every layer, or N <= {len(found)}")
    chosen = found[-trainable:] if trainable else []
    return head | {n for _, names in chosen for n in names}


def step_flops_per_image(graph, trainable: str | int) -> int:
    """One training step per image with `trainable` (frozen layers get no weight gradient, and no
    input gradient below the first trainable one): what `fit` measures, priced on shapes."""
    return graph.flops(batch=1, backward=True, trainable=trainable_nodes(graph, trainable))


def set_trainable(net: nn.Module, graph, trainable: str | int) -> list[nn.Parameter]:
    """Freeze everything except `trainable`; return the parameters that train."""
    keep = trainable_nodes(graph, trainable)
    params = []
    for name, module in net.named_children():
        on = name in keep
        for p in module.parameters():
            p.requires_grad_(on)
            if on:
                params.append(p)
    return params


def train_mode(net: nn.Module, graph, trainable: str | int) -> None:
    """Train mode for trainable nodes only: frozen BN keeps its running statistics."""
    keep = trainable_nodes(graph, trainable)
    net.eval()
    for name, module in net.named_children():
        if name in keep or trainable == "all":
            module.train()


# -- the loop -------------------------------------------------------------------------------------


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class StepPricer:
    """FLOPs of one training step per batch size, priced once on the meta device and cached."""

    def __init__(self, net: nn.Module, input_shape: tuple[int, ...], channels_last: bool,
                 extra: Callable[[int], int] | None = None) -> None:
        self.net, self.shape, self.channels_last, self.extra = net, input_shape, channels_last, extra
        self._cache: dict[int, int] = {}

    def __call__(self, batch: int) -> int:
        if batch not in self._cache:
            x = torch.empty((batch, *self.shape))
            flops = train_flops(self.net, x)
            self._cache[batch] = flops + (self.extra(batch) if self.extra else 0)
        return self._cache[batch]


def fit(
    net: nn.Module,
    graph,
    images: np.ndarray,
    labels: np.ndarray,
    preprocess,
    cfg: TrainConfig,
    meter: CostMeter,
    loss_fn: LossFn | None = None,
    extra_step_flops: Callable[[int], int] | None = None,
    progress: bool = True,
    desc: str = "train",
    on_epoch_end: Callable[..., Any] | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Train `net` (compiled from `graph`) in place on uint8 NHWC `images` with int `labels`.

    Returns {"steps", "epochs", "flops", "stopped_by_cap", "loss"}; adds its FLOPs to `meter`.
    `loss_fn(net, x, y, idx)` defaults to cross-entropy; `idx` are the batch's rows in `images`.
    `on_epoch_end(epoch, net, {"steps", "flops"})` runs after each full epoch with `net` in eval
    mode (for measurements; its own compute is not charged to training).
    `net` is moved to `device`; on CUDA the forward and loss run under autocast (`evo.learn.device`).
    Dropout draws from torch's generator seeded with `cfg.seed` (forked: the caller's is untouched),
    so a run is reproducible.
    """
    n = len(labels)
    if n == 0:
        raise DataError("nothing to train on: the training set is empty")
    params = set_trainable(net, graph, cfg.trainable)
    if not params:
        raise ConfigError(f"trainable={cfg.trainable!r} leaves no parameter to train in this graph")
    device = torch.device(device)
    net.to(device)
    if cfg.channels_last:
        net.to(memory_format=torch.channels_last)
    loss_fn = loss_fn or _cross_entropy
    opt = make_optimizer(params, cfg)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = max(cfg.epochs * steps_per_epoch, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, cfg.warmup))
    price = StepPricer(net, tuple(graph.input_shape), cfg.channels_last, extra_step_flops)
    rng = np.random.default_rng(cfg.seed)
    steps, flops, last_loss, capped = 0, 0, math.nan, False
    scaler = grad_scaler(device)
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc=desc, disable=not progress, leave=False, unit="step")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        for _epoch in range(cfg.epochs):
            train_mode(net, graph, cfg.trainable)
            order = rng.permutation(n)
            for start in range(0, n, cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                step_flops = price(len(idx))
                if cfg.max_flops is not None and flops + step_flops > cfg.max_flops:
                    capped = True
                    break
                x = batch_to(preprocess, images[idx], device, cfg.channels_last)
                y = torch.as_tensor(labels[idx], dtype=torch.int64).to(device)
                with autocast(device):
                    loss = loss_fn(net, x, y, idx)
                if not torch.isfinite(loss):
                    raise DataError(f"training loss became {loss.item()} at step {steps}; lower lr (now {cfg.lr})")
                opt.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    opt.step()
                else:  # fp16 autocast: scale the loss so small gradients survive
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                sched.step()
                steps, flops, last_loss = steps + 1, flops + step_flops, loss.item()
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.3f}", refresh=False)
            if capped:
                break
            if on_epoch_end is not None:
                net.eval()
                on_epoch_end(_epoch + 1, net, {"steps": steps, "flops": flops})
    bar.close()
    net.eval()
    for p in net.parameters():
        p.requires_grad_(True)
    meter.add_flops(flops)
    return {"steps": steps, "epochs": cfg.epochs, "flops": flops, "stopped_by_cap": capped, "loss": last_loss}


def _cross_entropy(net: nn.Module, x: Tensor, y: Tensor, idx: np.ndarray) -> Tensor:
    return nn.functional.cross_entropy(net(x), y)


# -- inference ------------------------------------------------------------------------------------


@torch.inference_mode()
def run_batches(
    net: nn.Module,
    images: np.ndarray,
    preprocess,
    fn: Callable[[nn.Module, Tensor], Tensor],
    meter: CostMeter | None = None,
    batch_size: int = 256,
    flops_per_image: int | None = None,
    progress: bool = True,
    desc: str = "features",
    device: str | torch.device = "cpu",
) -> Tensor:
    """Apply `fn(net, x)` to every batch of `images` in eval mode; concatenate the outputs (float32 CPU).

    `net` is moved to `device` (autocast on CUDA); the outputs come back as fp32 on the CPU, where
    the closed-form statistics accumulate them in fp64. With a `meter`, adds
    `flops_per_image × len(images)` (priced by the caller) to it.
    """
    device = torch.device(device)
    net.to(device).eval()
    outs = []
    bar = tqdm(total=len(images), desc=desc, disable=not progress, leave=False, unit="img")
    step = feature_batch(net, batch_size, device)
    for start in range(0, len(images), step):
        x = batch_to(preprocess, images[start : start + step], device)
        with autocast(device):
            out = fn(net, x).float()
        if not torch.isfinite(out).all():
            raise DataError(
                f"the model produced NaN/inf for images {start}..{start + len(x) - 1}; its weights are "
                "broken (check the graph's tensors, or lower the learning rate that produced them)"
            )
        outs.append(out.cpu())
        bar.update(len(x))
    bar.close()
    if meter is not None and flops_per_image:
        meter.add_flops(flops_per_image * len(images))
    return torch.cat(outs) if outs else torch.empty(0)


def forward_flops_per_image(net: nn.Module, input_shape: tuple[int, ...], features_only: bool = False) -> int:
    """Forward FLOPs for one image (logits, or the head's input with `features_only`)."""
    if not features_only:
        return forward_flops(net, torch.empty((1, *input_shape)))
    return forward_flops(_Features(net), torch.empty((1, *input_shape)))


class _Features(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.forward_features(x)
