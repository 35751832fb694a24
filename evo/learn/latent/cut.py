"""The cut: where the frozen part of the network ends and the evolving part begins.

`split(graph, cut)` gives two graphs: `below` (input → cut, its output the cut's activation) and
`above` (the cut node turned into the input → the head, with the same node names, so weights
trained above move back into the full graph by name). Everything the head reads must lie at or
above the cut, or the statistics could not be recomputed from the stored latents. Growth or
training below the cut changes every stored latent; `check_growth` refuses it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import networkx as nx
import torch

from evo.errors import ConfigError
from evo.graph.archgraph import ArchGraph
from evo.graph.taps import Tap, backbone_outputs
from evo.learn.latent.part import LatentError


def cut_node(graph: ArchGraph, cut: int | str) -> str:
    """The node a cut spec names: a stride → the last block output at that stride; a block output's name;
    or "input": the store keeps the (preprocessed) images themselves and nothing is frozen (a small
    network trained from scratch, where every layer must keep learning)."""
    if cut == "input":
        return graph.input
    outs = [n for n in backbone_outputs(graph) if len(graph.shape(n)) == 3]
    if isinstance(cut, str):
        if cut not in outs:
            raise ConfigError(f"latent cut {cut!r} is not a block output of the model; use a stride (e.g. 8) or "
                              f"one of {outs}")
        return cut
    side = math.ceil(graph.input_shape[1] / cut)
    at = [n for n in outs if graph.shape(n)[1] == side]
    if not at:
        sides = sorted({graph.input_shape[1] // graph.shape(n)[1] for n in outs})
        raise ConfigError(f"latent cut: the model has no block output at stride {cut}; its strides are {sides}")
    return at[-1]


def is_cut(graph: ArchGraph, node: str) -> bool:
    """Whether every input → output path passes through `node` (the input itself always is a cut)."""
    if node == graph.input:
        return True
    if node not in graph or node == graph.output:
        return False
    g = graph.g.copy()
    g.remove_node(node)
    return not nx.has_path(g, graph.input, graph.output)


def split(graph: ArchGraph, cut: str) -> tuple[ArchGraph, ArchGraph]:
    """(below, above): input → cut, and cut (as the input) → output."""
    if not is_cut(graph, cut):
        raise LatentError(f"latent cut {cut!r} does not separate the model's input from its output: a branch, "
                          "or a head tap below the cut, bypasses it; grow and tap above the cut only")
    below_nodes = nx.ancestors(graph.g, cut)
    below = graph.copy()
    for n in [n for n in below.nodes() if n not in below_nodes and n != cut]:
        below.remove_node(n)
    below.add_node(below.fresh_name("latent_out"), "output")
    below.add_edge(cut, below._single("output"))
    above = graph.copy()
    shape = list(graph.shape(cut))
    for n in below_nodes:
        above.remove_node(n)
    d = above.g.nodes[cut]
    d.update(op="input", attrs={"shape": shape}, params={})
    return below.validate(), above.validate()


def check_layout(graph: ArchGraph, cut: str, layout: list[Tap]) -> None:
    """Every tap the statistics cover must be computable from the cut's activation."""
    if cut in graph:
        below = nx.ancestors(graph.g, cut)
        bad = [t.node for t in layout if t.node in below]
    else:  # taps that read only layers below the cut leave the cut out of the tapped graph
        bad = [t.node for t in layout]
    if bad:
        raise ConfigError(f"the head reads {bad}, below the latent cut {cut!r}: its statistics could not be "
                          "recomputed from the stored latents; move the cut down (a smaller stride) or use "
                          "taps: features")


def merge_above(graph: ArchGraph, above: ArchGraph, skip: tuple[str, ...] = ()) -> ArchGraph:
    """`graph` with the tensors of every node of `above` (trained) copied in by name, but `skip`'s."""
    out = graph.copy()
    for n in above.nodes():
        if above.params(n) and n in out and n not in skip:
            out.node(n)["params"] = dict(above.params(n))
    return out


def same_below(a: ArchGraph, b: ArchGraph, cut: str) -> bool:
    """Whether two graphs compute the same function up to the cut (same nodes, attributes, tensors)."""
    if cut not in a or cut not in b:
        return False
    na, nb = nx.ancestors(a.g, cut) | {cut}, nx.ancestors(b.g, cut) | {cut}
    if na != nb:
        return False
    for n in na:
        if a.op(n) != b.op(n) or a.attrs(n) != b.attrs(n) or a.inputs_of(n) != b.inputs_of(n):
            return False
        pa, pb = a.params(n), b.params(n)
        if pa.keys() != pb.keys() or any(pa[k] is not pb[k] and not torch.equal(pa[k], pb[k]) for k in pa):
            return False
    return True


def sites_above(graph: ArchGraph, cut: str, op: str, sites: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The growth sites of `op` that leave the network below the cut alone, so a search never spends a
    trial on a candidate `check_growth` refuses: no site may name a node below the cut, and `widen` may
    not name the cut node itself when it is a conv or linear (its channels are the stored latents').
    A cheap screen by name (`scale_width` at the cut is fine: it skips groups tied across its site);
    `check_growth` still judges the grown graph."""
    below = nx.ancestors(graph.g, cut) if cut in graph else set()
    banned = below | {cut} if op == "widen" else below
    return [s for s in sites if not any(isinstance(v, str) and v in banned for v in s.values())]


def images_readable(source: Any) -> bool:
    """Whether a scenario's source can give its images again (a folder or manifest on disk)."""
    return isinstance(source, str) and Path(source).exists()


def check_growth(parent: ArchGraph, grown: ArchGraph, cut: str, source: Any) -> None:
    """Refuse growth that changes the network below the cut (or breaks the cut)."""
    if same_below(parent, grown, cut) and is_cut(grown, cut):
        return
    if not images_readable(source):
        raise LatentError(f"this growth changes (or reads) the network below the latent cut {cut!r}, so every stored latent "
                          f"would need its image again, and the source {source!r} cannot give them back (only a "
                          "folder or manifest of image files can); grow above the cut, or use latents: none")
    raise LatentError(f"this growth changes (or reads) the network below the latent cut {cut!r}; re-encoding the stored "
                      f"images of {source!r} at a new cut is not implemented yet; grow above the cut")
