"""Helpers shared by the growth operators (private to evo.ops)."""

from __future__ import annotations

from typing import Any

import torch

from evo.checks import check_int
from evo.errors import ConfigError
from evo.graph.archgraph import ArchGraph
from evo.graph.compile import build_module


def fresh_params(op: str, attrs: dict[str, Any], **tensors: torch.Tensor) -> dict[str, torch.Tensor]:
    """A new node's full tensor set: the built module's defaults, with `tensors` replacing some of them."""
    sd = {k: v.detach().clone() for k, v in build_module(op, attrs).state_dict().items()}
    unknown = set(tensors) - set(sd)
    if unknown:  # a programming error in an operator, not user input
        raise KeyError(f"{op} has no tensors {sorted(unknown)}")
    return {**sd, **tensors}


def param_dtype(graph: ArchGraph) -> torch.dtype:
    """The floating dtype of the graph's weights (new layers match it); float32 for a weightless graph."""
    for t in graph.state_dict().values():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def check_odd_kernel(kernel_size: Any) -> None:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ConfigError(f"kernel_size must be an odd int >= 1 (1, 3, 5, ...) so that 'same' padding keeps the "
                          f"spatial size; got {kernel_size!r}")


def check_seed(seed: Any) -> None:
    check_int("seed", seed, 0)
    if seed >= 2**63:  # evo's seeds are non-negative int64s, as the run files store them
        raise ConfigError(f"seed must be an integer in [0, 2**63); got {seed!r}")
