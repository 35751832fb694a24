"""FLOP and parameter accounting for an ArchGraph, priced on the meta device (no memory, no compute).

FLOPs come from torch's FlopCounterMode (matmuls and convolutions, forward and backward; a
multiply-add is 2; elementwise ops and norms are not counted), with one correction: torch's
convolution-backward formula ignores `groups` in the weight gradient, overcounting grouped convs by
the group count (a depthwise conv by its channel count), so evo prices that op itself.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection

import torch
from torch.utils.flop_counter import FlopCounterMode

from evo.graph.layers import BUFFERS


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                         _out_pad, _groups, output_mask, **_kwargs) -> int:
    """Each forward multiply-add has one partner in grad-input and one in grad-weight: one forward each.

    Signature of aten.convolution_backward, tensors replaced by their shapes.
    """
    spatial = (x_shape if transposed else grad_out_shape)[2:]
    forward = 2 * x_shape[0] * math.prod(spatial) * math.prod(w_shape)  # w: (c_out, c_in/groups, *k)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def flop_counter() -> FlopCounterMode:
    """A FlopCounterMode with evo's grouped-convolution backward correction."""
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops})


def count_flops(graph, batch: int = 1, backward: bool = False, per_node: bool = False,
                trainable: Collection[str] | None = None):
    """FLOPs of one forward (or forward+backward) pass at `batch`; with per_node, also a node → FLOPs dict.

    Computed from the inferred shapes with the same rules FlopCounterMode applies (2 FLOPs per
    multiply-add in convolutions and matmuls; nothing else counted; no input gradient where the
    input does not depend on a parameter), so it is exact and takes milliseconds: the growth search
    prices every candidate with it. `meta_flops` runs the real counter; tests check they agree.
    `trainable` (node names; default all) prices a step that trains only those nodes: frozen nodes
    get no weight gradient, and nothing before the first trainable node gets an input gradient.
    """
    from evo.checks import check_int
    from evo.errors import ConfigError

    check_int("flops batch (images)", batch)
    if trainable is not None and (isinstance(trainable, (str, bytes)) or not isinstance(trainable, Collection)):
        raise ConfigError(f"flops trainable must be None (every node) or a collection of node names; got "
                          f"{type(trainable).__name__} {trainable!r}")
    graph.infer_shapes()
    needs_grad: dict[str, bool] = {}
    nodes: dict[str, int] = {}
    for n in graph.nodes():
        ins = graph.inputs_of(n)
        grad_in = any(needs_grad[i] for i in ins)
        has_params = graph.op(n) != "output" and any(t.is_floating_point() for k, t in graph.params(n).items()
                                                      if k not in BUFFERS)
        trains = has_params and (trainable is None or n in trainable)
        needs_grad[n] = grad_in or trains
        fwd = _forward_flops(graph, n, batch)
        if not fwd:
            continue
        # backward: a weight gradient where the node trains, an input gradient where the input needs one
        nodes[n] = fwd * (1 + int(grad_in) + int(trains)) if backward else fwd
    total = sum(nodes.values())
    return (total, nodes) if per_node else total


def _forward_flops(graph, n: str, batch: int) -> int:
    op = graph.op(n)
    a = graph.attrs(n)
    if op == "conv2d":
        out = graph.shape(n)
        kh, kw = (a["kernel_size"], a["kernel_size"]) if isinstance(a["kernel_size"], int) else a["kernel_size"]
        return 2 * batch * math.prod(out) * (a["in_channels"] // a.get("groups", 1)) * kh * kw
    if op == "random_features":  # x · W on the standardised input
        return 2 * batch * a["in_features"] * a["out_features"]
    if op == "linear":  # on every position of a (..., in_features) tensor, e.g. ConvNeXt's channels-last MLP
        return 2 * batch * math.prod(graph.shape(n)[:-1]) * a["in_features"] * a["out_features"]
    return 0


def meta_flops(graph, batch: int = 1, backward: bool = False, per_node: bool = False,
               trainable: Collection[str] | None = None):
    """The same count, measured by running the graph under FlopCounterMode on the meta device."""
    return _count_flops(graph, batch, backward, per_node, trainable)


def _count_flops(graph, batch: int, backward: bool, per_node: bool, trainable: Collection[str] | None = None):
    from evo.graph.compile import EvoNet

    net = EvoNet(graph, device="meta").eval()  # eval: BN on a 1x1 map at batch 1 is fine; FLOPs are the same
    if trainable is not None:
        for name, module in net.named_children():
            module.requires_grad_(name in trainable)
    x = torch.empty((batch, *graph.input_shape), device="meta")
    with flop_counter() as counter:
        out = net(x)
        if backward:
            out.sum().backward()
    total = counter.get_total_flops()
    if not per_node:
        return total
    nodes: Counter[str] = Counter()
    for key, ops in counter.get_flop_counts().items():
        parts = key.split(".")
        if len(parts) == 2:  # "EvoNet.<node>"
            nodes[parts[1]] += sum(ops.values())
    return total, dict(nodes)


def summary(graph) -> str:
    """A human-readable table of layers with shapes, parameters and forward FLOPs."""
    graph.infer_shapes()
    total, per_node = count_flops(graph, per_node=True)
    rows = [("node", "kind", "output shape", "params", "MFLOPs")]
    for n in graph.nodes():
        params = sum(t.numel() for k, t in graph.params(n).items()
                     if not k.endswith(BUFFERS))
        rows.append((n, graph.op(n), "x".join(map(str, graph.shape(n))), f"{params:,}",
                     f"{per_node.get(n, 0) / 1e6:.2f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    name = graph.meta.get("name", "graph")
    kinds = Counter(graph.op(n) for n in graph.nodes())
    lines.insert(0, f"{name}: {len(graph)} nodes, {graph.num_params():,} parameters, "
                    f"{total / 1e6:.1f} MFLOPs per image (forward), input {graph.input_shape}")
    lines.insert(1, "kinds: " + ", ".join(f"{k}×{v}" for k, v in sorted(kinds.items())))
    return "\n".join(lines)
