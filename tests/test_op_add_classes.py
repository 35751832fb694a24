"""add_classes: new head rows (weight 0, very low bias); old logits unchanged (to fp32 reduction order), old predictions unchanged."""

from __future__ import annotations

import json

import pytest
import torch
from ophelpers import MODELS, assert_unchanged, logits, parent, snapshot
from torch import nn

import evo.ops
import evo.zoo
from evo.errors import ConfigError, EvoError, GraphError, InvalidSiteError
from evo.graph.archgraph import ArchGraph
from evo.graph.trace import from_module


def assert_old_logits_kept(child: ArchGraph, x: torch.Tensor, y: torch.Tensor, n_new: int, bias: float) -> None:
    z = logits(child, x)
    c = y.shape[1]
    assert z.shape == (x.shape[0], c + n_new)
    # the old rows are untouched; a wider matrix may only change the kernel's fp32 reduction order
    # (bit-identical on some CPUs, ~1e-8 apart on an AMD EPYC)
    err = (z[:, :c] - y).abs().max().item()
    assert err <= 1e-6 * max(1.0, y.abs().max().item()), f"old logits changed: max diff {err:.3g}"
    assert torch.equal(z[:, c:], torch.full_like(z[:, c:], bias))
    assert torch.equal(z.argmax(1), y.argmax(1))
    torch.testing.assert_close(z.softmax(1)[:, :c], y.softmax(1), rtol=0, atol=1e-7)


# ---- every model ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_old_logits_bit_identical(name: str) -> None:
    g, x, y = parent(name)
    snap, old_classes = snapshot(g), list(g.classes)
    head = g.head
    assert evo.ops.sites(g, "add_classes") == [{"head": head}]
    c, feat = g.attrs(head)["out_features"], g.attrs(head)["in_features"]
    for params, n_new in [({}, 1), ({"k": 3}, 3), ({"names": ["cat", "dog"], "bias": -50.0}, 2)]:
        child = evo.ops.apply(g, "add_classes", site={"head": head}, **params)
        assert_old_logits_kept(child, x, y, n_new, params.get("bias", -1e4))
        assert child.attrs(head)["out_features"] == c + n_new
        assert child.classes[:c] == (old_classes or child.classes[:c]) and len(child.classes) == c + n_new
        assert child.num_params() - g.num_params() == n_new * (feat + 1)
        assert torch.equal(child.params(head)["weight"][:c], g.params(head)["weight"])
        assert not child.params(head)["weight"][c:].any()
        json.dumps(child.meta["history"])
    assert evo.ops.delta(g, "add_classes", {"head": head}, k=2).params == 2 * (feat + 1)
    assert_unchanged(g, snap)
    assert g.classes == old_classes and g.attrs(head)["out_features"] == c


def test_names() -> None:
    g, _, _ = parent("small_cnn")
    assert g.classes == [f"class_{i}" for i in range(10)]
    assert evo.ops.apply(g, "add_classes", k=2).classes[10:] == ["class_10", "class_11"]
    assert evo.ops.apply(g, "add_classes", names=("zebra",)).classes[10:] == ["zebra"]
    assert evo.ops.apply(g, "add_classes", k=1, names=["zebra"]).classes[10:] == ["zebra"]
    # Generated names skip names already in use.
    renamed = g.copy()
    renamed.meta["classes"] = [*g.classes[:9], "class_11"]
    assert evo.ops.apply(renamed, "add_classes", k=2).classes[10:] == ["class_10", "class_12"]
    # A graph without class names gets class_<i> for the old units too.
    nameless = g.copy()
    nameless.meta.pop("classes")
    assert evo.ops.apply(nameless, "add_classes", k=1).classes == [f"class_{i}" for i in range(11)]


def test_chained_growth_stays_exact() -> None:
    """deepen, then add_branch (at the new activation), then add_classes: the child still matches the parent."""
    for name in ("small_cnn", "mobilenet_v3_small"):
        g, x, y = parent(name)
        snap = snapshot(g)
        after = evo.ops.sites(g, "deepen")[1]["after"]
        a = evo.ops.apply(g, "deepen", site={"after": after})
        new_act = a.consumers(a.consumers(a.consumers(after)[0])[0])[0]
        site = next(s for s in evo.ops.sites(a, "add_branch") if s["dst"] == new_act)
        b = evo.ops.apply(a, "add_branch", site=site)
        c = evo.ops.apply(b, "add_classes", names=["new_a", "new_b"])
        assert [h["op"] for h in c.meta["history"]] == ["deepen", "add_branch", "add_classes"]
        z = logits(c, x)
        err = (z[:, : y.shape[1]] - y).abs().max().item()
        assert err <= 1e-5 * max(1.0, y.abs().max().item()), f"{name}: chained max diff {err:.3g}"
        assert torch.equal(z.argmax(1), y.argmax(1)) and (z[:, y.shape[1]:] == -1e4).all()
        assert c.validate() and c.num_params() > b.num_params() > a.num_params() > g.num_params()
        assert_unchanged(g, snap)


def test_head_without_bias_gets_one() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3, bias=False))
    g = from_module(m, (3, 8, 8), name="nobias")
    x = torch.randn(4, 3, 8, 8)
    y = logits(g, x)
    child = evo.ops.apply(g, "add_classes", k=2)
    z = logits(child, x)
    torch.testing.assert_close(z[:, :3], y, rtol=0, atol=1e-6)
    assert (z[:, 3:] == -1e4).all() and child.attrs(child.head)["bias"] is True
    assert child.num_params() - g.num_params() == 2 * 4 + 5


# ---- refusals ------------------------------------------------------------------------------------
@pytest.mark.parametrize("params,match", [
    ({"k": 0}, r"k \(number of new classes\) must be an integer >= 1; got 0"),
    ({"k": -2}, r"k .*got -2"),
    ({"k": 1.5}, r"k .*got 1.5"),
    ({"k": True}, r"k .*got True"),
    ({"names": ["a", "b", "a"]}, r"names must be unique; \['a'\] appear more than once"),
    ({"names": []}, r"names must be a non-empty list"),
    ({"names": "cat"}, r"names must be a non-empty list of class names; got 'cat'"),
    ({"names": ["cat", 3]}, r"names must be non-empty strings; got \[3\]"),
    ({"names": ["cat", ""]}, r"names must be non-empty strings"),
    ({"k": 2, "names": ["cat"]}, r"k=2 but 1 names were given"),
    ({"names": ["class_3", "cat"]}, r"names \['class_3'\] are already classes of this model"),
    ({"bias": float("nan")}, r"bias must be a finite float"),
    ({"bias": "low"}, r"bias must be a finite float.*got 'low'"),
    ({"classes": 2}, r"no parameter\(s\) \['classes'\]"),
])
def test_bad_params(params: dict, match: str) -> None:
    g, _, _ = parent("small_cnn")
    with pytest.raises(ConfigError, match=match):
        evo.ops.apply(g, "add_classes", site={"head": "classifier"}, **params)


def test_graph_without_linear_head_refused() -> None:
    g, _, _ = parent("small_cnn")
    headless = g.copy()
    headless.remove_node("classifier")
    headless.add_edge("drop", "output")
    headless.validate()
    assert headless.head is None and evo.ops.sites(headless, "add_classes") == []
    with pytest.raises(InvalidSiteError, match=r"needs a Linear head feeding the output.*'drop' \(dropout\)"):
        evo.ops.apply(headless, "add_classes", site={"head": "classifier"})
    with pytest.raises(InvalidSiteError):
        evo.ops.apply(headless, "add_classes")
    with pytest.raises(InvalidSiteError, match="add_classes does not apply"):
        evo.ops.apply(g, "add_classes", site={"head": "fc1"})


def test_class_list_must_match_head() -> None:
    g, _, _ = parent("small_cnn")
    bad = g.copy()
    bad.meta["classes"] = ["a", "b"]
    with pytest.raises(GraphError, match=r"lists 2 classes but the head 'classifier' has 10 outputs"):
        evo.ops.apply(bad, "add_classes", k=1)
    assert issubclass(GraphError, EvoError)


def test_exactness_check_can_fail() -> None:
    """A new row with a non-zero weight changes nothing old, but a touched old row must be caught."""
    g, x, y = parent("small_cnn")
    child = evo.ops.apply(g, "add_classes", k=1)
    w = child.params("classifier")["weight"].clone()
    w[0] += 1e-6
    child.set_params("classifier", weight=w)
    with pytest.raises(AssertionError, match="old logits changed"):
        assert_old_logits_kept(child, x, y, 1, -1e4)
