"""Channel spaces: which tensors of an ArchGraph have their channel dimension (dim 1) tied index-for-index.

A *space* starts at every producer (a conv with groups=1 or a linear on a 2-D input) and at the graph
input. Channel-preserving nodes (batch norm, activations, pools, dropout, identity, spatial pad, mean
over non-channel dims, flatten, depthwise conv with multiplier 1) pass their input's layout through;
`add` and `mul` tie their inputs' spaces together (union-find); `cat` along dim 1 gives a *derived*
layout, a sequence of segments. A layout is a tuple of `(space, block)` segments, `block` being how many
contiguous features each channel occupies (1 on image tensors, H*W after flattening a C×H×W tensor), or
None when the channel dimension cannot be tracked (nothing downstream of it is widened).

A space is *spoiled* (never a widen site) when a use of it cannot be widened exactly: it reaches the
input or the output, a grouped conv reads or writes it, something reduces, pads or broadcasts over its
channels, or it is tied to channels laid out differently. Private to evo.ops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from evo.graph.archgraph import ArchGraph
from evo.graph.layers import is_depthwise

Segment = tuple[int, int]  # (space id, block: contiguous features per channel)
Layout = tuple[Segment, ...] | None

_ELEMENTWISE = {"relu", "relu6", "leakyrelu", "silu", "gelu", "hardswish", "hardsigmoid", "sigmoid", "dropout", "identity"}
_POOLS = {"maxpool2d", "avgpool2d", "adaptiveavgpool2d"}
_NORMS = {"batchnorm2d", "batchnorm1d"}


@dataclass
class Space:
    width: int
    origin: str  # the node that started it
    spoiled: list[str] = field(default_factory=list)  # why it cannot be widened (first reason reported)


class ChannelSpaces:
    """Union-find of channel spaces over a graph, with each node's output layout."""

    def __init__(self, graph: ArchGraph) -> None:
        self.graph = graph
        self.order = graph.nodes()
        self.spaces: list[Space] = []
        self._parent: list[int] = []
        self.layout: dict[str, Layout] = {}
        self.producers: dict[str, int] = {}  # producer node -> the space it starts
        self.channelwise: set[str] = set()  # depthwise convs acting on a tracked layout
        for n in self.order:
            self._visit(n)

    # ---- union-find ---------------------------------------------------------------------------
    def find(self, s: int) -> int:
        while self._parent[s] != s:
            self._parent[s] = self._parent[self._parent[s]]
            s = self._parent[s]
        return s

    def _new(self, width: int, origin: str, spoiled: str | None = None) -> int:
        self.spaces.append(Space(width, origin, [spoiled] if spoiled else []))
        self._parent.append(len(self._parent))
        return len(self._parent) - 1

    def _union(self, a: int, b: int, where: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.spaces[ra].width != self.spaces[rb].width:  # cannot happen in a shape-valid graph
            self._spoil_space(ra, f"{where!r} ties channels of different widths")
        lo, hi = min(ra, rb), max(ra, rb)
        self._parent[hi] = lo
        self.spaces[lo].spoiled += self.spaces[hi].spoiled

    def _spoil_space(self, s: int, why: str) -> None:
        self.spaces[self.find(s)].spoiled.append(why)

    def _spoil(self, layout: Layout, why: str) -> None:
        for s, _ in layout or ():
            self._spoil_space(s, why)

    # ---- queries ------------------------------------------------------------------------------
    def width(self, s: int) -> int:
        return self.spaces[s].width

    def size(self, layout: Layout) -> int:
        return sum(self.width(s) * b for s, b in layout or ())

    def spoiled(self, root: int) -> list[str]:
        return self.spaces[self.find(root)].spoiled

    def touches(self, layout: Layout, root: int) -> bool:
        return any(self.find(s) == root for s, _ in layout or ())

    def groups(self) -> dict[int, list[str]]:
        """Widenable roots -> their producers in topological order."""
        out: dict[int, list[str]] = {}
        for n in self.order:
            if n in self.producers:
                r = self.find(self.producers[n])
                if not self.spaces[r].spoiled:
                    out.setdefault(r, []).append(n)
        return out

    def expand(self, layout: Layout, root: int, mapping: torch.Tensor) -> torch.Tensor:
        """New feature index -> old feature index along dim 1 of a tensor with `layout`, `root` widened by `mapping`."""
        parts, off = [], 0
        for s, b in layout or ():
            w = self.width(s)
            if self.find(s) == root:
                idx = (mapping[:, None] * b + torch.arange(b)[None, :]).reshape(-1)
            else:
                idx = torch.arange(w * b)
            parts.append(idx + off)
            off += w * b
        return torch.cat(parts)

    def new_units(self, layout: Layout, root: int, mapping: torch.Tensor, old: int) -> torch.Tensor:
        """Which features along dim 1 of a tensor with `layout` belong to units of `root` beyond the first
        `old` once widened by `mapping` (a mask in `expand`'s order)."""
        parts = []
        for s, b in layout or ():
            if self.find(s) == root:
                parts.append((torch.arange(len(mapping)) >= old).repeat_interleave(b))
            else:
                parts.append(torch.zeros(self.width(s) * b, dtype=torch.bool))
        return torch.cat(parts)

    # ---- the pass -----------------------------------------------------------------------------
    def _visit(self, n: str) -> None:  # noqa: C901 - one branch per node kind
        g = self.graph
        op, a = g.op(n), g.attrs(n)
        ins = g.inputs_of(n)
        lays = [self.layout[p] for p in ins]
        shps = [g.shape(p) for p in ins]
        x, xs = (lays[0], shps[0]) if ins else (None, ())
        out: Layout = None
        if x is not None and self.size(x) != xs[0]:  # defensive: layouts must match the shapes
            self._spoil(x, f"evo lost track of the channels at {n!r}")
            x = None
        if op == "input":
            shape = g.shape(n)
            if shape:
                out = ((self._new(shape[0], n, f"it includes the graph input {n!r}"), 1),)
        elif op == "output":
            self._spoil(x, f"it reaches the graph output (the logits) through {ins[0]!r}")
        elif op == "conv2d":
            groups = a.get("groups", 1)
            if groups == 1:
                self.producers[n] = self._new(a["out_channels"], n)
                out = ((self.producers[n], 1),)
            elif is_depthwise(a):
                out = x
                if x is not None:
                    self.channelwise.add(n)
            else:
                why = f"conv {n!r} has groups={groups} and is not depthwise with channel multiplier 1"
                self._spoil(x, why)
                out = ((self._new(a["out_channels"], n, why), 1),)
        elif op == "linear":
            if len(xs) == 1:
                self.producers[n] = self._new(a["out_features"], n)
                out = ((self.producers[n], 1),)
            else:
                self._spoil(x, f"linear {n!r} acts on the last dimension of a {len(xs) + 1}-D tensor, not on channels")
        elif op in _NORMS or op in _ELEMENTWISE:
            out = x
        elif op in _POOLS:
            if len(xs) == 3:
                out = x
            else:
                self._spoil(x, f"{op} {n!r} pools a {len(xs) + 1}-D tensor")
        elif op == "pad":
            if len(a["pad"]) // 2 < len(xs):
                out = x
            else:
                self._spoil(x, f"pad {n!r} pads the channel dimension")
        elif op == "mean":
            nd = len(xs) + 1
            dims = {d % nd for d in a["dims"]}
            if dims & {0, 1}:
                self._spoil(x, f"mean {n!r} reduces over the channel dimension")
            else:
                out = x
        elif op == "flatten":
            nd = len(xs) + 1
            s, e = a.get("start_dim", 1) % nd, a.get("end_dim", -1) % nd
            if s >= 2 or e <= s:
                out = x
            elif s == 1 and x is not None:
                m = math.prod(xs[1:e])
                out = tuple((sp, b * m) for sp, b in x)
            else:
                self._spoil(x, f"flatten {n!r} merges the batch and channel dimensions")
        elif op in ("add", "mul"):
            out = self._tie(n, op, lays, shps)
        elif op == "cat":
            nd = len(xs) + 1
            if a.get("dim", 1) % nd == 1 and all(lay is not None for lay in lays):
                out = tuple(seg for lay in lays for seg in lay)  # type: ignore[union-attr]
            else:
                for lay in lays:
                    self._spoil(lay, f"cat {n!r} joins it along another dimension or with untracked channels")
        else:
            for lay in lays:
                self._spoil(lay, f"widen does not support node {n!r} of kind {op!r}")
        self.layout[n] = out

    def _tie(self, n: str, op: str, lays: list[Layout], shps: list[tuple[int, ...]]) -> Layout:
        """Elementwise join (with broadcasting): inputs of the full channel width are tied segment by segment."""
        out_c = self.graph.shape(n)[0] if self.graph.shape(n) else 0
        if len({len(s) for s in shps}) != 1:
            for lay in lays:
                self._spoil(lay, f"{op} {n!r} broadcasts tensors of different ranks")
            return None
        full: list[tuple[Segment, ...]] = []
        for lay, s in zip(lays, shps, strict=True):
            if s[0] != out_c:  # size-1 channel dim broadcast over the others: it must stay size 1
                self._spoil(lay, f"{op} {n!r} broadcasts it across channels")
            elif lay is None:
                for other in lays:
                    self._spoil(other, f"{op} {n!r} combines it with a tensor whose channels evo cannot track")
                return None
            else:
                full.append(lay)
        if not full:
            return None
        ref = full[0]
        for lay in full[1:]:
            same = len(lay) == len(ref) and all(  # type: ignore[arg-type]
                self.width(s1) == self.width(s2) and b1 == b2 for (s1, b1), (s2, b2) in zip(ref, lay, strict=True))  # type: ignore[arg-type]
            if same:
                for (s1, _), (s2, _) in zip(ref, lay, strict=True):  # type: ignore[arg-type]
                    self._union(s1, s2, n)
            else:
                for bad in (ref, lay):
                    self._spoil(bad, f"{op} {n!r} ties a concatenation to channels laid out differently")
        return ref
