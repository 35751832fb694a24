"""add_branch: add a new path from tensor `src` to tensor `dst` whose last layer starts at zero.

The child computes `dst_out + branch(src_out)` wherever the parent used `dst_out`. The branch ends in
a layer whose weight and bias are zero, so it outputs exactly 0 and adding 0 is the identity: the
child's function equals the parent's (bit for bit, up to the float addition of +0.0). The branch
can still learn: the gradient of the loss with respect to the zero layer's weight is the upstream
gradient times the branch's hidden activation, which is not zero because the layers before the
zero layer are randomly initialised. After the first update the zero layer is non-zero and the
gradient reaches the earlier branch layers too. (Zeroing every branch layer would freeze it at a
saddle point, which is why only the last one is zero.)

Kinds:
- `parallel`: conv k×k src→width (random, seeded) → BN → ReLU → conv 1×1 width→C_dst (zero).
  For vector tensors the convs are linears and the BN is BatchNorm1d.
- `skip`: one 1×1 conv (linear for vectors) src→C_dst, zero-initialised: a learnable shortcut.
  `width` and `kernel_size` do not apply to it.
"""

from __future__ import annotations

from typing import Any

import networkx as nx
import torch
from torch import nn

from evo.errors import ConfigError
from evo.graph.archgraph import ArchGraph
from evo.ops._util import check_odd_kernel, check_seed, fresh_params, param_dtype
from evo.ops.base import GrowthOp, Site, register

MAX_DISTANCE = 4  # edges from src to dst: keeps branches local and the site list moderate
KINDS_OF_BRANCH = ("parallel", "skip")
_UNIT_ENDS = {"relu", "relu6", "silu", "hardswish"}  # activations that end a conv/linear unit
_JOINS = {"add", "cat", "mul"}  # residual joins, concats, squeeze-excitation gates


def anchors(graph: ArchGraph) -> list[str]:
    """Tensors a branch may start or end at: the ends of computational units.

    A unit ends at an activation (not a sigmoid gate), a join (add, cat, mul), a batch norm that is
    not followed by an activation (a linear bottleneck, a residual's last BN), or a flatten/mean
    that turns feature maps into a vector.
    """
    return [n for n in graph.nodes() if _ends_unit(graph, n)]


def _ends_unit(graph: ArchGraph, n: str) -> bool:
    op = graph.op(n)
    if op in _UNIT_ENDS or op in _JOINS:
        return True
    if op in ("flatten", "mean"):
        return len(graph.shape(n)) == 1
    if op in ("batchnorm2d", "batchnorm1d"):
        return not any(graph.op(c) in _UNIT_ENDS for c in graph.consumers(n))
    return False


def _compatible(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return (len(a) == len(b) == 1) or (len(a) == len(b) == 3 and a[1:] == b[1:])


@register
class AddBranch(GrowthOp):
    """Add `branch(src)` to `dst`'s output through a new add node; the branch's last layer is zero.

    Sites: `{"src": a, "dst": b}` where a and b end computational units (see `anchors`), a is b or
    an ancestor of b at most MAX_DISTANCE edges up, both are feature maps of equal height and width
    (channels may differ) or both are vectors, a is not the input, and b is neither the output's
    producer (the head, or the logits) nor the output. Params: `kind` ("parallel" or "skip"),
    `width` (hidden channels of a parallel branch; None = dst's channels), `kernel_size` (odd; the
    first conv of a parallel branch), `seed` (the first layer's random init).
    """

    name = "add_branch"
    defaults = {"kind": "parallel", "width": None, "kernel_size": 3, "seed": 0}

    def sites(self, graph: ArchGraph) -> list[Site]:
        order = {n: i for i, n in enumerate(graph.nodes())}
        anchor = set(anchors(graph))
        excluded = {graph.input, graph.output, *graph.inputs_of(graph.output)}
        rev = graph.g.reverse(copy=False)
        out = []
        for b in order:
            if b not in anchor or b in excluded:
                continue
            up = nx.single_source_shortest_path_length(rev, b, cutoff=MAX_DISTANCE)
            srcs = [a for a in up if a in anchor and a not in excluded
                    and _compatible(graph.shape(a), graph.shape(b))]
            out.extend({"src": a, "dst": b} for a in sorted(srcs, key=order.__getitem__))
        return out

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        p = super().check_params(params)
        if p["kind"] not in KINDS_OF_BRANCH:
            raise ConfigError(f"kind must be one of {list(KINDS_OF_BRANCH)}; got {p['kind']!r}")
        w = p["width"]
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
            raise ConfigError(f"width must be an int >= 1 or None (= the dst tensor's channels); got {w!r}")
        check_odd_kernel(p["kernel_size"])
        check_seed(p["seed"])
        return p

    def grow(self, graph: ArchGraph, site: Site, kind: str = "parallel", width: int | None = None,
             kernel_size: int = 3, seed: int = 0) -> None:
        src, dst = site["src"], site["dst"]
        c_in, c_out = graph.shape(src)[0], graph.shape(dst)[0]
        vector = len(graph.shape(dst)) == 1
        dtype = param_dtype(graph)
        gen = torch.Generator().manual_seed(seed)
        tag = f"add_branch:{src}->{dst}"

        def node(suffix: str, op: str, attrs: dict[str, Any], **tensors: torch.Tensor) -> str:
            return graph.add_node(graph.fresh_name(f"{dst}_br_{suffix}"), op, attrs,
                                  fresh_params(op, attrs, **tensors), source=tag)

        chain: list[str] = []
        if kind == "parallel":
            hidden = width or c_out
            w = torch.empty(*((hidden, c_in) if vector else (hidden, c_in, kernel_size, kernel_size)), dtype=dtype)
            nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu", generator=gen)
            if vector:
                chain.append(node("fc", "linear", {"in_features": c_in, "out_features": hidden, "bias": False},
                                  weight=w))
            else:
                chain.append(node("conv", "conv2d", _conv_attrs(c_in, hidden, kernel_size, bias=False), weight=w))
            bn_op = "batchnorm1d" if vector else "batchnorm2d"
            chain.append(node("bn", bn_op, {"num_features": hidden, "eps": 1e-5, "momentum": 0.1}))
            chain.append(node("relu", "relu", {}))
            c_in = hidden
        zero_w = torch.zeros(*((c_out, c_in) if vector else (c_out, c_in, 1, 1)), dtype=dtype)
        zero_b = torch.zeros(c_out, dtype=dtype)
        if vector:
            chain.append(node("zero_fc", "linear", {"in_features": c_in, "out_features": c_out, "bias": True},
                              weight=zero_w, bias=zero_b))
        else:
            chain.append(node("zero_conv", "conv2d", _conv_attrs(c_in, c_out, 1, bias=True),
                              weight=zero_w, bias=zero_b))
        join = graph.add_node(graph.fresh_name(f"{dst}_br_add"), "add", {}, {}, source=tag)
        graph.redirect_consumers(dst, join)
        graph.add_edge(src, chain[0], 0)
        for u, v in zip(chain, chain[1:], strict=False):
            graph.add_edge(u, v, 0)
        graph.add_edge(dst, join, 0)
        graph.add_edge(chain[-1], join, 1)


def _conv_attrs(c_in: int, c_out: int, k: int, bias: bool) -> dict[str, Any]:
    return {"in_channels": c_in, "out_channels": c_out, "kernel_size": [k, k], "stride": [1, 1],
            "padding": [k // 2, k // 2], "dilation": [1, 1], "groups": 1, "bias": bias}
