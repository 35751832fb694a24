"""FLOP and parameter accounting for an ArchGraph, priced on the meta device (no memory, no compute)."""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_flops(graph, batch: int = 1, backward: bool = False, per_node: bool = False):
    """FLOPs of one forward (or forward+backward) pass at `batch`; with per_node, also a node → FLOPs dict."""
    from evo.graph.compile import EvoNet

    net = EvoNet(graph, device="meta")
    x = torch.empty((batch, *graph.input_shape), device="meta", requires_grad=backward)
    with FlopCounterMode(display=False) as counter:
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
                     if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
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
