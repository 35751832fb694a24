"""add_classes: grow the head (the graph's final Linear) by new class units; old logits are unchanged.

The new rows get weight 0 and bias `bias` (default -1e4), so every new logit is `bias` for every
input. With a very low bias each new logit stays below every old logit, so the argmax and the
softmax over the old classes are unchanged (exp(-1e4) underflows to 0 in float32). The old rows are
not touched, so the old logits are the same numbers up to the matrix-multiply kernel's reduction
order for the wider matrix (bit-identical on some CPUs; ~1e-8 apart on others).
These rows are a placeholder: learners re-initialise them before training, by imprinting (class
means of features) or the closed-form head, since a -1e4 bias would take many SGD steps to undo.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from evo.checks import check_int
from evo.errors import ConfigError, GraphError, InvalidSiteError
from evo.graph.archgraph import ArchGraph
from evo.ops.base import GrowthOp, Site, register


@register
class AddClasses(GrowthOp):
    """Append class units to the head. Site: `{"head": <the final Linear>}` (one site, or none).

    Params: `k` (how many, int >= 1) and/or `names` (new class names: unique strings not already in
    meta["classes"]); with only `k` the names are `class_<i>`, i the new logit's index (skipping
    names in use); with neither, one class is added. `bias` (float, default -1e4): the new rows' bias.
    A head built without a bias gets one (zero for the old rows), since the new rows need it.
    """

    name = "add_classes"
    defaults = {"k": None, "names": None, "bias": -1e4}

    def sites(self, graph: ArchGraph) -> list[Site]:
        head = graph.head
        return [{"head": head}] if head is not None else []

    def check_site(self, graph: ArchGraph, site: Site) -> Site:
        if graph.head is None:
            (src,) = graph.inputs_of(graph.output)
            raise InvalidSiteError(f"add_classes needs a Linear head feeding the output; this graph's output comes "
                                   f"from {src!r} ({graph.op(src)}). Add a final nn.Linear classifier to the model")
        return super().check_site(graph, site)

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        p = super().check_params(params)
        k, names, bias = p["k"], p["names"], p["bias"]
        if k is not None:
            check_int("k (number of new classes)", k)
        if names is not None:
            if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names:
                raise ConfigError(f"names must be a non-empty list of class names; got {names!r}")
            bad = [n for n in names if not isinstance(n, str) or not n]
            if bad:
                raise ConfigError(f"names must be non-empty strings; got {bad!r}")
            dup = sorted({n for n in names if list(names).count(n) > 1})
            if dup:
                raise ConfigError(f"names must be unique; {dup} appear more than once")
            if k is not None and k != len(names):
                raise ConfigError(f"k={k} but {len(names)} names were given; pass one, or make them agree")
            names = list(names)
            k = len(names)
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias):
            raise ConfigError(f"bias must be a finite float (default -1e4, far below any logit); got {bias!r}")
        return {**p, "k": k, "names": names, "bias": float(bias)}

    def grow(self, graph: ArchGraph, site: Site, k: int | None = None, names: list[str] | None = None,
             bias: float = -1e4) -> None:
        head = site["head"]
        attrs = graph.attrs(head)
        c = attrs["out_features"]
        old = graph.classes
        if old and len(old) != c:
            raise GraphError(f"meta['classes'] lists {len(old)} classes but the head {head!r} has {c} outputs; "
                             f"fix meta['classes'] before adding classes")
        if not old:
            old = [f"class_{i}" for i in range(c)]
        if names is None:
            names, i = [], c
            while len(names) < (k or 1):
                if f"class_{i}" not in old:
                    names.append(f"class_{i}")
                i += 1
        clash = sorted(set(names) & set(old))
        if clash:
            raise ConfigError(f"names {clash} are already classes of this model; pick new names "
                              f"(existing: {len(old)} classes, e.g. {old[:3]})")
        n = len(names)
        ps = graph.params(head)
        w = ps["weight"]
        new_w = torch.cat([w, torch.zeros(n, w.shape[1], dtype=w.dtype, device=w.device)])
        old_b = ps["bias"] if attrs.get("bias", True) else torch.zeros(c, dtype=w.dtype, device=w.device)
        new_b = torch.cat([old_b, torch.full((n,), bias, dtype=w.dtype, device=w.device)])
        graph.node(head)["attrs"] = {**attrs, "out_features": c + n, "bias": True}
        graph.node(head)["params"] = {**ps, "weight": new_w, "bias": new_b}
        graph.meta["classes"] = [*old, *names]
