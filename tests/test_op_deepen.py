"""deepen: identity conv/linear + identity BN + the same idempotent activation; exact in eval mode."""

from __future__ import annotations

import json
import random

import pytest
import torch
from ophelpers import assert_exact, assert_unchanged, logits, parent, snapshot

import evo.ops
import evo.zoo
from evo.errors import ConfigError, EvoError, InvalidSiteError
from evo.graph.archgraph import ArchGraph


def expected_params(g: ArchGraph, after: str, kernel_size: int, bn: bool) -> int:
    c = g.shape(after)[0]
    k2 = kernel_size**2 if len(g.shape(after)) == 3 else 1
    return c * c * k2 + (2 * c if bn else c)


def check_structure(child: ArchGraph, after: str, bn: bool) -> None:
    (layer,) = child.consumers(after)
    assert child.op(layer) in ("conv2d", "linear")
    nxt = child.consumers(layer)[0]
    if bn:
        assert child.op(nxt).startswith("batchnorm")
        nxt = child.consumers(nxt)[0]
    assert child.op(nxt) == child.op(after)


def _bn_on_single_values(g: ArchGraph, after: str, bn: bool) -> bool:
    """Where the new BN sees one value per channel at batch 1 (vectors, 1x1 maps)."""
    return bn and all(d == 1 for d in g.shape(after)[1:])


# ---- every site ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["small_cnn", "mobilenet_v3_small"])
def test_every_site_is_exact(name: str) -> None:
    g, x, y = parent(name)
    snap = snapshot(g)
    sites = evo.ops.sites(g, "deepen")
    assert sites == evo.ops.sites(g.copy(), "deepen")  # stable
    json.dumps(sites)
    assert len(sites) == {"small_cnn": 6, "mobilenet_v3_small": 14}[name]
    for i, site in enumerate(sites):
        params = {"kernel_size": (1, 3)[i % 2], "bn": i % 3 != 2}
        child = evo.ops.apply(g, "deepen", site=site, **params)
        assert_exact(child, x, y, (site, params))
        check_structure(child, site["after"], params["bn"])
        if i in (0, len(sites) - 1) and not _bn_on_single_values(g, site["after"], params["bn"]):
            d = evo.ops.delta(g, "deepen", site, **params)
            assert d.params == child.num_params() - g.num_params() == expected_params(g, site["after"], **params)
            assert d.flops > 0
    assert_unchanged(g, snap)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "efficientnet_lite0"])
def test_sampled_sites_are_exact(name: str) -> None:
    g, x, y = parent(name)
    snap = snapshot(g)
    sites = evo.ops.sites(g, "deepen")
    assert sites, f"{name} should have ReLU/ReLU6 sites"
    sample = random.Random(0).sample(sites, min(20, len(sites)))
    # Every sampled site grown into one child: one compile checks them all together ...
    child = g.copy()
    op = evo.ops.get_op("deepen")
    for site in sample:
        op.grow(child, site, kernel_size=3, bn=True)
    child.validate()
    assert len(child) == len(g) + 3 * len(sample)
    assert_exact(child, x, y, f"{len(sample)} sites at once")
    # ... and the declared delta through the public path (which applies and validates once more).
    site = next(s for s in sample if not _bn_on_single_values(g, s["after"], True))
    assert evo.ops.delta(g, "deepen", site, kernel_size=1).params == expected_params(g, site["after"], 1, True)
    assert_unchanged(g, snap)


def test_sites_are_idempotent_activations_only() -> None:
    g, _, _ = parent("mobilenet_v3_small")
    ops = {g.op(s["after"]) for s in evo.ops.sites(g, "deepen")}
    assert ops == {"relu"}  # hardswish is not idempotent
    g, _, _ = parent("small_cnn")
    assert {"after": "fc_relu"} in evo.ops.sites(g, "deepen")  # a vector site: linear inserted


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
@pytest.mark.parametrize("bn", [True, False])
def test_kernel_sizes_and_bn(kernel_size: int, bn: bool) -> None:
    g, x, y = parent("small_cnn")
    for after in ("down_2", "fc_relu"):
        child = evo.ops.apply(g, "deepen", site={"after": after}, kernel_size=kernel_size, bn=bn)
        assert_exact(child, x, y, (after, kernel_size, bn))
        assert child.num_params() - g.num_params() == expected_params(g, after, kernel_size, bn)
        (layer,) = child.consumers(after)
        assert child.attrs(layer)["bias"] is (not bn)


def test_delta_with_bn_over_single_values() -> None:
    """FLOPs are priced in eval mode, so a BN over single values (BatchNorm1d at batch 1) prices fine."""
    g, _, _ = parent("small_cnn")
    assert evo.ops.delta(g, "deepen", {"after": "fc_relu"}).params == expected_params(g, "fc_relu", 3, True)


# ---- batch statistics ----------------------------------------------------------------------------
def _stats_at(g: ArchGraph, node: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    net = g.to_module().eval()
    got = {}
    h = net.get_submodule(node).register_forward_hook(lambda m, a, o: got.setdefault("o", o.detach().clone()))
    with torch.no_grad():
        net(x)
    h.remove()
    o = got["o"].double()
    dims = [0, *range(2, o.dim())]
    return o.mean(dims).float(), o.var(dims, unbiased=False).float()


@pytest.mark.parametrize("name,after", [("small_cnn", "down_2"), ("small_cnn", "fc_relu"),
                                        ("mobilenet_v3_small", "features_3_block_0_2")])
def test_batch_sets_running_stats(name: str, after: str) -> None:
    g, x, y = parent(name)
    batch = 2.0 * torch.randn(8, *g.input_shape, generator=torch.Generator().manual_seed(5)) + 0.5
    child = evo.ops.apply(g, "deepen", site={"after": after}, batch=batch)
    (layer,) = child.consumers(after)
    (bn,) = child.consumers(layer)
    mean, var = _stats_at(g, after, batch)
    ps = child.params(bn)
    assert var.max() > 0 and mean.abs().max() > 0 and not torch.allclose(var, torch.ones_like(var))
    for key, want in [("running_mean", mean), ("running_var", var), ("weight", torch.sqrt(var + 1e-5)),
                      ("bias", mean)]:
        torch.testing.assert_close(ps[key], want, rtol=1e-5, atol=1e-10, msg=key)
    assert_exact(child, x, y, "eval mode with batch statistics")
    assert_exact(child, batch, logits(g, batch), "eval mode on the statistics batch")
    # Train mode on that batch, with only the new BN training: also the identity (biased variance).
    net = child.to_module().eval()
    net.get_submodule(bn).train()
    with torch.no_grad():
        err = (net(batch) - logits(g, batch)).abs().max().item()
    assert err <= 1e-4 * logits(g, batch).abs().max().item()
    hist = child.meta["history"][-1]
    assert "batch" not in hist["params"] and hist["site"] == {"after": after}
    json.dumps(child.meta["history"])


def test_batch_is_checked() -> None:
    g, _, _ = parent("small_cnn")
    site = {"after": "down_2"}
    with pytest.raises(ConfigError, match=r"batch must be input images of shape \(N, 3, 32, 32\)"):
        evo.ops.apply(g, "deepen", site=site, batch=torch.zeros(2, 3, 16, 16))
    with pytest.raises(ConfigError, match="floating-point"):
        evo.ops.apply(g, "deepen", site=site, batch=torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="batch must be None or a tensor"):
        evo.ops.apply(g, "deepen", site=site, batch=[[0.0]])
    with pytest.raises(ConfigError, match="needs bn=True"):
        evo.ops.apply(g, "deepen", site=site, bn=False, batch=torch.zeros(2, 3, 32, 32))


# ---- refusals ------------------------------------------------------------------------------------
@pytest.mark.parametrize("params,match", [
    ({"kernel_size": 2}, r"kernel_size must be an odd int >= 1.*got 2"),
    ({"kernel_size": 0}, r"kernel_size must be an odd int.*got 0"),
    ({"kernel_size": "3"}, r"kernel_size.*got '3'"),
    ({"kernel_size": True}, r"kernel_size.*got True"),
    ({"bn": "yes"}, r"bn must be True or False; got 'yes'"),
    ({"seed": -1}, r"seed must be an integer >= 0; got -1"),
    ({"depth": 2}, r"no parameter\(s\) \['depth'\].*kernel_size"),
])
def test_bad_params(params: dict, match: str) -> None:
    g, _, _ = parent("small_cnn")
    with pytest.raises(ConfigError, match=match):
        evo.ops.apply(g, "deepen", site={"after": "stem_2"}, **params)


@pytest.mark.parametrize("site", [{"after": "stem_1"}, {"after": "nope"}, {"node": "stem_2"}, {}])
def test_invalid_sites(site: dict) -> None:
    g, _, _ = parent("small_cnn")
    with pytest.raises(InvalidSiteError, match=r"deepen does not apply.*evo.ops.sites\(graph, 'deepen'\)"):
        evo.ops.apply(g, "deepen", site=site)


def test_non_idempotent_activation_refused() -> None:
    g, _, _ = parent("mobilenet_v3_small")
    hs = next(n for n in g.nodes() if g.op(n) == "hardswish")
    with pytest.raises(InvalidSiteError):
        evo.ops.apply(g, "deepen", site={"after": hs})
    assert issubclass(InvalidSiteError, EvoError)


def test_exactness_check_can_fail() -> None:
    """A deliberately broken child (new BN bias off by 1e-3) must fail the exactness check."""
    g, x, y = parent("small_cnn")
    child = evo.ops.apply(g, "deepen", site={"after": "res_a_2"})
    (layer,) = child.consumers("res_a_2")
    (bn,) = child.consumers(layer)
    child.set_params(bn, bias=child.params(bn)["bias"] + 1e-3)
    with pytest.raises(AssertionError, match="max"):
        assert_exact(child, x, y, "sabotaged")
