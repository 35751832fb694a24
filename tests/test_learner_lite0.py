"""A few checks on the pretrained EfficientNet-Lite0 at small input sizes (Fashion-MNIST subsets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import evo.data
import evo.zoo
from evo.errors import DataError
from evo.graph.taps import block_outputs, cut_nodes, is_tapped
from evo.learn import Learner, Tap, auto_taps, tap_graph


@pytest.fixture(scope="module")
def lite0():
    try:
        return evo.zoo.load("efficientnet_lite0", pretrained=True, input_size=64)
    except evo.EvoError as e:  # weights package missing
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def fashion():
    try:
        train, test = evo.data.load_source("fashion-mnist")
    except DataError as e:
        pytest.skip(str(e))
    return train, test


def test_auto_taps_pick_stride_8_and_16_block_outputs(lite0):
    assert auto_taps(lite0) == [Tap("add_1", 4), Tap("add_5", 4)]
    assert auto_taps(lite0, ((8, 8), (16, 4))) == [Tap("add_1", 8), Tap("add_5", 4)]
    assert lite0.shape("add_1") == (40, 8, 8) and lite0.shape("add_5") == (112, 4, 4)
    outs = block_outputs(lite0)
    assert set(outs) <= set(cut_nodes(lite0)) and "add_1" in outs and "blocks_4_expand_conv" not in outs


def test_auto_plus_features_taps_keep_the_top_of_the_network_in_the_head(lite0):
    from evo.learn.features import parse_taps

    taps = parse_taps(lite0, "auto+features")
    assert taps == [Tap("add_1", 4), Tap("add_5", 4), Tap(lite0.features, 1)]
    tapped = tap_graph(lite0, taps)
    # the head reads the pooled 1280-d features too, so head_conv (stride 32) stays in the graph
    assert "head_conv" in tapped and tapped.attrs(tapped.head)["in_features"] == 40 * 16 + 112 * 16 + 1280
    with pytest.raises(evo.EvoError, match=r"auto\+features"):
        parse_taps(lite0, "auto+feature")


def test_tapped_graph_computes_the_pooled_taps_and_stops_early(lite0):
    tapped = tap_graph(lite0, auto_taps(lite0, ((8, 8), (16, 4))))
    assert is_tapped(tapped) and not is_tapped(lite0)
    assert "head_conv" not in tapped and "add_5" in tapped and tapped.head == lite0.head
    assert tapped.attrs(tapped.head)["in_features"] == 40 * 64 + 112 * 16
    assert tapped.flops() < 0.8 * lite0.flops()
    x = torch.randn(3, 3, 64, 64)
    ref = lite0.to_module().eval()
    seen = {}
    for n in ("add_1", "add_5"):
        ref._modules[n].register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))
    with torch.no_grad():
        ref(x)
        want = torch.cat([torch.nn.functional.adaptive_avg_pool2d(seen["add_1"], 8).flatten(1),
                          torch.nn.functional.adaptive_avg_pool2d(seen["add_5"], 4).flatten(1)], 1)
        got = tapped.to_module().eval().forward_features(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_lite0_learns_fashion_increments_on_the_fast_path(lite0, fashion):
    stream = evo.data.class_incremental(fashion, increments=2, seed=0, order=["Trouser", "Bag", "Sneaker", "Dress"],
                                        per_class_train=30, per_class_test=20)
    learner = Learner(lite0, memory=20, progress=False, ridge=1e3)  # fixed λ: GCV is tested on small data
    reports = [learner.learn(inc) for inc in stream]
    assert learner.classes_ == ["Trouser", "Bag", "Sneaker", "Dress"]
    assert reports[-1].accuracy > 0.85 and reports[-1].info["feature_dim"] == 40 * 16 + 112 * 16
    # preprocessing of the model version (mean = std = 0.5 at 64 px) travels with the graph
    assert learner.graph_.meta["preprocess"]["input_size"] == 64
    names, probs = learner.predict(stream[1].test.images[:5])
    assert names == [learner.classes_[i] for i in learner.predict_proba(stream[1].test.images[:5]).argmax(1)]


def test_lite0_last_blocks_training_changes_only_those_blocks(fashion):
    g = evo.zoo.load("efficientnet_lite0", pretrained=True, input_size=32)
    train, test = fashion
    rng = np.random.default_rng(0)
    idx = np.concatenate([rng.choice(np.flatnonzero(train.labels == c), 8, replace=False) for c in (0, 1)])
    data = train.subset(idx).select_classes(["T-shirt/top", "Trouser"])
    learner = Learner(g, strategy="replay", memory=4, selector="reservoir", progress=False, trainable=1,
                      epochs=1, batch_size=8)
    r = learner.learn(data)
    assert r.info["steps"] == 2
    changed = {n for n in g.nodes() if g.params(n) and n in learner.graph_ and n != g.head
               and any(not torch.equal(t, learner.graph_.params(n)[k]) for k, t in g.params(n).items())}
    assert changed and all(n.startswith("head_") for n in changed)


# -- spare taps: growth onto them keeps the ridge statistics exact --------------------------------


def _spare_stream(fashion):
    return evo.data.class_incremental(fashion, increments=2, seed=0, order=["Trouser", "Bag", "Sneaker", "Dress"],
                                      per_class_train=25, per_class_test=20)


def test_spare_tap_is_the_first_block_at_the_finest_tapped_stride(lite0):
    from evo.learn.strategies.evo import Evo
    from evo.learn.tracked import head_taps, spare_taps

    tapped = Evo().prepare(lite0)
    head = head_taps(tapped)
    assert head == [Tap("add_1", 4), Tap("add_5", 4)]
    assert Evo(spare="auto").spare(tapped, head) == [Tap("blocks_3_project_bn", 4)]
    assert Evo().spare(tapped, head) == []  # off by default: the fast path pays for no extra statistics
    assert spare_taps(tapped, ((8, 4), (16, 2)), head) == [Tap("blocks_3_project_bn", 4), Tap("blocks_5_project_bn", 2)]
    assert Evo(spare="auto").statistics_width(tapped) == 2432 + 40 * 16


@pytest.mark.parametrize("grid", [4, 2])
def test_growing_onto_a_spare_tap_equals_having_had_it_from_the_start(lite0, fashion, grid):
    """add_tap onto the spare block after increment 0 gives the same head as a model that read that tap
    from the first image on: the statistics were kept for it (grid 2 = exact average of the 4×4 cells)."""
    import evo.ops
    from evo.learn.tracked import head_taps

    stream = _spare_stream(fashion)
    learner = Learner(lite0, memory=20, strategy="evo", spare="auto", ridge=1.0, progress=False)
    learner.learn(stream[0])
    (spare,) = learner.strategy.spare_growths(learner.graph_)
    grown = evo.ops.apply(learner.graph_, "add_tap", {"node": spare.node}, grid=grid)
    child = learner.with_graph(grown)
    report = child.learn(stream[1])
    assert report.info["statistics_kept"] is True and report.info["rebuilt_from_memory"] is False
    assert child.strategy.head_.n_samples_ == len(stream[0].train) + len(stream[1].train)
    taps = [(t.node, t.grid) for t in head_taps(learner.graph_)] + [(spare.node, grid)]
    oracle = Learner(lite0, memory=20, strategy="evo", taps=taps, ridge=1.0, progress=False)
    oracle.learn(stream[0])
    oracle.learn(stream[1])
    x = stream[1].test.images
    assert np.abs(child.predict_proba(x) - oracle.predict_proba(x)).max() < 1e-4
    assert child.strategy.spare_growths(child.graph_) == []  # the spare tap is now read by the head


def test_a_tap_without_statistics_is_refit_from_memory(lite0, fashion):
    import evo.ops
    from evo.learn.tracked import head_map, head_taps

    stream = _spare_stream(fashion)
    learner = Learner(lite0, memory=20, strategy="evo", spare="auto", progress=False)
    learner.learn(stream[0])
    grown = evo.ops.apply(learner.graph_, "add_tap", {"node": "blocks_1_project_bn"}, grid=2)
    with pytest.raises(KeyError):
        head_map(grown, head_taps(grown), learner.strategy.layout(learner.graph_))
    report = learner.with_graph(grown).learn(stream[1])
    assert report.info["statistics_kept"] is False and report.info["rebuilt_from_memory"] is True


def test_same_result_holds_only_for_growth_the_frozen_head_cannot_see(lite0, fashion):
    """`evo` learns the same with a deepened or widened graph (function-preserving, the taps' features
    unchanged) as with its parent, and the growth search skips such candidates; a changed layer below the
    taps, a new tap, or any strategy that trains the grown graph is not the same."""
    import evo.ops
    from evo.learn.strategies import make_strategy
    from evo.learn.tracked import head_taps

    evo_ = make_strategy("evo")
    base = evo_.prepare(lite0)
    images = fashion[0].images[:8]
    pre = Learner(base, progress=False).preprocess
    tapped = {t.node for t in head_taps(base)}
    deep = evo.ops.apply(base, "deepen", {"after": "blocks_2_expand_act"}, kernel_size=3)
    assert evo_.same_result(base, deep, images, pre)
    for name in ("evo_tune", "evo_latent"):
        assert not make_strategy(name).same_result(base, deep, images, pre)
    wide = evo.ops.apply(base, "widen", {"group": "blocks_2_expand_conv"}, factor=1.5)
    assert evo_.same_result(base, wide, images, pre)  # Net2Wider inside a block: the same function
    tuned = base.copy()
    tuned.set_params("blocks_2_expand_conv", weight=tuned.params("blocks_2_expand_conv")["weight"] * 1.01)
    assert not evo_.same_result(base, tuned, images, pre)  # as a fine-tune below the taps would change it
    spare = next(n for n in cut_nodes(base) if n not in tapped and n in block_outputs(base))
    tap = evo.ops.apply(base, "add_tap", {"node": spare}, grid=1)
    assert not evo_.same_result(base, tap, images, pre)  # the head reads a new tap
