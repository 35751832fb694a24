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


# ---- the classifier families users start from (issue 13): import, then every op on sampled sites ----
# "library:architecture" -> input side. Random init (nothing is downloaded), 10 classes, small inputs.
FAMILIES: dict[str, int] = {
    "torchvision:densenet121": 32, "torchvision:efficientnet_b0": 32, "timm:mobilenetv3_large_100": 32,
    "torchvision:resnext50_32x4d": 32, "torchvision:regnet_x_400mf": 32, "torchvision:regnet_y_400mf": 32,
    "torchvision:mnasnet0_5": 32, "torchvision:squeezenet1_1": 32, "torchvision:shufflenet_v2_x0_5": 32,
    "torchvision:mobilenet_v3_large": 32, "torchvision:googlenet": 32,
    "timm:resnet18": 32, "timm:efficientnet_b0": 32, "timm:tf_efficientnet_b0": 32,
    "timm:tf_efficientnetv2_b0": 32, "timm:regnety_002": 32, "timm:densenet121": 32,
}
# Too heavy for the default suite on a shared 2-core box (tens of millions of parameters to initialise,
# or a large input): run with `-m slow`.
HEAVY_FAMILIES: dict[str, int] = {
    "torchvision:wide_resnet50_2": 32, "torchvision:efficientnet_v2_s": 32, "torchvision:vgg11_bn": 32,
    "torchvision:inception_v3": 75, "torchvision:convnext_tiny": 32, "timm:resnet50d": 32,
    "timm:efficientnetv2_rw_t": 32,
}


VAR_FLOOR = 0.05  # a channel ReLU left near-constant on the batch would otherwise scale rounding by 1/sqrt(eps)


def family_batch(name: str, n: int = 16) -> torch.Tensor:
    size = {**FAMILIES, **HEAVY_FAMILIES}[name]
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(2))


def build_family(name: str) -> torch.nn.Module:
    """The source module of a family member, seeded, eval mode, with BN statistics measured on
    `family_batch` (`calibrate_bn`)."""
    lib, arch = name.split(":")
    torch.manual_seed(0)
    if lib == "torchvision":
        import torchvision

        kw = {"aux_logits": False, "init_weights": False} if arch in ("googlenet", "inception_v3") else {}
        net = getattr(torchvision.models, arch)(weights=None, num_classes=10, **kw)
    else:
        timm = pytest.importorskip("timm")
        net = timm.create_model(arch, pretrained=False, num_classes=10)
    return calibrate_bn(net.double(), family_batch(name).double())


def calibrate_bn(net: torch.nn.Module, batch: torch.Tensor) -> torch.nn.Module:
    """Random but trained-like batch norms: random affine weights, then running statistics measured on
    `batch` (as training leaves them on its data). With default 0/1 statistics, or statistics from other
    images, a deep random net's activations grow block by block (EfficientNetV2's logits reach 1e5 at
    32 px) until fp32 rounding alone moves its logits by percents, which no exactness check can see
    through; the tests then feed images of `batch`, on which activations stay near unit scale."""
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in bns:
            if m.affine:
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=gen))
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch sets the statistics exactly
        net.train()(batch)
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
        m.running_var.clamp_(min=VAR_FLOOR)
    return net.eval()


def family_logits(g: ArchGraph, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return g.to_module().to(x.dtype).eval()(x)


@functools.cache
def family_parent(name: str) -> tuple[ArchGraph, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(graph, inputs, graph logits, source module logits), all in float64; the source is not kept.

    float64, because the family tests check the operators, not the random nets' conditioning: in fp32
    a 50-layer random net amplifies rounding from 1e-7 to 1e-4 of its logits (timm resnet50d: fp32
    and fp64 logits differ by 1.2e-4 at scale 1.8), so an fp32 check would fail on exact growth, or
    need a tolerance loose enough to hide a wrong one. Weights are stored in float64 too, so a widen's
    split columns carry no fp32 rounding either."""
    from evo.graph.trace import from_module

    size = {**FAMILIES, **HEAVY_FAMILIES}[name]
    net = build_family(name)
    g = from_module(net, (3, size, size), name=name)
    x = family_batch(name)[:2].double()
    with torch.no_grad():
        source = net(x)
    return g, x, family_logits(g, x), source
