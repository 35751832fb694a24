"""Model zoo registry: name → factory returning an ArchGraph."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from evo.errors import WeightsError
from evo.graph.archgraph import ArchGraph
from evo.registry import Registry


@dataclass(frozen=True)
class ZooEntry:
    factory: Callable[..., ArchGraph]
    default_input: int  # side of the square input
    has_pretrained: bool
    doc: str


MODELS: Registry[ZooEntry] = Registry("zoo model")


def register_model(name: str, default_input: int, has_pretrained: bool = False):
    def deco(fn: Callable[..., ArchGraph]) -> Callable[..., ArchGraph]:
        MODELS.add(name, ZooEntry(fn, default_input, has_pretrained, (fn.__doc__ or "").strip().split("\n")[0]))
        return fn

    return deco


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a third-party .pth/.pt/.safetensors weights file safely (never unpickles arbitrary objects)."""
    p = str(path)
    if not os.path.isfile(p):
        raise WeightsError(f"weights file {p} not found")
    try:
        if p.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd: Any = load_file(p)
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt, truncated or pickled-code files all land here
        raise WeightsError(f"cannot read weights file {p}: {e}. evo loads plain tensor state dicts only "
                           "(torch.load with weights_only=True, or safetensors)") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"weights file {p} does not hold a state dict of tensors")
    return sd


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict strictly, turning key and shape mismatches into a WeightsError naming them."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise WeightsError(f"weights {source} do not match {type(module).__name__}: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}, wrong shape {wrong[:3]}")
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if bad:
        raise WeightsError(f"weights {source} hold NaN or infinite values in {bad[:3]}; the file is unusable")
    module.load_state_dict(state)
