"""Multi-layer features for the closed-form head, built into the graph itself.

Frozen ImageNet features pooled at the very end of a network are too specific for data such as
Fashion-MNIST (a ridge head on Lite0's pooled 1280-d vector: 86%). Mid-level block outputs,
average-pooled to small spatial grids, carry much more (see BENCHMARKS.md, "Incremental
learning"). `tap_graph` rewires a graph so that its final Linear reads the concatenation of such
taps: `tap → adaptiveavgpool2d(k) → flatten → cat → head`. Nodes no longer needed by the output
are pruned, so the network also stops early: a version is always one graph, and
`EvoNet.forward_features` returns exactly the features the ridge statistics were built from.

`auto_taps` picks, by default, the last block output at stride 8 and at stride 16, each pooled to
4×4: in the experiment that chose the method (BENCHMARKS.md), the most accurate taps whose
statistics keep an increment under 10% of joint retraining; pooling stride 8 to 8×8 instead adds
about half a point of accuracy for twice the statistics cost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import torch

from evo.errors import ConfigError, GraphError
from evo.graph.archgraph import ArchGraph

DEFAULT_LEVELS: tuple[tuple[int, int], ...] = ((8, 4), (16, 4))  # (stride, pooled grid side)
TAP_SOURCE = "evo_taps"


@dataclass(frozen=True)
class Tap:
    """A node whose output feeds the head, average-pooled to `grid`×`grid` (1 = global average)."""

    node: str
    grid: int = 1

    def to_dict(self) -> dict[str, object]:
        return {"node": self.node, "grid": self.grid}


def cut_nodes(graph: ArchGraph, sink: str | None = None) -> list[str]:
    """Nodes every input→output path (input→`sink` path, sink included) passes through: the block
    boundaries, in topological order."""
    idom = nx.immediate_dominators(graph.g, graph.input)
    cuts, n = ([sink] if sink else []), sink or graph.output
    while n != graph.input:
        n = idom[n]
        cuts.append(n)
    order = {n: i for i, n in enumerate(graph.nodes())}
    return sorted((c for c in cuts if c != graph.input), key=order.__getitem__)


def block_outputs(graph: ArchGraph, sink: str | None = None) -> list[str]:
    """For each backbone block (`evo.learn.train.blocks`), the last cut node before the next block
    (cut nodes of the paths to `sink` when given, else to the output)."""
    from evo.learn.train import blocks

    order = {n: i for i, n in enumerate(graph.nodes())}
    cuts = cut_nodes(graph, sink)
    groups = blocks(graph)
    outs = []
    for i, (_, names) in enumerate(groups):
        start = max(order[n] for n in names)
        stop = min(order[n] for n in groups[i + 1][1]) if i + 1 < len(groups) else len(order)
        inside = [c for c in cuts if start <= order[c] < stop]
        inside = [c for c in inside if c not in (graph.head, graph.output)]
        if inside and inside[-1] not in outs:
            outs.append(inside[-1])
    return outs


def auto_taps(graph: ArchGraph, levels: Sequence[tuple[int, int]] = DEFAULT_LEVELS) -> list[Tap]:
    """The last block output at each (stride, grid) level of `levels`.

    A network too shallow for those strides gets its two coarsest spatial levels (side >= 2)
    pooled to at most 4×4; one without spatial block outputs gets the head's current input.
    """
    _, height, _ = _chw(graph, graph.input)
    outs = [n for n in block_outputs(graph) if len(graph.shape(n)) == 3]
    taps = []
    for stride, grid in levels:
        side = math.ceil(height / stride)
        at = [n for n in outs if graph.shape(n)[1] == side]
        if at:
            taps.append(Tap(at[-1], min(grid, side)))
    if not taps:
        sides = sorted({graph.shape(n)[1] for n in outs if graph.shape(n)[1] >= 2})[:2]
        for side in sorted(sides, reverse=True):
            taps.append(Tap([n for n in outs if graph.shape(n)[1] == side][-1], min(4, side)))
    return taps or [Tap(graph.features, 1)]


def _chw(graph: ArchGraph, node: str) -> tuple[int, int, int]:
    shape = graph.shape(node)
    if len(shape) != 3:
        raise ConfigError(f"node {node!r} has shape {shape}; expected (channels, height, width)")
    return shape  # type: ignore[return-value]


def parse_taps(graph: ArchGraph, taps: str | Sequence[Tap | tuple[str, int] | str],
               levels: Sequence[tuple[int, int]] = DEFAULT_LEVELS) -> list[Tap]:
    """'auto' (`auto_taps` at `levels`), 'features' (the head's current input), or a list of
    Tap / (node, grid) / node names."""
    if taps == "auto":
        return auto_taps(graph, levels)
    if taps == "features":
        return [Tap(graph.features, 1)]
    if isinstance(taps, str) or not isinstance(taps, Sequence) or not taps:
        raise ConfigError(f"taps must be 'auto', 'features' or a non-empty list of (node, grid); got {taps!r}")
    out = []
    for t in taps:
        tap = t if isinstance(t, Tap) else Tap(t) if isinstance(t, str) else Tap(*t)
        if tap.node not in graph:
            raise ConfigError(f"tap node {tap.node!r} is not in the graph; pick one of its nodes, e.g. "
                              f"{block_outputs(graph)[-3:]}")
        if isinstance(tap.grid, bool) or not isinstance(tap.grid, int) or tap.grid < 1:
            raise ConfigError(f"tap grid must be an int >= 1; got {tap.grid!r} for {tap.node!r}")
        out.append(tap)
    return out


def is_tap_node(graph: ArchGraph, n: str) -> bool:
    return graph.node(n)["source"].startswith(TAP_SOURCE)


def backbone_outputs(graph: ArchGraph) -> list[str]:
    """`block_outputs` of the backbone alone: tap branches removed, so a tap does not hide the
    block boundaries after it (with a branch around them they are no longer cut nodes)."""
    head = graph.head
    if head is None:
        return block_outputs(graph)
    h = graph.copy()
    for n in [n for n in h.nodes() if is_tap_node(h, n)]:
        h.remove_node(n)
    sinks = [n for n in h.nodes() if n not in (head, h.output) and h.op(n) != "input"
             and not [c for c in h.consumers(n) if c != head]]
    if len(sinks) != 1:
        return block_outputs(graph)
    return block_outputs(h, sinks[0])


def is_tapped(graph: ArchGraph) -> bool:
    """Whether `tap_graph` already rewired this graph's head input."""
    return graph.head is not None and any(is_tap_node(graph, n) for n in nx.ancestors(graph.g, graph.head))


def tap_graph(graph: ArchGraph, taps: Sequence[Tap]) -> ArchGraph:
    """A copy whose head reads the pooled, concatenated `taps`; the head's weights become zeros.

    The head keeps its node name and classes (its rows are refitted by the caller). Nodes that no
    longer lead to the output are removed, so the compiled network stops after the deepest tap.
    """
    head = graph.head
    if head is None:
        raise GraphError("tap_graph needs a Linear head feeding the output; add a final nn.Linear")
    if not taps:
        raise ConfigError("tap_graph needs at least one tap")
    g = graph.copy()
    g.g.remove_edge(g.inputs_of(head)[0], head)
    width = sum(_tap_width(g, tap) for tap in taps)
    parts = [pooled_tap(g, tap, i) for i, tap in enumerate(taps)]
    if len(parts) == 1:
        src = parts[0]
    else:
        src = g.add_node(g.fresh_name("taps_cat"), "cat", {"dim": 1}, source=f"{TAP_SOURCE}.cat")
        for i, p in enumerate(parts):
            g.add_edge(p, src, index=i)
    out = g.attrs(head)["out_features"]
    g.node(head)["attrs"] = {**g.attrs(head), "in_features": width, "bias": True}
    g.node(head)["params"] = {"weight": torch.zeros(out, width), "bias": torch.zeros(out)}
    g.add_edge(src, head)
    _prune(g)
    return g.validate()


def _tap_width(g: ArchGraph, tap: Tap) -> int:
    shape = g.shape(tap.node)
    return shape[0] if len(shape) == 1 else shape[0] * tap.grid * tap.grid


def pooled_tap(g: ArchGraph, tap: Tap, i: int) -> str:
    """Add `tap.node → adaptiveavgpool2d(grid) → flatten` to `g` (the i-th tap); returns the flat node."""
    shape = g.shape(tap.node)
    if len(shape) == 1:
        return tap.node
    if len(shape) != 3:
        raise ConfigError(f"tap {tap.node!r} has shape {shape}; taps must be (C, H, W) maps or flat vectors")
    pool = g.add_node(g.fresh_name(f"tap{i}_pool"), "adaptiveavgpool2d", {"output_size": [tap.grid, tap.grid]},
                      source=f"{TAP_SOURCE}.{i}.pool")
    g.add_edge(tap.node, pool)
    flat = g.add_node(g.fresh_name(f"tap{i}_flatten"), "flatten", {"start_dim": 1, "end_dim": -1},
                      source=f"{TAP_SOURCE}.{i}.flatten")
    g.add_edge(pool, flat)
    return flat


def _prune(g: ArchGraph) -> None:
    keep = nx.ancestors(g.g, g.output) | {g.output}
    for n in [n for n in g.nodes() if n not in keep]:
        if g.op(n) == "input":
            continue
        g.remove_node(n)
