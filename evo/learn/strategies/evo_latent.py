"""`evo_latent`: train the layers above a frozen cut on the increment + stored latents of everything seen,
then recompute the closed-form head's statistics exactly from the store (issue 14).

The latent store (`evo.learn.latent`, given to the Learner as `latents=`) holds every training
image's activation at the cut. Nothing below the cut runs here: the increment's part was encoded
once when it arrived (in a search, once per round for all candidates). The strategy

1. starts the head from a provisional ridge solve on the training set's features (so new classes
   start sensible; `head_init: ridge`) or from a random draw (`fresh`, which skips that pass),
2. trains everything above the cut (or its last `trainable` blocks) with cross-entropy on the
   increment plus `replay` × as many stored latents, drawn class-balanced over the old classes
   (or a class-stratified `subsample` of those), with light Gaussian noise on the latents
   (`noise` × the batch's std),
3. recomputes G = ΦᵀΦ and B = ΦᵀY over every live stored latent plus the increment with the
   trained layers, and solves the head (λ by GCV) — the joint ridge solve on the evolved features
   over all data the store holds, not a refit from the exemplar memory.

When the store has never evicted, that is all data seen; otherwise it is the class-balanced sample
the budget kept (the manifest reports it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from evo.checks import check_int
from evo.errors import ConfigError
from evo.graph.archgraph import ArchGraph
from evo.graph.taps import Tap, tap_graph
from evo.learn.cost import matmul_flops, ridge_flops
from evo.learn.device import feature_batch
from evo.learn.head import RidgeHead
from evo.learn.latent import LatentRows, LatentStore, check_layout, merge_above, split
from evo.learn.strategies.base import Context, Result, Workload, register_strategy
from evo.learn.strategies.evo import Evo, calibrate_scale
from evo.learn.tracked import LAYOUT_KEY, head_map, head_taps, layout_width, map_features, to_meta
from evo.learn.train import TrainConfig, config_from, fit, step_flops_per_image, uniform_fan_in

HEAD_INITS = ("ridge", "fresh")
TRAIN_TAPS = ("head", "deepest")
BALANCED = "balanced"  # `replay`: as many stored latents per old class as the increment has per class


@register_strategy("evo_latent")
class EvoLatent(Evo):
    """Layers above the cut trained on increment ∪ stored latents → statistics recomputed from the store."""

    needs_latents = True

    @dataclass
    class Options(Evo.Options):
        """Evo's options plus training above the cut (`evo.learn.train.TrainConfig`: AdamW with cosine
        decay by default; `trainable` 'all' = every layer above the cut, or the head + last N blocks).
        `replay`: stored latents replayed per increment image (class-balanced over the old classes), or
        'balanced': each old class gets as many as the increment brings per class, so that every class
        seen weighs the same in training (in a class-incremental stream: all of the store; the cost
        then grows with the data seen, like joint retraining above the cut).
        `noise`: std of the Gaussian noise added to training latents, relative to each batch's std.
        `warmup`: the fraction of the steps that ramp the learning rate up first (one-cycle; 0: cosine).
        `gcv_evals`: cap of the GCV walk for the recomputed head (it starts at the last λ, where it
        usually stops after three evaluations); the provisional head before training uses that λ.
        `head_init`: what the head starts training from: 'ridge', the provisional closed-form head, or
        'fresh', a random init (as a fresh classifier in a joint fine-tune; no provisional pass is paid).
        Either way the committed head is the ridge solve recomputed after training.
        `subsample`: the fraction of each class's training rows (increment and replay alike) that
        training sees, drawn class-stratified once per increment: a cheaper pass that still spreads
        over every class seen (the statistics are recomputed over everything either way).
        `train_taps`: what the head that training draws reads. 'head': the committed head's own taps.
        'deepest': only the deepest of them (with `taps: auto+features`, the pooled top), so that the
        loss reaches every layer above the cut through the top instead of being fitted from a shallow
        tap; the committed ridge head still reads every tap, now of the trained layers. Needs
        `head_init: fresh` (the training head is a different layer from the committed one)."""

        epochs: int = 2
        lr: float = 1e-3
        optimizer: str = "adamw"
        momentum: float = 0.9
        weight_decay: float = 1e-4
        trainable: str | int = "all"
        train_batch_size: int = 64
        replay: float | str = 1.0
        noise: float = 0.1
        gcv_evals: int = 6
        max_flops: int | None = None
        seed: int = 0
        warmup: float = 0.0
        head_init: str = "ridge"
        subsample: float = 1.0
        train_taps: str = "head"

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.head_init not in HEAD_INITS:
                raise ConfigError(f"evo_latent option head_init must be one of {list(HEAD_INITS)}; "
                                  f"got {self.head_init!r}")
            for name in ("replay", "noise"):
                v = getattr(self, name)
                if name == "replay" and v == BALANCED:
                    continue
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
                    also = f" or {BALANCED!r}" if name == "replay" else ""
                    raise ConfigError(f"evo_latent option {name} must be a finite number >= 0{also}; got {v!r}")
            f = self.subsample
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
                raise ConfigError(f"evo_latent option subsample must be a fraction in (0, 1]; got {f!r}")
            check_int("evo_latent option gcv_evals", self.gcv_evals, 3)
            if self.train_taps not in TRAIN_TAPS:
                raise ConfigError(f"evo_latent option train_taps must be one of {list(TRAIN_TAPS)}; "
                                  f"got {self.train_taps!r}")
            if self.train_taps != "head" and self.head_init != "fresh":
                raise ConfigError(f"evo_latent option train_taps: {self.train_taps} trains a head of its own; "
                                  "it needs head_init: fresh")
            self.train_config()

        def train_config(self) -> TrainConfig:
            return config_from(self, channels_last=False)

    # -- the hook -----------------------------------------------------------------------------

    def learn(self, ctx: Context) -> Result:
        store: LatentStore | None = ctx.latents
        if store is None or store.cut is None:
            raise ConfigError("strategy 'evo_latent' trains on stored latents: give the Learner a latent store "
                              "(Learner(..., latents=StoreConfig(...))) or add `latents:` to the search space")
        graph, cut = ctx.graph, store.cut
        head = head_taps(graph)
        graph = self._fit_expansion(graph, head, ctx)
        layout = head + self.spare(graph, head)
        check_layout(graph, cut, layout)
        _, above = split(graph, cut)
        increment = store.rows_of(store.current)
        if len(increment) != len(ctx.labels) or not np.array_equal(increment.labels(ctx.classes), ctx.labels):
            raise ConfigError(f"the latent store's part for increment {ctx.index} does not hold this increment's "
                              "images (row count or labels differ); it was staged for other data")
        old = store.rows(exclude=store.current)
        replay = self._replay(old, ctx, len(increment))
        train_rows = LatentRows.concat(increment, replay)
        train_labels = np.concatenate([ctx.labels, replay.labels(ctx.classes)]).astype(np.int64)
        cfg = self.options.train_config()
        # 1. the head training starts from: a provisional ridge solve for every class, or a random draw
        if self.options.head_init == "fresh":  # nothing of a provisional solve would survive: skip its pass
            trainee = _random_head(self._trainee(above, head), cfg.seed + ctx.index, len(ctx.classes))
        else:
            trainee = self._solve_into(above, layout, head, train_rows, train_labels, ctx, fresh=True)[0]
        if self.options.subsample < 1:
            keep = stratified(train_labels, self.options.subsample, self.options.seed + 7919 * ctx.index + 1)
            train_rows, train_labels = train_rows.subset(keep), train_labels[keep]
        # 2. train above the cut
        net = trainee.to_module()
        stats = fit(net, trainee, train_rows, train_labels, self._augment(cfg.seed), cfg, ctx.meter,
                    progress=ctx.progress, desc=f"evo_latent (increment {ctx.index})")
        above = merge_above(above, trainee.with_weights(net), skip=(above.head,))
        # 3. the statistics again, exactly, over everything the store holds
        every = LatentRows.concat(old, increment)
        every_labels = np.concatenate([old.labels(ctx.classes), ctx.labels]).astype(np.int64)
        above, feats, info = self._solve_into(above, layout, head, every, every_labels, ctx, fresh=False,
                                              calibrate_rows=len(old))
        out = merge_above(graph, above)
        out.meta.update({k: above.meta[k] for k in ("head_scale", LAYOUT_KEY)})
        info.update(train_steps=stats["steps"], train_flops=stats["flops"], stopped_by_cap=stats["stopped_by_cap"],
                    replayed=len(replay), trained_on=len(train_labels), recomputed_from=len(every), cut=cut,
                    trained_through=[t.node for t in head_taps(trainee)],
                    exact_head=True)  # the joint solve over everything the store holds
        return Result(out, feats, info)

    def _trainee(self, above: ArchGraph, head: list[Tap]) -> ArchGraph:
        """The network training runs: `above` itself, or (`train_taps: deepest`) `above` with its head
        reading only the deepest of `head`'s taps (the trained weights go back to `above` by node name)."""
        if self.options.train_taps == "head" or len(head) == 1:
            return above
        order = {n: i for i, n in enumerate(above.nodes())}
        return tap_graph(above, [max(head, key=lambda t: order[t.node])])

    def _replay(self, old: LatentRows, ctx: Context, n: int) -> LatentRows:
        """`replay` × n stored rows, class-balanced over the old classes (all of a class if it has fewer);
        'balanced': n / (the increment's class count) per old class."""
        if not len(old):
            return LatentRows([])
        names = old.label_names()
        rng = np.random.default_rng(self.options.seed + 7919 * ctx.index)
        by_class = [rng.permutation(np.flatnonzero(names == c)) for c in np.unique(names)]
        if self.options.replay == BALANCED:  # a per-class quota: no class tops up another's shortfall
            per_class = int(round(n / max(len(np.unique(np.asarray(ctx.labels))), 1)))
            by_class = [idx[:per_class] for idx in by_class]
            want = sum(len(idx) for idx in by_class)
        else:
            want = min(len(old), int(round(self.options.replay * n)))
        if not want:
            return LatentRows([])
        picked: list[int] = []
        depth = 0
        while len(picked) < want:  # round-robin over classes: balanced until a class runs out
            layer = [idx[depth] for idx in by_class if depth < len(idx)]
            picked += layer[: want - len(picked)]
            depth += 1
        return old.subset(np.array(picked))

    def _augment(self, seed: int):
        noise, gen = self.options.noise, torch.Generator().manual_seed(seed)

        def prep(z: Tensor) -> Tensor:
            if noise <= 0:
                return z
            return z + noise * z.std() * torch.randn(z.shape, generator=gen)

        return prep

    def _solve_into(self, above: ArchGraph, layout, head, rows: LatentRows, labels: np.ndarray, ctx: Context,
                    fresh: bool, calibrate_rows: int = 0) -> tuple[ArchGraph, Tensor, dict[str, Any]]:
        """Fresh ridge statistics over `rows` with `above`'s current weights; the head solved into `above`.
        Returns the head's features of the rows from `calibrate_rows` on (the increment's). The softmax
        scale is fitted on those rows plus as many stored ones drawn at random (old classes too: the
        increment alone was trained on and would make the head overconfident on the old classes)."""
        self.head_ = RidgeHead(self.head_.ridge)
        n_inc = len(rows) - calibrate_rows
        extra = np.random.default_rng(self.options.seed).permutation(calibrate_rows)[:n_inc]
        calib = np.zeros(len(rows), bool)
        calib[calibrate_rows:] = True
        calib[extra] = True
        net = (above if layout == head else tap_graph(above, layout)).to_module().eval()
        fpi = net_flops(above if layout == head else tap_graph(above, layout))
        bs = feature_batch(net, self.options.batch_size, torch.device("cpu"))  # the rows and net are on the CPU
        tail = []
        for start in range(0, len(rows), bs):
            idx = np.arange(start, min(start + bs, len(rows)))
            with torch.inference_mode():
                f = net.forward_features(rows[idx]).float()
            ctx.meter.add_flops(fpi * len(idx))
            self._absorb(f, labels[idx], len(ctx.classes), ctx)
            keep = calib[idx]
            if keep.any():
                tail.append(f[torch.from_numpy(keep)])
        mapping = head_map(above, head, layout)
        view = self._head_view(mapping, ctx)
        if self.options.ridge != "gcv":
            lam = self._choose_ridge(view, ctx, fresh=False)
        elif fresh:  # the provisional head: the last λ (or GCV's usual starting point), no walk
            lam = self.lambda_ if self.lambda_ is not None else _start_lambda(view)
        else:  # GCV walking from the last λ (the features moved, not the data's scale), capped
            lam, flops = view.gcv_walk(self.lambda_, max_evals=self.options.gcv_evals)
            ctx.meter.add_flops(flops)
            self.lambda_ = self.head_.ridge = view.ridge = lam
        ctx.meter.add_flops(view.solve_flops(lam))
        weight, bias = view.solve(lam)
        c, d = weight.shape
        cal = map_features(mapping, torch.cat(tail)) if tail else torch.empty(0, d)
        z = cal.double() @ weight.T + bias
        ctx.meter.add_flops(matmul_flops(len(cal), d, c))
        scale = calibrate_scale(z, torch.as_tensor(labels[calib], dtype=torch.int64)) if len(cal) else 1.0
        feats = cal[-n_inc:] if n_inc else cal[:0]  # the increment's rows come last in `rows` and in `cal`
        out = above.copy()
        dtype = out.params(out.head)["weight"].dtype
        out.set_params(out.head, weight=(scale * weight).to(dtype), bias=(scale * bias).to(dtype))
        out.meta["head_scale"] = scale
        out.meta[LAYOUT_KEY] = to_meta(layout)
        info = {"feature_dim": d, "statistics_dim": self.head_.n_features_in_, "ridge": lam,
                "n_samples": self.head_.n_samples_, "head_scale": scale, "statistics_recomputed": not fresh}
        return out, feats, info

    # -- cost -----------------------------------------------------------------------------------

    def price(self, graph: ArchGraph, work: Workload) -> int:
        """Above the cut only (the pass below it is paid once per round): the provisional head over the
        training set (`head_init: ridge`), training steps on the (subsampled) increment + replay
        (capped by `max_flops`), the statistics recomputed over increment + every stored latent, and
        the exemplar memory's features (a full forward; the increment's come from the recompute)."""
        if work.cut is None:
            raise ConfigError("strategy 'evo_latent' needs a latent store; add `latents:` to the search space")
        g = self.prepare(graph) if work.first else graph
        _, above = split(g, work.cut)
        head = head_taps(g)
        layout = head + self.spare(g, head)
        fwd = net_flops(above if layout == head else tap_graph(above, layout))
        n, stored = work.n_train, work.n_seen
        # 'balanced' is priced at its bound, every stored latent (what it replays in a class-incremental stream)
        r = stored if self.options.replay == BALANCED else min(stored, int(round(self.options.replay * n)))
        cfg = self.options.train_config()
        provisional = n + r if self.options.head_init == "ridge" else 0
        trained = min(n + r, math.ceil(self.options.subsample * (n + r)) + work.n_classes)  # ceil per class
        train = cfg.epochs * trained * step_flops_per_image(self._trainee(above, head), cfg.trainable)
        if cfg.max_flops is not None:
            train = min(train, cfg.max_flops)
        d = layout_width(g, layout)
        solves = (ridge_flops(n + r, d, work.n_classes, 0)
                  + ridge_flops(n + stored, d, work.n_classes, self.options.gcv_evals))
        memory = g.flops(batch=1) * work.n_memory
        return int(fwd * (provisional + n + stored) + train + solves + memory + self._expansion_price(g, work))


def _random_head(graph: ArchGraph, seed: int, n_classes: int) -> ArchGraph:
    """`graph` with its final Linear for `n_classes` drawn as torch's nn.Linear default (uniform
    ±1/√fan_in), seeded."""
    out = graph.copy()
    w = out.params(out.head)["weight"]
    if w.shape[0] != n_classes:
        raise ConfigError(f"the head predicts {w.shape[0]} classes but the increment has {n_classes} classes so far; "
                          "grow the head (add_classes) before learning")
    gen = torch.Generator().manual_seed(seed)
    fresh = {"weight": uniform_fan_in(tuple(w.shape), w.shape[1], gen).to(w.dtype)}
    if "bias" in out.params(out.head):
        fresh["bias"] = uniform_fan_in((w.shape[0],), w.shape[1], gen).to(w.dtype)
    out.set_params(out.head, **fresh)
    return out


def stratified(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted row indices: `fraction` of each class's rows (rounded up, so every class keeps one), seeded."""
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(idx)[: math.ceil(fraction * len(idx))]
            for idx in (np.flatnonzero(labels == c) for c in np.unique(labels))]
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)


def _start_lambda(view: RidgeHead) -> float:
    """Where `RidgeHead.gcv_walk` starts: 10^-1.5 × the mean centred feature variance."""
    g = view.gram_
    n, s = float(g[-1, -1]), g[:-1, -1]
    variance = float((torch.diagonal(g)[:-1] - s * s / n).sum()) / max(g.shape[0] - 1, 1)
    return max(variance * 10**-1.5, 1e-8)


def net_flops(graph: ArchGraph) -> int:
    return graph.flops(batch=1)
