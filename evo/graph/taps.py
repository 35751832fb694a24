"""Tap surgery: route block outputs, average-pooled to small grids, into the graph's final Linear.

`tap_graph` rewires a graph so that its head reads the concatenation of pooled taps:
`tap → adaptiveavgpool2d(k) → flatten → cat → head`; nodes no longer needed by the output are
pruned, so the compiled network stops after the deepest tap. Nodes that surgery adds carry the
node attribute `role="tap"` (saved in graph.json), which is how later surgery (`add_tap`) and the
learner recognise them. Graphs saved before roles existed are recognised by their source prefix
`evo_taps` when loaded (evo.graph.io).

Also here: the backbone's blocks (`blocks`, grouping parametric nodes by module path) and their
outputs (`block_outputs`, the last cut node of each block), which tap choice and training share.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import torch

from evo.errors import ConfigError, GraphError
from evo.graph.archgraph import ArchGraph

TAP_ROLE = "tap"
EXPANSION = "random_features"  # the node kind of a head's random ReLU expansion
LEGACY_TAP_SOURCE = "evo_taps"  # how graphs saved before node roles marked tap nodes


@dataclass(frozen=True)
class Tap:
    """A node whose output feeds the head, average-pooled to `grid`×`grid` (1 = global average)."""

    node: str
    grid: int = 1

    def to_dict(self) -> dict[str, object]:
        return {"node": self.node, "grid": self.grid}


# -- blocks ---------------------------------------------------------------------------------------


def _block_key(source: str) -> str:
    """`blocks.15.expand_conv` → `blocks.15`; `stem.0`, `stem_bn` → `stem`; `head_conv` → `head`."""
    parts = source.split(".")
    for i, p in enumerate(parts[:-1]):
        if re.fullmatch(r"\d+", p):
            return ".".join(parts[: i + 1])
    return parts[0].split("_")[0] or parts[0]


def blocks(graph: ArchGraph) -> list[tuple[str, list[str]]]:
    """The backbone's parametric blocks in topological order, as (key, node names), head excluded.

    A block groups the nodes whose module path shares a prefix up to its first numbered container
    (`blocks.15.*`), else the top-level module name up to its first underscore (`stem`, `stem_bn`
    → `stem`; `head_conv`, `head_bn` → `head`). Nodes added by growth operators keep their source,
    so they join the block they grew in.
    """
    order: list[str] = []
    members: dict[str, list[str]] = {}
    for n in graph.nodes():
        if n == graph.head or not graph.params(n) or is_tap_node(graph, n):
            continue
        key = _block_key(graph.node(n)["source"])
        if key not in members:
            order.append(key)
            members[key] = []
        members[key].append(n)
    return [(k, members[k]) for k in order]


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
    """For each backbone block (`blocks`), the last cut node before the next block (cut nodes of the
    paths to `sink` when given, else to the output)."""
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


# -- taps -----------------------------------------------------------------------------------------


def is_tap_node(graph: ArchGraph, n: str) -> bool:
    """Whether tap surgery added node `n` (its role is "tap")."""
    return graph.node(n).get("role") == TAP_ROLE


def is_tapped(graph: ArchGraph) -> bool:
    """Whether `tap_graph` already rewired this graph's head input."""
    return graph.head is not None and any(is_tap_node(graph, n) for n in nx.ancestors(graph.g, graph.head))


def tap_width(graph: ArchGraph, tap: Tap) -> int:
    """Columns a tap contributes to the head's input."""
    shape = graph.shape(tap.node)
    return shape[0] if len(shape) == 1 else shape[0] * tap.grid * tap.grid


def tap_graph(graph: ArchGraph, taps: Sequence[Tap], expand: int = 0, seed: int = 0) -> ArchGraph:
    """A copy whose head reads the pooled, concatenated `taps`; the head's weights become zeros.

    The head keeps its node name and classes (its rows are refitted by the caller). Nodes that no
    longer lead to the output are removed, so the compiled network stops after the deepest tap.
    `expand` > 0 puts a `random_features` node (role "tap") between the taps and the head: the head
    then reads the taps and `expand` random ReLU features of them (its standardisation is left to fit).
    """
    head = graph.head
    if head is None:
        raise GraphError("tap_graph needs a Linear head feeding the output; add a final nn.Linear")
    if not taps:
        raise ConfigError("tap_graph needs at least one tap")
    g = graph.copy()
    g.g.remove_edge(g.inputs_of(head)[0], head)
    width = sum(tap_width(g, tap) for tap in taps)
    parts = [pooled_tap(g, tap, i) for i, tap in enumerate(taps)]
    if len(parts) == 1:
        src = parts[0]
    else:
        src = tap_cat(g)
        for i, p in enumerate(parts):
            g.add_edge(p, src, index=i)
    if expand:
        src = expansion(g, src, width, expand, seed)
        width += expand
    out = g.attrs(head)["out_features"]
    g.node(head)["attrs"] = {**g.attrs(head), "in_features": width, "bias": True}
    g.node(head)["params"] = {"weight": torch.zeros(out, width), "bias": torch.zeros(out)}
    g.add_edge(src, head)
    prune(g)
    return g.validate()


def expansion(g: ArchGraph, src: str, width: int, expand: int, seed: int) -> str:
    """Add `src → random_features(expand)` to `g` (unfitted: attrs fitted=False); returns the new node."""
    from evo.checks import check_int

    check_int("random features (expand)", expand, 1)
    check_int("random features seed", seed, 0, 2**63)
    n = g.add_node(g.fresh_name("taps_random_features"), EXPANSION,
                   {"in_features": width, "out_features": expand, "seed": seed, "fitted": False},
                   source="taps.random_features", role=TAP_ROLE)
    g.node(n)["params"] = {"feature_mean": torch.zeros(width), "feature_scale": torch.ones(width)}
    g.add_edge(src, n)
    return n


def head_expansion(graph: ArchGraph) -> str | None:
    """The `random_features` node the head reads (`tap_graph(..., expand=)`), or None."""
    if graph.head is None:
        return None
    src = graph.inputs_of(graph.head)[0]
    return src if graph.op(src) == EXPANSION else None


def tap_cat(g: ArchGraph) -> str:
    """Add the `cat` node that joins taps in front of the head (no edges yet); returns its name."""
    return g.add_node(g.fresh_name("taps_cat"), "cat", {"dim": 1}, source="taps.cat", role=TAP_ROLE)


def pooled_tap(g: ArchGraph, tap: Tap, i: int) -> str:
    """Add `tap.node → adaptiveavgpool2d(grid) → flatten` to `g` (the i-th tap); returns the flat node."""
    shape = g.shape(tap.node)
    if len(shape) == 1:
        return tap.node
    if len(shape) != 3:
        raise ConfigError(f"tap {tap.node!r} has shape {shape}; taps must be (C, H, W) maps or flat vectors")
    pool = g.add_node(g.fresh_name(f"tap{i}_pool"), "adaptiveavgpool2d", {"output_size": [tap.grid, tap.grid]},
                      source=f"taps.{i}.pool", role=TAP_ROLE)
    g.add_edge(tap.node, pool)
    flat = g.add_node(g.fresh_name(f"tap{i}_flatten"), "flatten", {"start_dim": 1, "end_dim": -1},
                      source=f"taps.{i}.flatten", role=TAP_ROLE)
    g.add_edge(pool, flat)
    return flat


def prune(g: ArchGraph) -> None:
    """Remove (in place) every node that no longer leads to the output (the input stays)."""
    keep = nx.ancestors(g.g, g.output) | {g.output}
    for n in [n for n in g.nodes() if n not in keep]:
        if g.op(n) == "input":
            continue
        g.remove_node(n)
