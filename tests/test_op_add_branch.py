"""add_branch: a zero-initialised parallel path or skip added to an existing tensor; exact, and it can learn."""

from __future__ import annotations

import json
import random

import networkx as nx
import pytest
import torch
from ophelpers import assert_exact, assert_unchanged, parent, snapshot

import evo.ops
import evo.zoo
from evo.errors import ConfigError, InvalidSiteError
from evo.graph.archgraph import ArchGraph
from evo.ops.add_branch import MAX_DISTANCE, anchors


def expected_params(g: ArchGraph, site: dict, kind: str = "parallel", width: int | None = None,
                    kernel_size: int = 3, **_: object) -> int:
    sa, sb = g.shape(site["src"]), g.shape(site["dst"])
    ca, cb = sa[0], sb[0]
    if kind == "skip":
        return ca * cb + cb
    h = width or cb
    k2 = kernel_size**2 if len(sb) == 3 else 1
    return h * ca * k2 + 2 * h + cb * h + cb


def check_structure(child: ArchGraph, site: dict) -> str:
    """The dst now feeds only the new add (and the branch when src == dst); returns the zero layer."""
    src, dst = site["src"], site["dst"]
    joins = [c for c in child.consumers(dst) if child.op(c) == "add" and child.node(c)["source"].startswith("add_b")]
    (join,) = joins
    first, last = child.inputs_of(join)
    assert first == dst
    assert set(child.consumers(dst)) <= {join, *child.consumers(src)}
    w = child.params(last)
    assert not w["weight"].any() and not w["bias"].any(), "the branch must end in a zero layer"
    return last


def _bn_on_single_values(g: ArchGraph, site: dict, kind: str) -> bool:
    """Where the branch's BN sees one value per channel at batch 1."""
    return kind == "parallel" and all(d == 1 for d in g.shape(site["dst"])[1:])


VARIANTS = [{"kind": "parallel"}, {"kind": "skip"}, {"kind": "parallel", "width": 5, "kernel_size": 1},
            {"kind": "parallel", "width": 3, "kernel_size": 5, "seed": 7}]


# ---- every site ----------------------------------------------------------------------------------
def test_every_site_small_cnn() -> None:
    g, x, y = parent("small_cnn")
    snap = snapshot(g)
    sites = evo.ops.sites(g, "add_branch")
    assert sites == evo.ops.sites(g.copy(), "add_branch")
    json.dumps(sites)
    assert len(sites) == 23
    assert {"src": "flatten", "dst": "fc_relu"} in sites  # a vector branch skipping fc1
    for i, site in enumerate(sites):
        params = VARIANTS[i % len(VARIANTS)]
        child = evo.ops.apply(g, "add_branch", site=site, **params)
        assert_exact(child, x, y, (site, params))
        check_structure(child, site)
        assert child.num_params() - g.num_params() == expected_params(g, site, **params)
        if i % 4 == 0 and not _bn_on_single_values(g, site, params["kind"]):
            d = evo.ops.delta(g, "add_branch", site, **params)
            assert d.params == expected_params(g, site, **params) and d.flops > 0
    assert_unchanged(g, snap)


def _grow_all(g: ArchGraph, sites: list[dict]) -> ArchGraph:
    """Every site grown into one child (alternating kinds): one compile checks them all together."""
    child = g.copy()
    op = evo.ops.get_op("add_branch")
    for i, site in enumerate(sites):
        op.grow(child, site, **op.check_params(VARIANTS[i % len(VARIANTS)] | {"width": 4}))
    return child.validate()


def test_every_site_mobilenet_v3_small() -> None:
    g, x, y = parent("mobilenet_v3_small")
    snap = snapshot(g)
    sites = evo.ops.sites(g, "add_branch")
    assert len(sites) == 164
    child = _grow_all(g, sites)
    assert len(child) > len(g) + len(sites) * 2
    assert_exact(child, x, y, f"all {len(sites)} sites at once")
    for site in random.Random(0).sample(sites, 3):  # and some one at a time, through the public path
        single = evo.ops.apply(g, "add_branch", site=site)
        assert_exact(single, x, y, site)
        check_structure(single, site)
        assert single.num_params() - g.num_params() == expected_params(g, site)
    assert_unchanged(g, snap)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "efficientnet_lite0"])
def test_sampled_sites(name: str) -> None:
    g, x, y = parent(name)
    snap = snapshot(g)
    sites = evo.ops.sites(g, "add_branch")
    assert len(sites) > 50
    sample = random.Random(1).sample(sites, 20)
    assert_exact(_grow_all(g, sample), x, y, "20 sampled sites at once")
    site = next(s for s in sample if not _bn_on_single_values(g, s, "parallel"))
    single = evo.ops.apply(g, "add_branch", site=site, width=8)
    assert_exact(single, x, y, site)
    assert evo.ops.delta(g, "add_branch", site, width=8).params == expected_params(g, site, width=8)
    assert_unchanged(g, snap)


def test_site_rules() -> None:
    """Listed sites obey the rules, and compatible unit ends farther apart than MAX_DISTANCE are not listed."""
    g, _, _ = parent("resnet18")
    sites = evo.ops.sites(g, "add_branch")
    pairs = {(s["src"], s["dst"]) for s in sites}
    head = g.inputs_of(g.output)[0]
    for a, b in pairs:
        assert a != g.input and b not in (head, g.output)
        assert nx.shortest_path_length(g.g, a, b) <= MAX_DISTANCE
        sa, sb = g.shape(a), g.shape(b)
        assert len(sa) == len(sb) and sa[1:] == sb[1:]
    ends = anchors(g)
    far = [(a, b) for a in ends for b in ends if a != b and nx.has_path(g.g, a, b)
           and nx.shortest_path_length(g.g, a, b) > MAX_DISTANCE and g.shape(a)[1:] == g.shape(b)[1:]]
    assert far and not pairs & set(far)
    assert any(a == b for a, b in pairs) and any(a != b for a, b in pairs)


# ---- learning ------------------------------------------------------------------------------------
def test_zero_layer_gets_gradient() -> None:
    """The zero layer makes the child exact, yet it receives a non-zero gradient, so the branch learns."""
    g, x, _ = parent("small_cnn")
    for site, kind in [({"src": "res_a_2", "dst": "res_b_1"}, "parallel"), ({"src": "flatten", "dst": "fc_relu"}, "skip")]:
        child = evo.ops.apply(g, "add_branch", site=site, kind=kind)
        last = check_structure(child, site)
        net = child.to_module().train()
        net(x).pow(2).sum().backward()
        grad = net.get_submodule(last).weight.grad
        assert grad is not None and grad.abs().max() > 0, f"{kind} branch at {site} gets no gradient"


def test_seed_sets_first_layer() -> None:
    g, _, _ = parent("small_cnn")
    site = {"src": "stem_2", "dst": "res_a_2"}
    a, b, c = (evo.ops.apply(g, "add_branch", site=site, seed=s) for s in (0, 0, 1))
    w = [next(t.params(n)["weight"] for n in t.nodes() if t.node(n)["source"].startswith("add_branch")
              and t.op(n) == "conv2d") for t in (a, b, c)]
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2]) and w[0].abs().max() > 0


# ---- refusals ------------------------------------------------------------------------------------
@pytest.mark.parametrize("params,match", [
    ({"kind": "wide"}, r"kind must be one of \['parallel', 'skip'\]; got 'wide'"),
    ({"width": 0}, r"width must be an int >= 1 or None.*got 0"),
    ({"width": -3}, r"width must be an int >= 1.*got -3"),
    ({"width": 2.5}, r"width.*got 2.5"),
    ({"width": True}, r"width.*got True"),
    ({"kernel_size": 2}, r"kernel_size must be an odd int >= 1.*got 2"),
    ({"kernel_size": -1}, r"kernel_size.*got -1"),
    ({"seed": "a"}, r"seed must be an integer >= 0; got 'a'"),
    ({"depth": 1}, r"no parameter\(s\) \['depth'\]"),
])
def test_bad_params(params: dict, match: str) -> None:
    g, _, _ = parent("small_cnn")
    with pytest.raises(ConfigError, match=match):
        evo.ops.apply(g, "add_branch", site={"src": "stem_2", "dst": "res_a_2"}, **params)


@pytest.mark.parametrize("site", [
    {"src": "input", "dst": "stem_2"},  # the input
    {"src": "fc_relu", "dst": "classifier"},  # the head / logits
    {"src": "res_a_2", "dst": "stem_2"},  # src downstream of dst
    {"src": "stem_2", "dst": "down_2"},  # 32x32 vs 16x16
    {"src": "relu_1", "dst": "fc_relu"},  # feature map vs vector
    {"src": "stem_0", "dst": "stem_2"},  # a conv in the middle of a unit
    {"src": "stem_2"}, {"src": "nope", "dst": "stem_2"},
])
def test_invalid_sites(site: dict) -> None:
    g, _, _ = parent("small_cnn")
    with pytest.raises(InvalidSiteError, match=r"add_branch does not apply.*evo.ops.sites\(graph, 'add_branch'\)"):
        evo.ops.apply(g, "add_branch", site=site)


def test_exactness_check_can_fail() -> None:
    """A deliberately broken child (zero layer's bias 1e-3) must fail the exactness check."""
    g, x, y = parent("small_cnn")
    site = {"src": "res_a_2", "dst": "res_b_1"}
    child = evo.ops.apply(g, "add_branch", site=site)
    last = check_structure(child, site)
    child.set_params(last, bias=torch.full_like(child.params(last)["bias"], 1e-3))
    with pytest.raises(AssertionError, match="max"):
        assert_exact(child, x, y, "sabotaged")
