"""The `evo` strategy's random features (`expand`): a `random_features` node between the taps and the head.

The head then reads the taps and random ReLU features of them (RanPAC's expansion kept beside its
input). It must stay everything the plain fast path is: exact (incremental == the joint ridge solve on
the same features), saved without its matrix, priced as the meta-device counter counts it, and usable
by the corrections engine; operators that cannot keep it exact must not offer it a site.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ophelpers import assert_exact, logits
from test_learner import ORDER_A, _all_train, _head_solution, digits_stream, model

import evo.data
import evo.zoo
from evo.errors import ConfigError
from evo.graph.cost import meta_flops
from evo.graph.io import load, save
from evo.graph.layers import random_matrix
from evo.graph.taps import head_expansion, tap_graph
from evo.learn import Learner, RidgeHead
from evo.learn.features import auto_taps
from evo.learn.tracked import head_taps
from evo.ops import get_op

EXPAND = 48


@pytest.fixture(scope="module")
def expanded():
    stream = digits_stream(ORDER_A)
    learner = Learner(model(), memory=40, strategy="evo", progress=False, expand=EXPAND)
    reports = [learner.learn(inc) for inc in stream]
    return learner, stream, reports


def test_the_expanded_head_is_the_joint_ridge_solve(expanded):
    learner, stream, reports = expanded
    g = learner.graph_
    rf = head_expansion(g)
    taps = head_taps(g)
    assert rf is not None and g.attrs(rf)["fitted"] is True
    assert g.attrs(g.head)["in_features"] == g.attrs(rf)["in_features"] + EXPAND
    plain = Learner(model(), memory=40, strategy="evo", progress=False)
    plain.learn(stream[0])
    assert taps == head_taps(plain.graph_)  # the same taps, read as they are, with features of them beside
    scale = g.params(rf)["feature_scale"]
    assert not torch.allclose(scale, torch.ones_like(scale))  # standardised on the first increment
    # joint: one ridge solve on the finished network's features of all the training data at once
    data = _all_train(stream)
    net = g.to_module().eval()
    with torch.inference_mode():
        feats = net.forward_features(learner.preprocess(data.images))
    assert feats.shape[1] == g.attrs(g.head)["in_features"]
    labels = torch.as_tensor([learner.classes_.index(data.classes[y]) for y in data.labels])
    joint = RidgeHead(reports[-1].info["ridge"]).fit(feats, labels, len(learner.classes_))
    w, b = joint.solve()
    want = torch.cat([w, b[:, None]], 1).numpy()
    got = _head_solution(learner)
    # (fp32 features: x·W's rounding depends on the batch it ran in; a refit that lost data is off by 1e-2)
    for i, c in enumerate(learner.classes_):
        assert np.linalg.norm(got[c] - want[i]) / np.linalg.norm(want[i]) < 1e-5, c
    assert torch.allclose(learner.strategy.head_.gram_, joint.gram_, rtol=1e-5, atol=1e-5)
    assert reports[-1].info["feature_dim"] == feats.shape[1]


def test_the_node_keeps_its_input_and_stores_no_matrix(expanded, tmp_path):
    learner, stream, _ = expanded
    g = learner.graph_
    rf = head_expansion(g)
    n_in = g.attrs(rf)["in_features"]
    assert set(g.params(rf)) == {"feature_mean", "feature_scale"}  # the matrix is regenerated from the seed
    net = g.to_module().eval()
    x = learner.preprocess(stream[0].test.images[:5])
    with torch.no_grad():
        out = net.forward_features(x)
        raw = tap_graph(g, head_taps(g)).to_module().eval().forward_features(x)
    torch.testing.assert_close(out[:, :n_in], raw)  # the taps pass through unchanged
    assert (out[:, n_in:] >= 0).all() and (out[:, n_in:] > 0).any()  # and ReLU features follow
    assert torch.equal(random_matrix(n_in, EXPAND, 0, torch.float32), random_matrix(n_in, EXPAND, 0, torch.float32))
    save(g, tmp_path / "m")
    back = load(tmp_path / "m")
    assert back.attrs(head_expansion(back))["fitted"] is True
    with torch.no_grad():
        torch.testing.assert_close(back.to_module().eval()(x), net(x), rtol=0, atol=0)
    # the weights file grows by the head's wider rows and the two standardisation vectors, not by the matrix
    weights = (tmp_path / "m" / "weights.safetensors").stat().st_size
    assert weights < 4 * (g.num_params() + 4 * n_in) + 65536


def test_pricing_counts_the_expansion_as_torch_does():
    g = evo.zoo.load("small_cnn", num_classes=3, input_size=16, seed=1)
    t = tap_graph(g, auto_taps(g), expand=32)
    for backward in (False, True):
        assert t.flops(backward=backward) == meta_flops(t, backward=backward)
    plain = tap_graph(g, auto_taps(g))
    n_in = plain.attrs(plain.head)["in_features"]
    extra = 2 * n_in * 32 + 2 * 32 * 3  # x·W, and the head's wider rows
    assert t.flops() - plain.flops() == extra
    assert t.num_params() == plain.num_params() + 32 * 3  # buffers are not parameters


def test_operators_offer_no_site_they_cannot_keep_exact():
    torch.manual_seed(0)
    g = evo.zoo.load("efficientnet_lite0", pretrained=True, input_size=32)
    t = tap_graph(g, auto_taps(g), expand=16)
    rf = head_expansion(t)
    t.set_params(rf, feature_mean=torch.randn(t.attrs(rf)["in_features"]) * 0.1)
    t.set_params(t.head, weight=torch.randn_like(t.params(t.head)["weight"]) * 0.1)
    x = torch.randn(2, *t.input_shape, generator=torch.Generator().manual_seed(2))
    y = logits(t, x)
    assert get_op("add_tap").sites(t) == []  # a new tap would not be an input of the expansion
    tapped = {tap.node for tap in head_taps(t)}
    for name in ("widen", "deepen", "add_branch"):
        op = get_op(name)
        sites = op.sites(t)
        for site in sites[:: max(1, len(sites) // 4)]:
            child = op.apply(t, site)
            assert_exact(child, x, y, (name, site))
            if name == "widen":  # a tapped block's width is the expansion's input width: never widened
                assert child.attrs(head_expansion(child))["in_features"] == t.attrs(rf)["in_features"], site
    assert tapped


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2000"])
def test_a_bad_expand_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="expand"):
        Learner(model(), strategy="evo", progress=False, expand=bad)


def test_corrections_work_on_an_expanded_head():
    from evo.active import Corrections

    stream = evo.data.class_incremental("fashion-mnist", increments=2, per_class_train=30, per_class_test=10, seed=0)
    learner = Learner(evo.zoo.load("efficientnet_lite0", pretrained=True, input_size=32), progress=False,
                      expand=64)
    learner.learn(stream[0])
    eng = Corrections.from_learner(learner)
    img = stream[0].test.images[0]
    before = eng.predict(img[None])[0].label
    other = next(c for c in learner.classes_ if c != before)
    r = eng.correct(img, other)
    assert r.holds and eng.predict(img[None])[0].label == other
    eng.undo(r.id)
    assert eng.predict(img[None])[0].label == before
