"""The Learner end to end on small real data (sklearn digits, small_cnn): metrics, exactness, cost, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import evo
import evo.data
import evo.zoo
from evo.data import ImageSet, Preprocess
from evo.errors import ConfigError, DataError, EvoError, UnknownNameError
from evo.learn import IncrementReport, Learner, RidgeHead
from evo.learn.cost import forward_flops, gcv_eval_flops, gram_flops
from evo.learn.train import forward_flops_per_image

SIZE = 16
ORDER_A = [f"digit-{d}" for d in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)]
ORDER_B = [f"digit-{d}" for d in (7, 3, 9, 0, 5, 1, 8, 2, 6, 4)]


def model(num_classes: int = 3):
    return evo.zoo.load("small_cnn", num_classes=num_classes, input_size=SIZE, seed=1)


def _capped(data: ImageSet, per_class: int, seed: int) -> ImageSet:
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(data.labels == c))[:per_class] for c in range(len(data.classes))]
    return data.subset(np.sort(np.concatenate(keep)))


def digits_stream(order=None, increments=3, per_class_train=30, per_class_test=15, seed=0):
    """A class-incremental digits stream; the same images whatever the class order."""
    train, test = evo.data.load_source("digits")
    source = (_capped(train, per_class_train, seed), _capped(test, per_class_test, seed + 1))
    return evo.data.class_incremental(source, increments=increments, seed=seed, order=order)


@pytest.fixture(scope="module")
def evo_run():
    """One evo learner over a 3-increment digits stream (shared by several tests)."""
    torch.manual_seed(0)
    learner = Learner(model(), memory=40, strategy="evo", progress=False)
    stream = digits_stream(ORDER_A)
    reports = [learner.learn(inc) for inc in stream]
    return learner, stream, reports


def test_end_to_end_reports_and_accuracy_matrix(evo_run):
    learner, stream, reports = evo_run
    assert [r.index for r in reports] == [0, 1, 2]
    assert learner.classes_ == stream.classes == learner.graph_.classes
    m = learner.accuracy_matrix_.matrix
    assert m.shape == (3, 3)
    assert np.isnan(m[np.triu_indices(3, 1)]).all()
    low = m[np.tril_indices(3)]
    assert ((low >= 0) & (low <= 1)).all()
    for i, r in enumerate(reports):
        assert isinstance(r, IncrementReport)
        assert r.row == list(m[i, : i + 1])
        assert len(r.new_classes) == len(stream[i].new_classes)
        line = str(r)
        assert "\n" not in line and f"increment {i}" in line and "TFLOPs" in line
    # the report's pooled accuracy is the learner's score on the same test set, and the rows are
    # per-increment accuracies of the same predictions
    assert reports[-1].accuracy == pytest.approx(learner.score(stream[-1].test))
    assert m[2, 0] == pytest.approx(learner.score(stream[-1].test_by_increment[0]))
    # learning happened: 10 classes from 30 images each, well above chance (10%)
    assert reports[-1].accuracy > 0.5
    assert reports[-1].average_incremental_accuracy == pytest.approx(
        np.mean([r.accuracy for r in reports]))
    assert reports[0].forgetting is None and reports[-1].forgetting is not None


def _head_solution(learner: Learner) -> dict[str, np.ndarray]:
    """The ridge solution stored in the graph, per class name (the Linear holds scale × solution)."""
    g = learner.graph_
    p = g.params(g.head)
    w = torch.cat([p["weight"], p["bias"][:, None]], 1).double() / g.meta["head_scale"]
    return {c: w[i].numpy() for i, c in enumerate(g.classes)}


def _all_train(stream) -> ImageSet:
    sets = [inc.train.relabel(stream.classes) for inc in stream]
    return evo.data.concat(sets)


def joint_solve(learner: Learner, stream, ridge: float) -> tuple[np.ndarray, RidgeHead, torch.Tensor]:
    """One ridge solve (at `ridge`) on the learner's finished network's features of all the stream's training
    data at once: its [weight | bias] rows, the head, and the features."""
    data = _all_train(stream)
    net = learner.graph_.to_module().eval().to(memory_format=torch.channels_last)
    pre = learner.preprocess
    with torch.inference_mode():
        feats = torch.cat([net.forward_features(pre(data.images[i : i + 256]).contiguous(
            memory_format=torch.channels_last)) for i in range(0, len(data), 256)])
    labels = torch.as_tensor([learner.classes_.index(data.classes[y]) for y in data.labels])
    joint = RidgeHead(ridge).fit(feats, labels, len(learner.classes_))
    w, b = joint.solve()
    return torch.cat([w, b[:, None]], 1).numpy(), joint, feats


@pytest.mark.parametrize("order", [ORDER_A, ORDER_B], ids=["order-a", "order-b"])
def test_evo_head_equals_joint_solve_for_any_class_order(order):
    stream = digits_stream(order)
    learner = Learner(model(), memory=40, strategy="evo", progress=False)
    reports = [learner.learn(inc) for inc in stream]
    want, joint, _ = joint_solve(learner, stream, reports[-1].info["ridge"])
    got = _head_solution(learner)
    for i, c in enumerate(learner.classes_):
        rel = np.linalg.norm(got[c] - want[i]) / np.linalg.norm(want[i])
        assert rel < 1e-6, (c, rel)
    # and the statistics themselves match (order-invariant sums)
    stats = learner.strategy.head_
    assert torch.allclose(stats.gram_, joint.gram_, rtol=1e-9, atol=1e-9)


def test_two_class_orders_give_the_same_head():
    heads = []
    for order in (ORDER_A, ORDER_B):
        learner = Learner(model(), memory=40, strategy="evo", progress=False, ridge=10.0)
        for inc in digits_stream(order):
            learner.learn(inc)
        heads.append(_head_solution(learner))
    for c in ORDER_A:
        a, b = heads[0][c], heads[1][c]
        assert np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-6


def test_gcv_walk_finds_the_grid_minimum():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 12)) * np.linspace(0.1, 3, 12)
    y = (x[:, 0] + x[:, 1] + rng.normal(size=200) > 0).astype(int) + 2 * (x[:, 2] > 0)
    head = RidgeHead().fit(x, y)
    for lam in (0.01, 0.3, 3.0, 100.0):
        score, flops = head.gcv(lam)
        assert flops == gcv_eval_flops(13, 4) and score == head.gcv_score(lam)
    assert head.gcv_walk()[0] > 0  # default start: the mean feature variance × n
    for start in (1.0, 1e-3, 1e4):
        lam, _ = head.gcv_walk(start=start)
        grid = [1.0 * 10 ** (k / 2) for k in range(-20, 21)]
        best = min(grid, key=head.gcv_score)
        assert lam == pytest.approx(best, rel=1e-9)


def test_memory_budget_respected_and_balanced(evo_run):
    learner, stream, _ = evo_run
    mem = learner.memory_
    assert len(mem) <= 40
    counts = mem.per_class_counts()
    assert sorted(counts) == list(range(10))
    assert max(counts.values()) - min(counts.values()) <= 1
    assert mem.images.dtype == np.uint8 and mem.features.shape[1] == learner.graph_.attrs(learner.graph_.head)["in_features"]


def test_memory_budget_for_replay_each_increment():
    learner = Learner(model(), memory=25, strategy="replay", progress=False, epochs=1, batch_size=32)
    for inc in digits_stream(ORDER_A, per_class_train=12, per_class_test=4):
        r = learner.learn(inc)
        assert r.memory_size == len(learner.memory_) <= 25
        assert set(learner.memory_.per_class_counts()) == set(range(len(learner.classes_)))


def test_cost_recorded_and_consistent_with_steps():
    # naive: cost is exactly steps × the priced step (no memory, no extra passes); 4 classes × 16 = 64
    learner = Learner(model(), memory=10, strategy="naive", progress=False, epochs=2, batch_size=16)
    stream = digits_stream(ORDER_A, increments=2, per_class_train=16, per_class_test=4)
    r = learner.learn(stream[0])
    assert r.info["steps"] == 2 * (len(stream[0].train) // 16)
    net = learner.graph_.to_module()
    per_step = evo.learn.train_flops(net, torch.empty(16, 3, SIZE, SIZE))
    assert per_step > 0
    assert r.cost.flops == r.info["steps"] * per_step
    assert r.cost.seconds > 0 and r.cost.peak_mem_bytes > 0
    assert learner.cost_.flops == r.cost.flops


def test_evo_cost_is_feature_pass_plus_statistics(evo_run):
    learner, stream, reports = evo_run
    net = learner.graph_.to_module()
    fpi = forward_flops_per_image(net, (3, SIZE, SIZE), features_only=True)
    assert fpi < forward_flops(net, torch.empty(1, 3, SIZE, SIZE))  # features stop before the head
    d = learner.graph_.attrs(learner.graph_.head)["in_features"] + 1
    for inc, r in zip(stream, reports, strict=True):
        n = len(inc.train)
        assert r.cost.flops >= n * fpi + gram_flops(n, d, 0)  # forward + Gram update at least
        assert r.cost.flops < n * fpi + 2 * n * d * (d + 10) + 20 * d**3 + 10**7


def test_evo_cost_is_exactly_the_priced_work_with_a_fixed_ridge():
    stream = digits_stream(ORDER_A)
    learner = Learner(model(), memory=40, strategy="evo", progress=False, ridge=1.0)
    r = learner.learn(stream[0])
    n, c = len(stream[0].train), len(learner.classes_)
    d = learner.graph_.attrs(learner.graph_.head)["in_features"]
    fpi = forward_flops_per_image(learner.graph_.to_module(), (3, SIZE, SIZE), features_only=True)
    stats = gram_flops(n, d + 1, c)  # G += ΦᵀΦ (its upper block triangle) and B += ΦᵀY, as torch's counter counts them
    solve = (d + 1) ** 3 // 3 + 4 * (d + 1) ** 2 * c
    calibration = 2 * n * c * d
    assert r.cost.flops == n * fpi + stats + solve + calibration


def test_predict_returns_class_names_and_probabilities(evo_run):
    learner, stream, _ = evo_run
    images = stream[-1].test.images[:7]
    names, probs = learner.predict(images)
    assert len(names) == 7 and set(names) <= set(learner.classes_)
    assert probs.shape == (7,) and ((probs > 0) & (probs <= 1)).all()
    proba = learner.predict_proba(images)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-9)
    assert names == [learner.classes_[i] for i in proba.argmax(1)]
    # grayscale (N, H, W) input is accepted and gives the same answer
    gray_names, _ = learner.predict(images[..., 0])
    assert gray_names == names


def test_state_dict_is_tensors_and_restores_a_learner(evo_run):
    learner, stream, _ = evo_run
    sd = learner.state_dict()
    assert sd and all(isinstance(v, torch.Tensor) for v in sd.values())
    assert {"memory.items", "memory.labels", "strategy.head.gram", "strategy.head.xty"} <= set(sd)
    restored = Learner(model(), memory=40, strategy="evo", progress=False).load_state_dict(sd, learner.graph_)
    assert restored.classes_ == learner.classes_ and len(restored.memory_) == len(learner.memory_)
    extra = digits_stream(ORDER_A, increments=3, per_class_train=5, per_class_test=5, seed=3)[-1]
    a = learner.with_graph(learner.graph_)
    a._backbone_changed = False  # same graph: continue on the fast path in both
    ra, rb = a.learn(extra.train), restored.learn(extra.train)
    assert ra.info["ridge"] == rb.info["ridge"]
    pa, pb = a.graph_.params(a.graph_.head), restored.graph_.params(restored.graph_.head)
    assert torch.allclose(pa["weight"], pb["weight"], atol=1e-6)


def test_with_graph_is_independent_and_keeps_statistics_of_unchanged_features(evo_run):
    learner, stream, reports = evo_run
    before = learner.state_dict()["strategy.head.gram"].clone()
    n_before = learner.strategy.head_.n_samples_
    child = learner.with_graph(learner.graph_.copy())
    new = ImageSet(stream[-1].test.images[:12], np.zeros(12, dtype=np.int64), ["digit-0"])
    r = child.learn(new)
    assert r.info["statistics_kept"] is True and r.info["rebuilt_from_memory"] is False
    assert r.info["exact_head"] is True  # what the search's `ties: lossless` reads
    assert len(learner.reports_) == 3 and len(child.reports_) == 4
    assert torch.equal(learner.state_dict()["strategy.head.gram"], before)
    assert child.strategy.head_.n_samples_ == n_before + 12  # exact: nothing was dropped
    assert r.row is None and r.accuracy is None  # an ImageSet has no test data


def test_unchanged_features_give_the_fast_paths_head_scale_included():
    """A copy whose features did not change (function-preserving growth under a frozen head) computes
    what the parent does on the fast path: the same statistics, and the same softmax temperature,
    calibrated on the increment plus the memory's features, which still hold. (Calibrated on the
    increment alone, its log-loss differed, and the search's tie-break chose growth that changed
    nothing the head reads.)"""
    torch.manual_seed(0)
    stream = digits_stream(ORDER_A)
    learner = Learner(model(), memory=40, strategy="evo", ridge=10.0, progress=False)  # a scale inside the grid
    for inc in stream[:2]:
        learner.learn(inc)
    fast, child = learner.with_graph(learner.graph_), learner.with_graph(learner.graph_.copy())
    fast._backbone_changed = False  # the parent itself, continuing on the fast path
    ra, rb = fast.learn(stream[2]), child.learn(stream[2])
    assert rb.info["statistics_kept"] is True
    assert rb.info["head_scale"] == pytest.approx(ra.info["head_scale"], rel=1e-9)
    x = stream[2].test.images
    assert np.abs(fast.predict_proba(x) - child.predict_proba(x)).max() < 1e-6


def test_with_graph_rebuilds_from_memory_when_features_changed(evo_run):
    learner, stream, _ = evo_run
    changed = learner.graph_.copy()
    first = next(n for n in changed.nodes() if "weight" in changed.params(n) and n != changed.head)
    changed.set_params(first, weight=changed.params(first)["weight"] * 1.5)  # as fine-tuning would
    child = learner.with_graph(changed)
    r = child.learn(ImageSet(stream[-1].test.images[:12], np.zeros(12, dtype=np.int64), ["digit-0"]))
    assert r.info["statistics_kept"] is False and r.info["rebuilt_from_memory"] is True
    assert child.strategy.head_.n_samples_ == len(learner.memory_) + 12
    assert r.info["exact_head"] is False  # the memory held 40 of the images seen: the rest are lost


def test_a_rebuild_from_a_memory_that_holds_everything_is_exact():
    """When the memory still holds every image seen, a head rebuilt from it lost nothing (`exact_head`)."""
    torch.manual_seed(0)
    learner = Learner(model(), memory=10_000, strategy="evo", progress=False)
    stream = digits_stream(ORDER_A)
    learner.learn(stream[0])
    changed = learner.graph_.copy()
    first = next(n for n in changed.nodes() if "weight" in changed.params(n) and n != changed.head)
    changed.set_params(first, weight=changed.params(first)["weight"] * 1.5)
    r = learner.with_graph(changed).learn(stream[1])
    assert r.info["rebuilt_from_memory"] is True and r.info["exact_head"] is True
    assert r.info["n_samples"] == len(stream[0].train) + len(stream[1].train)


def test_data_incremental_new_samples_of_known_classes():
    stream = evo.data.data_incremental("digits", increments=2, per_class_train=10, per_class_test=5)
    learner = Learner(model(), memory=30, strategy="evo", progress=False)
    r0, r1 = learner.learn(stream[0]), learner.learn(stream[1])
    assert len(r0.new_classes) == 10 and r1.new_classes == []
    assert learner.strategy.head_.n_samples_ == len(stream[0].train) + len(stream[1].train)
    assert learner.accuracy_matrix_.matrix.shape == (2, 2)


# -- errors -----------------------------------------------------------------------------------


def test_bad_inputs_raise_evo_errors(evo_run):
    learner, stream, _ = evo_run
    fresh = Learner(model(), progress=False)
    with pytest.raises(ConfigError, match="learn"):
        fresh.predict(stream[0].test.images[:2])
    with pytest.raises(DataError, match="Increment or a labelled"):
        fresh.learn(np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="no training images"):
        fresh.learn(ImageSet(np.zeros((0, 8, 8, 3), np.uint8), np.zeros(0, np.int64), ["a"]))
    nan = np.full((2, 8, 8, 3), np.nan, dtype=np.float32)
    with pytest.raises(DataError, match="uint8.*NaN"):
        learner.predict(nan)
    with pytest.raises(DataError, match="not classes of this model"):
        learner.score(ImageSet(np.zeros((2, 8, 8, 3), np.uint8), np.zeros(2, np.int64), ["zebra"]))
    with pytest.raises(UnknownNameError, match="valid names: evo, .*joint, lwf, naive, replay"):
        Learner(model(), strategy="sgd-magic")
    with pytest.raises(ConfigError, match="no option"):
        Learner(model(), strategy="evo", epochs=3)
    with pytest.raises(ConfigError, match="trainable"):
        Learner(model(), strategy="naive", trainable="some")
    with pytest.raises(ConfigError, match="head"):
        Learner(model(), head="maybe")
    with pytest.raises(ConfigError, match="memory"):
        Learner(model(), memory=0)
    with pytest.raises(ConfigError, match="ridge"):
        Learner(model(), ridge=-1.0)
    assert issubclass(DataError, EvoError)


def test_failed_learn_leaves_the_learner_unchanged(evo_run):
    learner, stream, _ = evo_run
    broken = learner.with_graph(learner.graph_.copy())
    g = broken.graph_
    first_conv = next(n for n in g.nodes() if g.op(n) == "conv2d")
    g.set_params(first_conv, weight=torch.full_like(g.params(first_conv)["weight"], math.nan))
    n_reports, classes = len(broken.reports_), list(broken.classes_)
    with pytest.raises(DataError, match="NaN"):
        broken.learn(stream[0].train)
    assert len(broken.reports_) == n_reports and broken.classes_ == classes


def test_head_keep_continues_a_models_own_classes():
    g = model(num_classes=2)
    g.meta["classes"] = ["digit-0", "digit-1"]
    learner = Learner(g, strategy="naive", progress=False, epochs=1, head="keep")
    stream = digits_stream(ORDER_A, increments=5, per_class_train=6, per_class_test=2)
    r = learner.learn(stream[1])  # digit-2, digit-3 arrive; the model keeps digit-0, digit-1
    assert learner.classes_ == ["digit-0", "digit-1", "digit-2", "digit-3"]
    assert r.new_classes == ["digit-2", "digit-3"]
    with pytest.raises(ConfigError, match="without statistics"):
        Learner(g, strategy="evo", head="keep", progress=False).learn(stream[1])


def test_preprocessing_is_stored_in_the_graph(evo_run):
    learner, _, _ = evo_run
    pre = Preprocess.from_dict(learner.graph_.meta["preprocess"])
    assert pre.input_size == SIZE and learner.preprocess == pre


def test_a_fine_tune_is_exact_only_while_the_memory_holds_everything_seen():
    """evo_tune refits its head from memory + increment: exact on the first increment, lossy once the
    memory (40) holds less than was seen; a gradient strategy never says its head is exact."""
    torch.manual_seed(0)
    stream = digits_stream(ORDER_A, increments=2)
    tuned = Learner(model(), memory=40, strategy="evo_tune", progress=False, epochs=1)
    first, second = (tuned.learn(inc) for inc in stream)
    assert first.info["exact_head"] is True and second.info["exact_head"] is False
    assert second.info["n_samples"] == 40 + len(stream[1].train)
    replay = Learner(model(), memory=40, strategy="replay", progress=False, epochs=1)
    assert "exact_head" not in replay.learn(stream[0]).info
