"""add_tap: a new zero-initialised branch from a block output into the head's input.

The block's output map is average-pooled to `grid`×`grid`, flattened and concatenated to what the
final Linear reads; the Linear gains that many input columns, all zero, so every logit is unchanged
(up to the matrix-multiply kernel's reduction order over the longer rows). It is capacity for the
closed-form head: the ridge refit after growth gives the new columns weights, so the model can use
mid-level features it ignored before (BENCHMARKS.md, "Incremental learning", has the figures).
A gradient strategy trains the new columns like any head weight.

Sites are the backbone's block outputs (`evo.graph.taps.backbone_outputs`) with a spatial map
that the head does not already read, upstream of the head; none where the head reads random features
of its taps (`tap_graph(..., expand=)`): a tap added beside them would not feed their expansion.
"""

from __future__ import annotations

from typing import Any

import networkx as nx
import torch

from evo.errors import ConfigError
from evo.graph.archgraph import ArchGraph
from evo.graph.taps import Tap, backbone_outputs, head_expansion, is_tap_node, pooled_tap, tap_cat
from evo.ops.base import GrowthOp, Site, register


@register
class AddTap(GrowthOp):
    name = "add_tap"
    defaults = {"grid": 2}

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        p = super().check_params(params)
        if isinstance(p["grid"], bool) or not isinstance(p["grid"], int) or not 1 <= p["grid"] <= 8:
            raise ConfigError(f"add_tap grid must be an int in 1..8 (the pooled map's side); got {p['grid']!r}")
        return p

    def sites(self, graph: ArchGraph) -> list[Site]:
        head = graph.head
        if head is None or len(graph.shape(graph.inputs_of(head)[0])) != 1 or head_expansion(graph):
            return []  # a new tap beside random features of the others would not be one of their inputs
        upstream = nx.ancestors(graph.g, head)
        tapped = {n for n in upstream if any(is_tap_node(graph, c) and graph.op(c) == "adaptiveavgpool2d"
                                             for c in graph.consumers(n))}
        return [{"node": n} for n in backbone_outputs(graph)
                if n in upstream and n not in tapped and len(graph.shape(n)) == 3]

    def grow(self, graph: ArchGraph, site: Site, grid: int = 2) -> None:
        node, head = site["node"], graph.head
        grid = min(grid, graph.shape(node)[1])
        n_taps = sum(1 for n in graph.nodes() if is_tap_node(graph, n) and graph.op(n) == "adaptiveavgpool2d")
        flat = pooled_tap(graph, Tap(node, grid), n_taps)
        width = graph.shape(node)[0] * grid * grid
        src = graph.inputs_of(head)[0]
        if graph.op(src) == "cat" and is_tap_node(graph, src):
            graph.add_edge(flat, src, index=len(graph.inputs_of(src)))
        else:
            graph.g.remove_edge(src, head)
            cat = tap_cat(graph)
            graph.add_edge(src, cat, index=0)
            graph.add_edge(flat, cat, index=1)
            graph.add_edge(cat, head)
        w, attrs = graph.params(head)["weight"], graph.attrs(head)
        graph.node(head)["attrs"] = {**attrs, "in_features": attrs["in_features"] + width}
        graph.node(head)["params"] = {**graph.params(head),
                                      "weight": torch.cat([w, torch.zeros(w.shape[0], width, dtype=w.dtype)], 1)}
