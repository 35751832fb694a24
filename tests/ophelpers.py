"""Helpers shared by the operator tests: a seeded parent per zoo model, exactness and purity checks."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import randomize_bn

import evo.zoo
from evo.graph.archgraph import ArchGraph

MODELS = {"small_cnn": 32, "mobilenet_v3_small": 64, "resnet18": 64, "mobilenet_v2": 64, "efficientnet_lite0": 64}


@functools.cache
def parent(name: str) -> tuple[ArchGraph, torch.Tensor, torch.Tensor]:
    """A model with random BN statistics, a seeded input batch and the parent's eval logits."""
    if name not in evo.zoo.list_models():
        pytest.skip(f"{name} is not registered yet")
    kw = {"pretrained": True} if name == "efficientnet_lite0" else {}
    g = randomize_bn(evo.zoo.load(name, input_size=MODELS[name], **kw), seed=1)
    x = torch.randn(2, *g.input_shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = g.to_module().eval()(x)
    return g, x, y


def logits(g: ArchGraph, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return g.to_module().eval()(x)


def assert_exact(child: ArchGraph, x: torch.Tensor, y: torch.Tensor, what: object) -> float:
    """Child logits equal the parent's within 1e-5 (absolute, and 1e-4 relative to the logit scale)."""
    err = (logits(child, x) - y).abs().max().item()
    scale = y.abs().max().item()
    assert err <= 1e-5 * max(1.0, scale) and err <= 1e-4 * scale, f"{what}: max |child - parent| = {err:.3g}"
    return err


def snapshot(g: ArchGraph) -> tuple[dict[str, torch.Tensor], list, int]:
    return ({k: v.clone() for k, v in g.state_dict().items()}, sorted(g.g.edges(data="index")), len(g))


def assert_unchanged(g: ArchGraph, snap: tuple) -> None:
    tensors, edges, n = snap
    now = g.state_dict()
    assert set(now) == set(tensors) and len(g) == n and sorted(g.g.edges(data="index")) == edges
    for k, v in tensors.items():
        assert torch.equal(now[k], v), f"parent tensor {k} changed"
