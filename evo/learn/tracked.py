"""Which features the ridge statistics cover, and how the head's input is read off them.

The closed-form head keeps G = ΦᵀΦ and B = ΦᵀY over a list of taps, the *layout*. By default the
layout is exactly what the head reads. With spare taps it is wider: block outputs the head does not
read yet, whose statistics are accumulated alongside from the first increment on. Growing the head
onto a spare tap (`add_tap` at that block, at the spare grid or a divisor of it) then keeps every
statistic exact: the head's input is a fixed linear map of the layout (a column selection, or an
average of grid cells), so its G and B are M·G·Mᵀ and M·B over all the data ever seen, while a
tap without statistics could only be refit from the exemplar memory.

The layout travels in the graph's meta (`LAYOUT_KEY`), so a version records what its statistics mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from evo.errors import ConfigError
from evo.graph.archgraph import ArchGraph
from evo.graph.taps import EXPANSION, Tap, backbone_outputs, head_expansion, is_tap_node, tap_width

LAYOUT_KEY = "ridge_layout"


def head_taps(graph: ArchGraph) -> list[Tap]:
    """The taps the head reads, in column order (a head reading one flat vector: that node, grid 1)."""
    src = graph.inputs_of(graph.head)[0]
    if graph.op(src) == EXPANSION:  # random features of the taps: the head reads those taps too (first)
        src = graph.inputs_of(src)[0]
    parts = graph.inputs_of(src) if graph.op(src) == "cat" and is_tap_node(graph, src) else [src]
    taps = []
    for p in parts:
        pool = graph.inputs_of(p)[0] if graph.op(p) == "flatten" and is_tap_node(graph, p) else None
        if pool is not None and graph.op(pool) == "adaptiveavgpool2d":
            size = graph.attrs(pool)["output_size"]
            taps.append(Tap(graph.inputs_of(pool)[0], int(size[0] if isinstance(size, (list, tuple)) else size)))
        else:
            taps.append(Tap(p, 1))
    return taps


def spare_taps(graph: ArchGraph, levels: Sequence[tuple[int, int]], head: Sequence[Tap]) -> list[Tap]:
    """For each (stride, grid) level, the *first* block output at that stride (the head's default taps
    are the last ones), pooled to `grid`; blocks the head already reads are skipped."""
    _, height, _ = graph.shape(graph.input)
    read = {t.node for t in head}
    outs = [n for n in backbone_outputs(graph) if len(graph.shape(n)) == 3 and n not in read]
    spare = []
    for stride, grid in levels:
        side = math.ceil(height / stride)
        at = [n for n in outs if graph.shape(n)[1] == side]
        if at and all(t.node != at[0] for t in spare):
            spare.append(Tap(at[0], min(grid, side)))
    return spare


def layout_width(graph: ArchGraph, layout: Sequence[Tap]) -> int:
    """Columns of the features the statistics cover: the taps', plus the random features of a head that
    expands them when the layout is the head's own."""
    width = sum(tap_width(graph, t) for t in layout)
    rf = head_expansion(graph)
    return width + graph.attrs(rf)["out_features"] if rf and list(layout) == head_taps(graph) else width


def to_meta(layout: Sequence[Tap]) -> list[dict[str, object]]:
    return [t.to_dict() for t in layout]


def from_meta(graph: ArchGraph) -> list[Tap] | None:
    """The layout a graph's statistics were built over, if it records one."""
    raw = graph.meta.get(LAYOUT_KEY)
    if raw is None:
        return None
    if not isinstance(raw, list) or any(not isinstance(t, dict) or set(t) != {"node", "grid"} for t in raw):
        raise ConfigError(f"graph meta {LAYOUT_KEY!r} must be a list of {{node, grid}}; got {raw!r}")
    return [Tap(str(t["node"]), int(t["grid"])) for t in raw]


def head_map(graph: ArchGraph, head: Sequence[Tap], layout: Sequence[Tap]) -> Tensor | None:
    """The sparse (d_head+1) × (d_layout+1) matrix M with head features = M · layout features (the last
    row/column is the bias); None when the head reads the layout as is (M = I). Raises KeyError
    naming the first head tap that cannot be read off the layout."""
    if list(head) == list(layout):
        return None
    offsets, at = {}, 0
    for t in layout:
        offsets[t.node, t.grid] = at
        at += tap_width(graph, t)
    d_layout = at
    rows, cols, vals = [], [], []
    r = 0
    for t in head:
        shape = graph.shape(t.node)
        source = _source(offsets, t, shape)
        if source is None:
            raise KeyError(t)
        grid, start = source
        if len(shape) == 1 or grid == t.grid:
            width = tap_width(graph, t)
            rows += range(r, r + width)
            cols += range(start, start + width)
            vals += [1.0] * width
            r += width
            continue
        k = grid // t.grid  # each head cell averages k×k layout cells
        for c in range(shape[0]):
            for i in range(t.grid):
                for j in range(t.grid):
                    for a in range(k):
                        for b in range(k):
                            rows.append(r)
                            cols.append(start + c * grid * grid + (i * k + a) * grid + (j * k + b))
                            vals.append(1.0 / (k * k))
                    r += 1
    rows.append(r)
    cols.append(d_layout)
    vals.append(1.0)
    return torch.sparse_coo_tensor(torch.tensor([rows, cols]), torch.tensor(vals, dtype=torch.float64),
                                   (r + 1, d_layout + 1), check_invariants=True).coalesce()


def readable(graph: ArchGraph, head: Sequence[Tap], layout: Sequence[Tap]) -> bool:
    """Whether every head tap can be read off the layout exactly (without building the map)."""
    offsets = {(t.node, t.grid): 0 for t in layout}
    return all(_source(offsets, t, graph.shape(t.node)) is not None for t in head)


def _source(offsets: dict[tuple[str, int], int], tap: Tap, shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(layout grid, column offset) of a layout tap the head tap is an exact average of."""
    if len(shape) == 1:
        return next(((g, o) for (n, g), o in offsets.items() if n == tap.node), None)
    for (n, g), o in offsets.items():
        # adaptive pooling composes exactly when the grids nest and the map divides evenly
        if n == tap.node and g % tap.grid == 0 and shape[1] % g == 0 and shape[2] % g == 0:
            return g, o
    return None


def apply_map(m: Tensor | None, gram: Tensor, xty: Tensor) -> tuple[Tensor, Tensor]:
    """G and B of the head's features from the layout's: M·G·Mᵀ and M·B."""
    if m is None:
        return gram, xty
    m = m.to(gram.device)
    mg = torch.sparse.mm(m, gram)
    return torch.sparse.mm(m, mg.T.contiguous()), torch.sparse.mm(m, xty)


def map_features(m: Tensor | None, feats: Tensor) -> Tensor:
    """The head's features from the layout's features (n × d_layout, no bias column)."""
    if m is None:
        return feats
    m = m.to(feats.device)
    ones = torch.ones(feats.shape[0], 1, dtype=torch.float64, device=feats.device)
    out = torch.sparse.mm(m, torch.cat([feats.double(), ones], 1).T.contiguous()).T
    return out[:, :-1].to(feats.dtype).contiguous()
