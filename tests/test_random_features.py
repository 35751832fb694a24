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
from test_learner import ORDER_A, _head_solution, digits_stream, joint_solve, model

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
    want, joint, feats = joint_solve(learner, stream, reports[-1].info["ridge"])
    assert feats.shape[1] == g.attrs(g.head)["in_features"]
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


def test_statistics_match_the_graph_after_evo_latent_and_a_plain_evo_step():
    """`evo_latent` fits the expansion as `evo` does, so a version it commits and an `evo` step after it keep
    statistics that are exactly those of the graph's own features (found by review: an unfitted node once
    got its standardisation refitted under statistics summed through the identity)."""
    from test_latent_store import _data

    from evo.learn.latent import StoreConfig

    classes = ["a", "b", "c", "d", "e", "f"]
    incs = [_data(12, classes[:2], 0), _data(12, classes[2:4], 1), _data(12, classes[4:], 2)]
    g = evo.zoo.load("small_cnn")
    latent = Learner(g, memory=30, strategy="evo_latent", progress=False, epochs=1, lr=1e-3, expand=16,
                     latents=StoreConfig(cut=1, codec="fp32"))
    for inc in incs[:2]:
        latent.learn(inc)
    rf = head_expansion(latent.graph_)
    assert latent.graph_.attrs(rf)["fitted"] is True
    assert not torch.allclose(latent.graph_.params(rf)["feature_scale"], torch.ones(1))
    plain = Learner(g, memory=30, strategy="evo", progress=False, expand=16).load_state_dict(
        latent.state_dict(), latent.graph_)
    report = plain.learn(incs[2])
    assert report.info["exact_head"] is True
    assert torch.equal(plain.graph_.params(rf)["feature_scale"], latent.graph_.params(rf)["feature_scale"])
    net = plain.graph_.to_module().eval()
    fresh = RidgeHead(1.0)
    for inc in incs:
        names = [inc.classes[i] for i in inc.labels]
        with torch.inference_mode():
            feats = net.forward_features(plain.preprocess(inc.images))
        fresh.partial_fit(feats, torch.tensor([plain.classes_.index(c) for c in names]), len(classes))
    scale = float(fresh.gram_.abs().max())
    assert float((plain.strategy.head_.gram_ - fresh.gram_).abs().max()) <= 1e-5 * scale


def test_expand_on_a_graph_tapped_without_it_is_refused_and_one_image_standardises_safely():
    from evo.graph.layers import standardisation

    plain = Learner(model(), memory=10, strategy="evo", progress=False)
    plain.learn(digits_stream(ORDER_A)[0])
    with pytest.raises(ConfigError, match="already reads its taps without them"):
        Learner(plain.graph_, strategy="evo", progress=False, expand=8, head="keep").learn(
            digits_stream(ORDER_A)[1])
    mean, scale = standardisation(torch.randn(1, 5, dtype=torch.float64))
    assert torch.equal(scale, torch.ones(5, dtype=torch.float64))
