"""widen: Net2WiderNet over a whole channel group (function-preserving).

A site is a *channel group*: every tensor whose channel dimension is tied index-for-index to the others
through residual adds, channel-wise multiplies (squeeze-excitation gates) and the channel-preserving
layers between them (see evo/ops/_channels.py). It is named by its first producer in topological order:
`{"group": "<conv or linear node>"}`; naming any other producer of the group is accepted and canonicalised.

Widening from C to C' units draws a unit mapping g (g[j] = j for j < C; the extra units are copies of
old units drawn as seeded random permutations, so copies spread evenly) and then:
  * every producer of the group (conv groups=1, linear): output rows (and bias) replicated by g;
  * every batch norm on the group: weight, bias, running mean and variance replicated by g, so copies
    stay identical in train mode too (same batch statistics);
  * every depthwise conv on the group: filters replicated, in/out channels and groups grown;
  * every consumer (conv groups=1, linear; also through a concat, or after a flatten where each channel
    is a block of H*W features): input columns replicated by g and split among the copies of each unit
    with ratios that sum to 1, so the function is unchanged.

`noise` breaks symmetry without losing exactness: instead of the equal split 1/count, each consumer
weight element of a replicated unit gets ratio exp(noise*z)/Σ_copies exp(noise*z), z ~ N(0, 1) seeded.
The copies still receive the same inputs and their contributions still sum to the original weight, so
the child computes the same function (up to float rounding), but the copies now get different gradients.
noise=0 gives the classic equal split.

`init="fresh"` grows new features instead of copies (the zero-outgoing growth of GradMax, Evci et al.
2022, and Firefly, Wu et al. 2020). Each new unit's producer rows are drawn at random: normal, with the
std of the producer's existing weights (He-normal by fan-in where those are all equal, e.g. a zero
branch from `add_branch`), bias 0. Its batch-norm parameters and running statistics, and its depthwise
filters, are copied from a source unit as with `copy`: per-channel layers cannot mix units, so this
keeps exactness in train mode, and the running statistics catch up as the net trains. Every consumer's
columns for the new units are zero while the old columns keep their weights. The function is exactly
the parent's (the new units are multiplied by zero), and the copies' symmetry never arises: Net2Wider
copies compute the same feature until training pulls them apart, which a few epochs on a small net do
not do (issue 14's capacity runs). The first gradient step moves the zero columns, and from then on the
new units learn. `noise` only splits copies' columns, so it has no effect with `fresh`.

Groups that cannot be widened exactly (reaching the input or the logits, read by a grouped conv,
reduced or broadcast over channels, a concat tied to a producer) are not sites; `evo.ops.apply` names
the reason when asked for one. Node and edge shapes are updated directly from the channel layouts (the
base's validate re-infers them all).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Literal

import torch

from evo.errors import ConfigError, InvalidSiteError
from evo.graph.archgraph import ArchGraph
from evo.ops._channels import ChannelSpaces
from evo.ops._util import check_seed
from evo.ops.base import GrowthOp, Site, register

INITS = ("copy", "fresh")  # how new units start: Net2Wider copies, or random rows with zero outgoing weights


@register
class Widen(GrowthOp):
    name = "widen"
    defaults = {"factor": 1.5, "new_width": None, "noise": 0.0, "seed": 0, "init": "copy"}

    def sites(self, graph: ArchGraph) -> list[Site]:
        return [{"group": prods[0]} for prods in ChannelSpaces(graph).groups().values()]

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("factor") is not None and params.get("new_width") is not None:
            raise ConfigError("widen takes factor or new_width, not both; "
                              f"got factor={params['factor']!r} and new_width={params['new_width']!r}")
        merged = super().check_params(params)
        f = merged["factor"]
        if not (f is None and merged["new_width"] is not None) and (not _real(f) or not math.isfinite(f) or f <= 1):
            raise ConfigError(f"widen factor must be a number > 1 (new width = ceil(old width * factor)), got {f!r}")
        w = merged["new_width"]
        if w is not None and (not _int(w) or w < 2):
            raise ConfigError(f"widen new_width must be an integer larger than the group's current width, got {w!r}")
        noise = merged["noise"]
        if not _real(noise) or not math.isfinite(noise) or noise < 0:
            raise ConfigError(f"widen noise must be a number >= 0 (0 = equal split among copies), got {noise!r}")
        if merged["init"] not in INITS:
            raise ConfigError(f"widen init must be one of {list(INITS)} (copy: Net2Wider copies of old units; fresh: "
                              f"new random units whose outputs start at weight 0), got {merged['init']!r}")
        check_seed(merged["seed"])
        return merged

    def check_site(self, graph: ArchGraph, site: Site) -> Site:
        usage = "list valid sites with evo.ops.sites(graph, 'widen')"
        if not isinstance(site, dict) or set(site) != {"group"} or not isinstance(site["group"], str):
            raise InvalidSiteError(f"a widen site is {{'group': <conv or linear node>}}, got {site!r}; {usage}")
        name = site["group"]
        if name not in graph:
            raise InvalidSiteError(f"widen site names node {name!r}, which is not in the graph; {usage}")
        cs = ChannelSpaces(graph)
        if name not in cs.producers:
            raise InvalidSiteError(f"widen site node {name!r} ({graph.op(name)}) does not start a channel group; "
                                   f"name a conv with groups=1 or a linear; {usage}")
        root = cs.find(cs.producers[name])
        why = cs.spoiled(root)
        if why:
            raise InvalidSiteError(f"the channel group of {name!r} cannot be widened exactly: {why[0]}; {usage}")
        return {"group": cs.groups()[root][0]}

    def grow(self, graph: ArchGraph, site: Site, factor: float = 1.5, new_width: int | None = None,
             noise: float = 0.0, seed: int = 0, init: Literal["copy", "fresh"] = "copy") -> None:
        cs = ChannelSpaces(graph)
        root = cs.find(cs.producers[site["group"]])
        old = cs.width(root)
        new = new_width if new_width is not None else max(math.ceil(round(old * factor, 9)), old + 1)
        if new <= old:
            raise ConfigError(f"widen new_width must be larger than the group's current width {old} "
                              f"(group {site['group']!r}), got {new}")
        gen = torch.Generator().manual_seed(int(seed))
        g = _unit_map(old, new, gen)
        for n in cs.order:
            op = graph.op(n)
            if op not in ("conv2d", "linear", "batchnorm2d", "batchnorm1d"):
                continue
            attrs, params = graph.attrs(n), dict(graph.params(n))
            x = cs.layout[graph.inputs_of(n)[0]]
            cols = cs.expand(x, root, g) if cs.touches(x, root) else None
            if op.startswith("batchnorm"):
                if cols is not None:
                    for k in ("weight", "bias", "running_mean", "running_var"):
                        params[k] = params[k].index_select(0, cols)
                    attrs["num_features"] = len(cols)
            elif n in cs.channelwise:
                if cols is not None:
                    params = {k: t.index_select(0, cols) for k, t in params.items()}
                    attrs["in_channels"] = attrs["out_channels"] = attrs["groups"] = len(cols)
            else:
                out_key, in_key = ("out_channels", "in_channels") if op == "conv2d" else ("out_features", "in_features")
                if n in cs.producers and cs.find(cs.producers[n]) == root:
                    params = {k: t.index_select(0, g) for k, t in params.items()}
                    if init == "fresh":
                        params = _fresh_rows(params, old, gen)
                    attrs[out_key] = new
                if cols is not None:
                    params["weight"] = (_zero_new_columns(params["weight"], cols, cs.new_units(x, root, g, old))
                                        if init == "fresh" else _split_columns(params["weight"], cols, noise, gen))
                    attrs[in_key] = len(cols)
            graph.node(n)["params"] = params
        _update_shapes(graph, cs, root, g)


def _update_shapes(graph: ArchGraph, cs: ChannelSpaces, root: int, g: torch.Tensor) -> None:
    """Set node and edge shapes of the widened graph directly (what infer_shapes would give, without running
    every node on the meta device again; the base's validate re-infers them anyway)."""
    for n in cs.order:
        lay = cs.layout[n]
        if cs.touches(lay, root):
            shape = graph.node(n)["shape"]
            graph.node(n)["shape"] = (len(cs.expand(lay, root, g)), *shape[1:])
    for u, _v, e in graph.g.edges(data=True):
        e["shape"] = graph.node(u)["shape"]


def _unit_map(old: int, new: int, gen: torch.Generator) -> torch.Tensor:
    """g: new unit -> old unit; identity on the first `old`, then copies drawn by seeded random permutations."""
    extra = new - old
    perms = [torch.randperm(old, generator=gen) for _ in range(-(-extra // old))]
    return torch.cat([torch.arange(old), *perms])[:new]


def _fresh_rows(params: dict[str, torch.Tensor], old: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A producer's rows from `old` on drawn afresh: weights normal with the std of the existing rows
    (the layer's own scale, so the new features are as strong as the old), bias 0. Where the existing
    weights carry no scale (all equal, e.g. a zero-initialised branch), He-normal by fan-in."""
    out = dict(params)
    w = params["weight"]
    std = float(w[:old].to(torch.float64).std()) if w[:old].numel() > 1 else 0.0
    if not std > 0:  # 0 or nan
        std = math.sqrt(2.0 / max(1, math.prod(w.shape[1:])))
    fresh = torch.randn((w.shape[0] - old, *w.shape[1:]), generator=gen, dtype=torch.float64) * std
    out["weight"] = torch.cat([w[:old], fresh.to(w.dtype)])
    if params.get("bias") is not None:
        b = params["bias"]
        out["bias"] = torch.cat([b[:old], torch.zeros(b.shape[0] - old, dtype=b.dtype)])
    return out


def _zero_new_columns(w: torch.Tensor, cols: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Input columns replicated by `cols`, the old ones unchanged and the new units' set to zero."""
    wide = w.index_select(1, cols)  # a copy
    wide[:, new] = 0
    return wide


def _split_columns(w: torch.Tensor, cols: torch.Tensor, noise: float, gen: torch.Generator) -> torch.Tensor:
    """Replicate input columns by `cols` and split each old column among its copies (ratios summing to 1)."""
    wide = w.index_select(1, cols)
    if noise == 0:  # equal split: each copy of an old unit gets 1/count of its column
        count = torch.bincount(cols, minlength=w.shape[1]).index_select(0, cols).to(w.dtype)
        return wide / count.view(1, -1, *([1] * (w.dim() - 2)))
    e = torch.exp(noise * torch.randn(wide.shape, generator=gen, dtype=torch.float64))
    total = torch.zeros(w.shape, dtype=torch.float64).index_add_(1, cols, e)
    ratio = e / total.index_select(1, cols)
    return (wide.to(torch.float64) * ratio).to(w.dtype)


def _real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)
