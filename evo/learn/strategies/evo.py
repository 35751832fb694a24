"""`evo`: frozen multi-layer features + the exact closed-form ridge head (the fast path).

On the first increment the graph is rewired (`evo.graph.taps.tap_graph`) so its final Linear
reads mid-level block outputs, average-pooled to small grids (by default stride 8 and
stride 16, each at 4×4; the layers past the deepest tap are pruned). Every increment then costs one
forward pass over its images plus a rank-n update of the ridge statistics G = ΦᵀΦ, B = ΦᵀY;
the solution is written into the graph's final Linear. Sums commute, so after any sequence of
increments the head equals the joint ridge solve on the same features, whatever the class
order. The ridge λ is chosen each increment by generalised cross-validation from G and B alone,
walking a half-decade grid from the previous increment's λ (three Cholesky factorisations when
it has not moved).

The statistics cover a *layout* of taps (`evo.learn.tracked`): the head's own, plus optional
spare block outputs (`spare`) the head may grow onto later with every statistic still exact.
When the backbone changed under the statistics (a grown candidate passed through
`Learner.with_graph`), the layout's features are recomputed on a few exemplars with the old and
the new graph: if they agree (growth that left them unchanged: a tap onto a spare block, a
deepening or a zero branch before any training), the statistics are kept, exact. Otherwise they
are rebuilt from the exemplar memory plus the increment: the old data is gone, so this is then no
longer equal to the joint solve.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from evo.checks import check_int
from evo.data.transforms import Preprocess
from evo.errors import ConfigError
from evo.graph.archgraph import ArchGraph
from evo.graph.layers import standardisation
from evo.graph.taps import Tap, head_expansion, is_tapped, tap_graph
from evo.learn.cost import CostMeter, matmul_flops, ridge_flops
from evo.learn.features import DEFAULT_LEVELS, parse_taps
from evo.learn.head import GCV_MAX_EVALS, RidgeHead
from evo.learn.strategies.base import (
    Context,
    Result,
    Strategy,
    Workload,
    head_growth_flops,
    option_defaults,
    register_strategy,
    sub_state,
    tensor_state,
)
from evo.learn.tracked import (
    LAYOUT_KEY,
    apply_map,
    from_meta,
    head_map,
    head_taps,
    layout_width,
    map_features,
    readable,
    spare_taps,
    to_meta,
)
from evo.learn.train import forward_flops_per_image, run_batches


@register_strategy("evo")
class Evo(Strategy):
    """Closed-form head on frozen multi-layer features; incremental == joint on the same features."""

    @dataclass
    class Options:
        """`taps`: 'auto', 'features' (the head's current input only), 'auto+features' or [(node, grid), ...].
        `levels`: for taps='auto' and 'auto+features', (stride, pooled grid side) pairs; the default (stride 8 and 16 at
        4×4) keeps each increment well under joint retraining's cost; ((8, 8), (16, 4)) is more
        accurate at about twice the statistics cost (BENCHMARKS.md has the figures).
        `ridge`: 'gcv' (choose λ by generalised cross-validation each increment) or a fixed λ >= 0.
        `spare`: block outputs whose statistics are kept beside the head's so that growing the head
        onto them later (`add_tap`) stays exact: 'none', 'auto' (the first block output at the
        finest of `levels`), or (stride, grid) levels, each naming the first block at that stride.
        They cost statistics work on every increment (Gram size grows with the square of the width).
        `expand`: the number of random ReLU features of the taps the head reads besides the taps
        themselves (RanPAC's expansion, McDonnell et al. 2023, kept beside its input); 0 = none. It is
        fixed when the graph is first tapped: a `random_features` node between the taps and the head,
        its matrix regenerated from a seed, its standardisation fitted on the first increment. It buys
        accuracy where there is much data (BENCHMARKS.md, "Random features") at a Gram of (taps +
        expand)²; spare taps and `add_tap` do not apply to an expanded head.
        `batch_size`: images per forward batch during feature extraction."""

        taps: Any = "auto"
        levels: Sequence[tuple[int, int]] = DEFAULT_LEVELS
        ridge: float | str = "gcv"
        spare: Any = "none"
        expand: int = 0
        batch_size: int = 256

        def __post_init__(self) -> None:
            r = self.ridge
            if r != "gcv" and (isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < math.inf):
                raise ConfigError(f"evo option ridge must be 'gcv' or a finite number >= 0; got {r!r}")
            lv = self.levels
            if not isinstance(lv, Sequence) or not lv or any(
                    not isinstance(p, Sequence) or len(p) != 2 or any(isinstance(v, bool) or not isinstance(v, int)
                                                                      or v < 1 for v in p) for p in lv):
                raise ConfigError(f"evo option levels must be (stride, grid) pairs of ints >= 1; got {lv!r}")
            self.levels = tuple((int(a), int(b)) for a, b in lv)
            sp = self.spare
            if sp not in ("none", "auto") and (isinstance(sp, str) or not isinstance(sp, Sequence) or any(
                    not isinstance(p, Sequence) or len(p) != 2 or any(isinstance(v, bool) or not isinstance(v, int)
                                                                      or v < 1 for v in p) for p in sp)):
                raise ConfigError(f"evo option spare must be 'none', 'auto' or (stride, grid) pairs of ints >= 1; "
                                  f"got {sp!r}")
            check_int("evo option batch_size", self.batch_size)
            check_int("evo option expand (random features)", self.expand, 0)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.head_ = RidgeHead(1.0)
        self.lambda_: float | None = None  # the last λ chosen by GCV (the next search starts there)

    # -- the hook -----------------------------------------------------------------------------

    def prepare(self, graph: ArchGraph) -> ArchGraph:
        if is_tapped(graph):
            if self.options.expand and head_expansion(graph) is None:
                raise ConfigError(f"expand={self.options.expand} adds random features when a graph is first tapped, "
                                  "but this graph's head already reads its taps without them; start from the "
                                  "untapped model, or drop expand")
            return graph
        return tap_graph(graph, parse_taps(graph, self.options.taps, self.options.levels), expand=self.options.expand)

    def learn(self, ctx: Context) -> Result:
        graph = ctx.graph
        known = self.head_.n_classes_
        if known < len(ctx.classes) - len(ctx.new_classes) and not ctx.backbone_changed:
            raise ConfigError(
                f"the evo strategy fits the head from the data it has seen, but the model already has "
                f"{len(ctx.classes) - len(ctx.new_classes)} classes without statistics; start from a "
                "fresh head (Learner(head='reset')) or use a gradient strategy such as 'replay'"
            )
        self.head_.to(ctx.device)  # statistics in fp64 on the learner's device (state_dict is CPU)
        head = head_taps(graph)
        graph = self._fit_expansion(graph, head, ctx)
        # exact_head: the head is the joint solve over everything seen, not a refit that lost images
        info: dict[str, Any] = {"feature_dim": None, "rebuilt_from_memory": False, "exact_head": True}
        seen_before = int(self.head_.n_samples_ or 0)
        layout = self._kept_layout(ctx, head, info)
        if layout is None:  # no usable statistics: start over on the head's taps plus the spare ones
            self.head_.reset()
            layout = head + self.spare(graph, head)
        net = (graph if layout == head else tap_graph(graph, layout)).to_module().eval()
        fpi = forward_flops_per_image(net, tuple(graph.input_shape), features_only=True)
        kept = self.head_.gram_ is not None
        if kept and ctx.forget is not None:  # undone corrections an earlier increment learned: out of the sums
            gone = run_batches(net, ctx.forget.images, ctx.preprocess, _features, ctx.meter,
                               self.options.batch_size, fpi, False, device=ctx.device)
            self._absorb(gone, ctx.forget.labels, len(ctx.classes), ctx, sign=-1)
            info["forgotten"] = len(ctx.forget)
        if not kept and ctx.memory is not None and len(ctx.memory):
            mem = run_batches(net, ctx.memory.images, ctx.preprocess, _features, ctx.meter,
                              self.options.batch_size, fpi, ctx.progress, "features (memory)", ctx.device)
            self._absorb(mem, ctx.memory.labels, len(ctx.classes), ctx)
            info["rebuilt_from_memory"] = True
            # the memory held everything seen (less what this increment takes out: undone corrections,
            # held-out validation images, which the memory never holds)
            info["exact_head"] = len(ctx.memory) >= seen_before - (len(ctx.forget) if ctx.forget is not None else 0)
        feats = run_batches(net, ctx.images, ctx.preprocess, _features, ctx.meter,
                            self.options.batch_size, fpi, ctx.progress, f"features (increment {ctx.index})",
                            ctx.device)
        self._absorb(feats, ctx.labels, len(ctx.classes), ctx)
        mapping = head_map(graph, head, layout)
        view = self._head_view(mapping, ctx)
        feats = map_features(mapping, feats)
        lam = self._choose_ridge(view, ctx, fresh=info["rebuilt_from_memory"])
        ctx.meter.add_flops(view.solve_flops(lam))
        weight, bias = view.solve(lam)
        c, d = weight.shape
        same = bool(info.get("statistics_kept")) and ctx.stats_graph is not None and head_taps(ctx.stats_graph) == head
        scale = self._calibrate(weight, bias, feats, ctx, kept=same)
        out = graph.copy()
        dtype = out.params(out.head)["weight"].dtype
        out.set_params(out.head, weight=(scale * weight).to("cpu", dtype), bias=(scale * bias).to("cpu", dtype))
        out.meta["head_scale"] = scale
        out.meta[LAYOUT_KEY] = to_meta(layout)
        info.update(feature_dim=d, statistics_dim=self.head_.n_features_in_, ridge=lam,
                    n_samples=self.head_.n_samples_, head_scale=scale)
        return Result(out, feats, info)

    def same_result(self, old: ArchGraph, new: ArchGraph, images: np.ndarray, preprocess: Preprocess,
                    meter: CostMeter | None = None) -> bool:
        """The head reads the same taps in both, and every feature the statistics cover agrees on
        `images` (growth that left those blocks alone): the statistics, the solve and the calibration
        are then the same, so is every prediction. A subclass with its own `learn` (one that trains the
        graph, where growth changes what training does) never is, unless it says otherwise."""
        if type(self).learn is not Evo.learn:
            return False
        old, new = self.prepare(old), self.prepare(new)
        layout = self.layout(old)
        if head_taps(old) != head_taps(new) or self.layout(new) != layout:
            return False
        return features_agree(old, new, layout, images, preprocess, meter, self.options.batch_size)

    @classmethod
    def computes(cls, options: Mapping[str, Any], grown: bool = False) -> str:
        """`evo` for a training subclass whose `trainable` is 'head' or 0: it changes no feature, so the
        head it commits is a ridge solve on the features `evo` reads, which `evo`'s exact solve over
        everything seen dominates. `evo_tune` refits it from the memory plus the increment (that solve
        without the lost images); `evo_latent` recomputes it from the store (that solve over the stored,
        compressed latents, less any evicted). The training is paid for nothing, and the search runs,
        prices and deduplicates the candidate as the fast path. Not after growth for a strategy on a
        latent store: where growth changed a tapped feature, `evo` rebuilds its statistics from the
        memory, while the store's recompute stays exact over everything seen."""
        trainable = options.get("trainable", option_defaults(cls.name).get("trainable", "all"))
        if trainable not in ("head", 0) or isinstance(trainable, bool) or (grown and cls.needs_latents):
            return cls.name
        return "evo"

    # -- cost -----------------------------------------------------------------------------------

    def price(self, graph: ArchGraph, work: Workload) -> int:
        """One forward over the increment (its features also feed the memory), the statistics and
        the GCV walk at its cap; after growth, old and new features compared on a few exemplars
        and the statistics possibly rebuilt from memory; a forward per image taken out again
        (`Workload.n_forget`). The full forward is charged where only the features run, and the
        statistics' spare taps only add pooling (far inside the GCV slack)."""
        return self._fast_price(self.prepare(graph) if work.first else graph, work)

    def _fast_price(self, g: ArchGraph, work: Workload) -> int:
        fwd = g.flops(batch=1) + head_growth_flops(g, work.n_classes)
        d = max(g.attrs(g.head)["in_features"], self.statistics_width(g))
        rebuilt = 2 * work.n_memory + 2 * VERIFY_IMAGES if work.grown else 0
        return int(fwd * (work.n_train + work.n_forget + rebuilt) + self._solve_price(work, d)
                   + self._expansion_price(g, work))

    def _expansion_price(self, g: ArchGraph, work: Workload) -> int:
        """The forward that fits an unfitted expansion's standardisation (`_fit_expansion`), else 0."""
        rf = head_expansion(g)
        if rf is None or g.attrs(rf).get("fitted"):
            return 0
        return g.flops(batch=1) * min(work.n_train, STANDARDISE_IMAGES)

    def _solve_price(self, work: Workload, d: int) -> int:
        """The statistics (the forgotten rows are taken out by a product of their own) and the solve:
        the GCV walk at its cap, or none at a fixed λ."""
        evals = GCV_MAX_EVALS if self.options.ridge == "gcv" else 0
        return ridge_flops(work.n_train + work.n_memory + work.n_forget, d, work.n_classes, evals)

    # -- the statistics' layout ---------------------------------------------------------------

    def spare(self, graph: ArchGraph, head: list[Tap]) -> list[Tap]:
        """The spare taps this strategy keeps statistics for on `graph` (none by default)."""
        sp = self.options.spare
        if sp == "none" or head_expansion(graph):  # the statistics of spare taps cannot be read through the ReLU
            return []
        return spare_taps(graph, self.options.levels[:1] if sp == "auto" else sp, head)

    def layout(self, graph: ArchGraph) -> list[Tap]:
        """The taps the statistics would cover on `graph`: its recorded layout when the head can be read
        off it, else the head's taps plus the spare ones. (Pricing reads its width.)"""
        head = head_taps(graph) if is_tapped(graph) else parse_taps(graph, self.options.taps, self.options.levels)
        recorded = from_meta(graph)
        if recorded is not None and _present(graph, recorded) and readable(graph, head, recorded):
            return recorded
        return head + self.spare(graph, head) if is_tapped(graph) else head

    def statistics_width(self, graph: ArchGraph) -> int:
        """Width of the features the statistics cover on `graph` (prepared for this strategy)."""
        return layout_width(graph, self.layout(graph))

    def spare_growths(self, graph: ArchGraph) -> list[Tap]:
        """Taps of `graph`'s layout that the head does not read yet: `add_tap` there keeps the
        statistics exact (the search tries these first)."""
        if not is_tapped(graph):
            return []
        read = {t.node for t in head_taps(graph)}
        return [t for t in self.layout(graph) if t.node not in read]

    def _kept_layout(self, ctx: Context, head: list[Tap], info: dict[str, Any]) -> list[Tap] | None:
        """The layout of the statistics in hand if they still describe `ctx.graph`'s features and the
        head can be read off them; None when they must be rebuilt (or there are none)."""
        graph = ctx.graph
        if self.head_.gram_ is None:
            return None
        stats_graph = ctx.stats_graph if ctx.backbone_changed else graph
        layout = from_meta(graph)
        if layout is None and stats_graph is not None and stats_graph.head is not None:
            layout = head_taps(stats_graph)  # a version saved before layouts were recorded: the head's taps
        if layout is None or stats_graph is None or not _present(graph, layout) \
                or layout_width(graph, layout) != self.head_.n_features_in_:
            return None
        if ctx.backbone_changed:
            same = _same_features(stats_graph, graph, layout, ctx, self.options.batch_size)
            info["statistics_kept"] = same
            if not same:
                return None
        if not readable(graph, head, layout) or (head_expansion(graph) and layout != head):
            # the head reads a tap the statistics never covered, or random features of taps they covered
            info["statistics_kept"] = False
            return None
        return layout

    def _head_view(self, mapping: Any, ctx: Context) -> RidgeHead:
        """A RidgeHead over the head's own features (the layout's statistics mapped, or the same object)."""
        if mapping is None:
            return self.head_
        view = RidgeHead(self.head_.ridge, device=self.head_.device)
        view.gram_, view.xty_ = apply_map(mapping, self.head_.gram_, self.head_.xty_)
        nnz, (d_layout, c) = mapping._nnz(), self.head_.xty_.shape  # sparse products: 2 FLOPs per nonzero term
        ctx.meter.add_flops(2 * nnz * (d_layout + view.gram_.shape[0] + c))
        view.n_samples_, view.n_features_in_ = self.head_.n_samples_, view.gram_.shape[0] - 1
        return view

    def _calibrate(self, weight: Tensor, bias: Tensor, feats: Tensor, ctx: Context, kept: bool = False) -> float:
        """Softmax temperature for the ridge outputs (which live on a 0..1 one-hot scale).

        The Linear holds `scale` × the ridge solution (same argmax): `scale` minimises the
        negative log-likelihood on the increment plus the memory's stored features, so that
        `predict` returns usable probabilities. Recorded in `graph.meta["head_scale"]`. The stored
        features serve wherever they still hold: the backbone is the one they came from, or a changed
        one (`kept`) was checked to compute the same features (so such a graph gets the fast path's head,
        its temperature included).
        """
        x, y = feats, torch.as_tensor(np.asarray(ctx.labels), dtype=torch.int64)
        mem = ctx.memory
        if mem is not None and len(mem) and mem.features is not None and mem.features.shape[1] == x.shape[1] \
                and (kept or not ctx.backbone_changed):
            x = torch.cat([x, torch.from_numpy(mem.features).to(x.dtype)])
            y = torch.cat([y, torch.as_tensor(mem.labels, dtype=torch.int64)])
        z = x.to(weight.device, torch.float64) @ weight.T + bias
        y = y.to(weight.device)
        ctx.meter.add_flops(matmul_flops(x.shape[0], x.shape[1], weight.shape[0]))
        return calibrate_scale(z, y)

    # -- pieces -------------------------------------------------------------------------------

    def _fit_expansion(self, graph: ArchGraph, head: list[Tap], ctx: Context) -> ArchGraph:
        """`graph` with its random features' standardisation fitted, if it has an unfitted one: the
        mean and standard deviation of each tapped feature on up to STANDARDISE_IMAGES images of this
        increment, spread over it (a forward of those images up to the taps, charged to the meter).
        Statistics in hand were summed through the node as it is, so then it is only marked fitted."""
        rf = head_expansion(graph)
        if rf is None or graph.attrs(rf).get("fitted"):
            return graph
        if self.head_.gram_ is not None:
            out = graph.copy()
            out.node(rf)["attrs"] = {**graph.attrs(rf), "fitted": True}
            return out
        net = tap_graph(graph, head).to_module().eval()
        fpi = forward_flops_per_image(net, tuple(graph.input_shape), features_only=True)
        idx = np.unique(np.linspace(0, len(ctx.images) - 1, min(len(ctx.images), STANDARDISE_IMAGES)).astype(int))
        x = run_batches(net, ctx.images[idx], ctx.preprocess, _features, ctx.meter, self.options.batch_size, fpi,
                        False, device=ctx.device).double()
        mean, scale = standardisation(x)
        out = graph.copy()
        out.set_params(rf, feature_mean=mean.float(), feature_scale=scale.float())
        out.node(rf)["attrs"] = {**graph.attrs(rf), "fitted": True}
        return out

    def _absorb(self, feats: Tensor, labels: Any, n_classes: int, ctx: Context, sign: int = 1) -> None:
        """Add (or, sign=-1, take out) a batch of the ridge statistics; matmuls counted by torch's FLOP counter."""
        labels = torch.as_tensor(np.array(labels), dtype=torch.int64)  # a copy: the source may be read-only
        with FlopCounterMode(display=False) as counter:
            self.head_.partial_fit(feats, labels, n_classes, sign=sign)
        ctx.meter.add_flops(int(counter.get_total_flops()))

    def _choose_ridge(self, view: RidgeHead, ctx: Context, fresh: bool) -> float:
        """λ for the head: fixed, or by GCV walking from the last λ (statistics rebuilt: from scratch)."""
        if self.options.ridge != "gcv":
            self.head_.ridge = view.ridge = float(self.options.ridge)
            return view.ridge
        lam, flops = view.gcv_walk(None if fresh or self.lambda_ is None else self.lambda_)
        ctx.meter.add_flops(flops)
        self.lambda_ = self.head_.ridge = view.ridge = lam
        return lam

    # -- state --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Tensor]:
        sd = tensor_state("head", self.head_.state_dict())
        sd["ridge"] = torch.tensor([self.head_.ridge], dtype=torch.float64)
        return sd

    def load_state_dict(self, state: Mapping[str, Tensor]) -> Evo:
        self.head_ = RidgeHead(float(state["ridge"][0]) if "ridge" in state else 1.0)
        self.head_.load_state_dict(sub_state("head", state))
        self.lambda_ = float(state["ridge"][0]) if "ridge" in state and self.options.ridge == "gcv" else None
        return self


def _features(net: torch.nn.Module, x: Tensor) -> Tensor:
    return net.forward_features(x)


VERIFY_IMAGES = 64  # exemplars on which old and new features are compared after growth
STANDARDISE_IMAGES = 512  # images of the first increment that fit the random features' standardisation


def _present(graph: ArchGraph, layout: list[Tap]) -> bool:
    return all(t.node in graph for t in layout)


def _same_features(old: ArchGraph, new: ArchGraph, layout: list[Tap], ctx: Context, batch_size: int) -> bool:
    """Whether `new` computes the layout's features as `old` did, on up to VERIFY_IMAGES exemplars.
    Without exemplars nothing can be checked (False)."""
    mem = ctx.memory
    if mem is None or not len(mem):
        return False
    return features_agree(old, new, layout, mem.images[:VERIFY_IMAGES], ctx.preprocess, ctx.meter, batch_size,
                          ctx.device)


def features_agree(old: ArchGraph, new: ArchGraph, layout: list[Tap], images: np.ndarray, preprocess: Preprocess,
                   meter: CostMeter | None = None, batch_size: int = 256, device: str | torch.device = "cpu") -> bool:
    """Whether `new` computes the layout's features as `old` does on `images` (to 1e-4 of their scale).

    Function-preserving growth that leaves these blocks alone agrees to float rounding; a widened
    tapped block or a fine-tuned backbone does not. The forwards are charged to `meter`."""
    if not len(images) or any(t.node not in old or t.node not in new or old.shape(t.node) != new.shape(t.node)
                              for t in layout):
        return False
    outs = []
    for g in (old, new):  # the head's own input where the layout is it: random features of the taps included
        net = (g if is_tapped(g) and list(layout) == head_taps(g) else tap_graph(g, layout)).to_module().eval()
        fpi = forward_flops_per_image(net, tuple(g.input_shape), features_only=True)
        outs.append(run_batches(net, images, preprocess, _features, meter, batch_size, fpi, False,
                                device=torch.device(device)))
    scale = max(1.0, float(outs[0].abs().max()))
    return bool((outs[0] - outs[1]).abs().max() <= 1e-4 * scale)


def calibrate_scale(logits: Tensor, labels: Tensor, grid: Sequence[float] | None = None) -> float:
    """The factor s (from a log grid, 0.1..1000) minimising the mean NLL of softmax(s·logits)."""
    grid = np.logspace(-1, 3, 49) if grid is None else grid
    nll = [float(torch.nn.functional.cross_entropy(s * logits, labels)) for s in grid]
    return float(grid[int(np.argmin(nll))])
