"""Compile an ArchGraph into EvoNet, an nn.Module that runs the nodes in topological order.

Every node becomes a real torch module (the same kernels the source model used), registered under
the node's name, so `EvoNet.state_dict()` keys equal `ArchGraph.state_dict()` keys. The forward is a
flat precomputed plan that frees each intermediate tensor after its last use.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.fx
from torch import nn

from evo.errors import DataError, GraphError
from evo.graph.layers import KINDS

_INPLACE_KINDS = {"relu", "relu6", "silu", "hardswish", "hardsigmoid"}


def build_module(op: str, attrs: dict[str, Any], device: str | torch.device | None = None) -> nn.Module:
    """Instantiate the torch module for one node kind (empty weights on the meta device if asked)."""
    if device == "meta":
        with torch.device("meta"):
            return KINDS.get(op).make(attrs)
    return KINDS.get(op).make(attrs)


def _largest_activation(graph, order: list[str]) -> int:
    """Bytes of the largest per-image fp32 tensor the net computes (from the inferred shapes; 0 if
    unknown): what sizes a batch that stays in the CPU's cache (`evo.learn.device.feature_batch`)."""
    try:
        return 4 * max(math.prod(graph.shape(n)) for n in order)
    except (GraphError, TypeError, ValueError):
        return 0


class EvoNet(nn.Module):
    """The executable form of an ArchGraph; `forward` gives logits, `forward_features` the head's input."""

    def __init__(self, graph, device: str | torch.device | None = None) -> None:  # graph: ArchGraph
        super().__init__()
        order = graph.nodes()
        consumers_left = {n: graph.g.out_degree(n) for n in order}
        self.input_name = graph.input
        self.input_shape = tuple(graph.input_shape)
        self.features_name = graph.features
        self.head_name = graph.head
        self.classes = graph.classes
        plan: list[tuple[str, list[str], list[str]]] = []
        for n in order:
            op = graph.op(n)
            if op in ("input", "output"):
                continue
            attrs = dict(graph.attrs(n))
            if op in _INPLACE_KINDS:
                attrs["inplace"] = _can_run_inplace(graph, n)
            module = build_module(op, attrs, device="meta" if device == "meta" else None)
            if device != "meta":
                module.load_state_dict(graph.params(n), strict=True)
            self.add_module(n, module)
            args = graph.inputs_of(n)
            freed = []
            for a in set(args):
                consumers_left[a] -= 1
                if consumers_left[a] == 0 and a != self.features_name:
                    freed.append(a)
            plan.append((n, args, freed))
        self._plan = plan
        self._output_src = graph.inputs_of(graph.output)[0]
        self.activation_bytes = _largest_activation(graph, order)
        if device not in (None, "meta"):
            self.to(device)

    def _check_input(self, x: Any) -> None:
        """Refuse what the first layer would fail on with a torch error: not a float tensor of
        (batch, *input_shape) layout (the spatial size may differ; pooling adapts)."""
        if isinstance(x, torch.fx.Proxy):  # being traced: nothing concrete to check
            return
        shape = self.input_shape
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != len(shape) + 1 \
                or (len(shape) > 1 and x.shape[1] != shape[0]):
            got = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            want = f"(N, {shape[0]}, H, W)" if len(shape) == 3 else f"(N, {', '.join(map(str, shape))})"
            raise DataError(f"this network takes a float tensor of shape {want} (preprocessed images); got a {got}. "
                            "Preprocess uint8 images with the version's Preprocess, or call Learner.predict")

    def _run(self, x: torch.Tensor, stop: str | None) -> dict[str, torch.Tensor]:
        self._check_input(x)
        values = {self.input_name: x}
        for name, args, freed in self._plan:
            if name == stop:
                break
            values[name] = self._modules[name](*[values[a] for a in args])
            for f in freed:
                del values[f]
        return values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, None)[self._output_src]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-logit features: what the head (final Linear) sees."""
        return self._run(x, self.head_name)[self.features_name]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.get_classifier()(features) if self.head_name else features

    def forward_both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and logits from one pass (distillation and replay need both)."""
        feats = self.forward_features(x)
        return feats, self.forward_head(feats)

    def get_classifier(self) -> nn.Module:
        return self._modules[self.head_name] if self.head_name else nn.Identity()


def _can_run_inplace(graph, node: str) -> bool:
    """In-place only when this node is its input's sole consumer, so no other branch sees a clobbered tensor."""
    (src,) = graph.inputs_of(node)
    safe_src = graph.op(src) in ("conv2d", "linear", "batchnorm2d", "batchnorm1d", "add")  # backward needs no output
    return safe_src and graph.g.out_degree(src) == 1 and src != graph.features
