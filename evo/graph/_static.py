"""What every node of a traced module computes at the import size: tensor shapes and folded shape arithmetic.

The module runs twice on zeros (in its parameters' dtype), at batch 1 and at batch 2 (eval mode, no gradients). A tensor is kept
as its shape. A Python value (`x.size()`, `c // groups`, an assertion on `x.ndim`) is kept as is: when
it comes only from shapes it is a constant of the import size, and when it differs between the two
runs it depends on the batch size. The importer folds the constants into the nodes that use them and
refuses a value computed from tensor data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

BATCHES = (1, 2)
SHAPE_ATTRS = frozenset({"shape", "ndim", "dtype", "device", "is_cuda"})
SHAPE_METHODS = frozenset({"size", "dim"})


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]  # with the batch dimension


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.seen: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.seen[n] = _summary(out)
        return out


def _summary(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return TensorInfo(tuple(v.shape))
    if isinstance(v, (tuple, list)):
        return tuple(_summary(x) for x in v)
    return v


def record(gm: fx.GraphModule, input_shape: Sequence[int]) -> dict[fx.Node, tuple[Any, Any]]:
    """node -> (value at batch 1, value at batch 2); raises what the module raises."""
    dtype = next((p.dtype for p in gm.parameters() if p.is_floating_point()), torch.get_default_dtype())
    runs = []
    for b in BATCHES:
        rec = _Recorder(gm)
        with torch.no_grad():
            rec.run(torch.zeros((b, *input_shape), dtype=dtype))
        runs.append(rec.seen)
    return {n: (runs[0][n], runs[1][n]) for n in runs[0]}


def is_tensor(v: Any) -> bool:
    return isinstance(v, TensorInfo)


def is_tensors(v: Any) -> bool:
    return isinstance(v, tuple) and bool(v) and all(isinstance(x, TensorInfo) for x in v)


def is_shape_query(n: fx.Node) -> bool:
    """Reads a tensor's shape (never its data): `x.shape`, `x.ndim`, `x.size()`, `x.dim()`."""
    if n.op == "call_function" and n.target is getattr:
        return len(n.args) > 1 and n.args[1] in SHAPE_ATTRS
    return n.op == "call_method" and n.target in SHAPE_METHODS


def check_shape_only(values: dict[fx.Node, tuple[Any, Any]], n: fx.Node) -> None:
    """Refuse a Python value computed from tensor data: only shape queries may turn tensors into values."""
    from evo.errors import TraceError

    reads_tensor = any(is_tensor(values[a][0]) or is_tensors(values[a][0]) for a in n.all_input_nodes)
    if reads_tensor and not is_tensor(values[n][0]) and not is_tensors(values[n][0]) and not is_shape_query(n):
        raise TraceError(f"computes a Python value from tensor data ({values[n][0]!r}); evo imports graphs whose "
                         "control values depend on shapes only")


def concrete_condition(root: torch.nn.Module, graph: fx.Graph, node: fx.Node, input_shape: Sequence[int]) -> bool:
    """The value of a traced condition at the import size (`if x.shape[-1] < 7:`), so that tracing can take
    the branch the module takes at that size. Refused when it reads tensor data or depends on the batch size."""
    from evo.errors import TraceError

    prefix, env = fx.Graph(), {}
    for n in graph.nodes:
        env[n] = prefix.node_copy(n, lambda a: env[a])
        if n is node:
            break
    prefix.output(env[node])
    gm = fx.GraphModule(root, prefix)
    values = record(gm, input_shape)
    for n in gm.graph.nodes:
        if n.op in ("call_function", "call_method"):
            check_shape_only(values, n)
    v1, v2 = values[env[node]]
    if is_tensor(v1) or is_tensors(v1):
        raise TraceError(f"branches on tensor data ({node.name}); evo imports graphs whose control flow depends "
                         "on shapes only")
    if v1 != v2:
        raise TraceError(f"branches on the batch size ({node.name} is {v1} at batch 1, {v2} at batch 2)")
    return bool(v1)
