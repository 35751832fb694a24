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
