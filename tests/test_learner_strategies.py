"""Every registered strategy behind the same Learner API, and the training loop's contracts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import evo.data
import evo.learn.train
import evo.zoo
from evo.errors import ConfigError, EvoError
from evo.graph.taps import blocks
from evo.learn import STRATEGIES, Learner, Strategy, TrainConfig, list_strategies, register_strategy
from evo.learn.cost import CostMeter, forward_flops, train_flops
from evo.learn.strategies import make_strategy
from evo.learn.train import fit, lr_factor, trainable_nodes

SIZE = 16
FAST = {"epochs": 1, "batch_size": 32, "lr": 0.05}


def model():
    return evo.zoo.load("small_cnn", num_classes=3, input_size=SIZE, seed=1)


@pytest.fixture(scope="module")
def stream():
    train, test = evo.data.load_source("digits")
    rng = np.random.default_rng(0)

    def cap(d, k):
        return d.subset(np.sort(np.concatenate(
            [rng.permutation(np.flatnonzero(d.labels == c))[:k] for c in range(10)])))

    return evo.data.class_incremental((cap(train, 24), cap(test, 6)), increments=2, seed=0,
                                      order=[f"digit-{d}" for d in range(10)])


def test_registry_lists_every_strategy_and_refuses_duplicates():
    assert {"evo", "ewc", "joint", "lwf", "naive", "replay"} <= set(list_strategies())
    assert list_strategies() == sorted(list_strategies())
    with pytest.raises(ValueError, match="already registered"):
        register_strategy("naive")(type("Other", (Strategy,), {}))
    assert "evo" in STRATEGIES


@pytest.mark.parametrize("name", ["joint", "naive", "replay", "ewc", "lwf"])
def test_each_baseline_runs(stream, name):
    learner = Learner(model(), memory=20, strategy=name, progress=False, **FAST)
    reports = [learner.learn(inc) for inc in stream]
    assert learner.classes_ == stream.classes and learner.graph_.attrs(learner.graph_.head)["out_features"] == 10
    for r in reports:
        assert r.strategy == name and r.cost.flops > 0 and r.info["steps"] > 0
        assert 0 <= r.accuracy <= 1 and len(r.row) == r.index + 1
    names, probs = learner.predict(stream[1].test.images[:4])
    assert len(names) == 4 and set(names) <= set(stream.classes)
    assert (learner.memory_ is not None and len(learner.memory_) > 0) == (name == "replay")
    assert reports[1].forgetting is not None


def test_baselines_learn_and_naive_forgets(stream):
    opts = {"epochs": 4, "batch_size": 16, "optimizer": "adamw", "lr": 3e-3}
    naive = Learner(model(), strategy="naive", progress=False, **opts)
    r0 = naive.learn(stream[0])
    assert r0.accuracy > 0.4  # 5 classes, chance 0.2
    r1 = naive.learn(stream[1])
    # trained on the new classes only: the old ones are (almost) all forgotten
    assert r1.row[0] < r0.row[0] - 0.2 and r1.forgetting > 0.2


def test_joint_costs_grow_with_the_data_seen(stream):
    learner = Learner(model(), strategy="joint", progress=False, **FAST)
    r0, r1 = learner.learn(stream[0]), learner.learn(stream[1])
    assert r1.info["steps"] > r0.info["steps"]
    assert r1.cost.flops > 1.5 * r0.cost.flops
    assert len(learner.strategy.state_dict()["labels"]) == len(stream[0].train) + len(stream[1].train)


def test_lwf_charges_the_teachers_forward(stream):
    plain = Learner(model(), strategy="naive", progress=False, **FAST)
    lwf = Learner(model(), strategy="lwf", progress=False, **FAST)
    for learner in (plain, lwf):
        learner.learn(stream[0])
    rp, rl = plain.learn(stream[1]), lwf.learn(stream[1])
    teacher = forward_flops(plain.graph_.to_module(), torch.empty(32, 3, SIZE, SIZE))
    assert rl.info["steps"] == rp.info["steps"]
    assert rl.cost.flops > rp.cost.flops and rl.cost.flops - rp.cost.flops >= teacher


def test_ewc_estimates_fisher_and_anchors_old_head_rows(stream):
    learner = Learner(model(), strategy="ewc", progress=False, fisher_samples=32, fisher_batch=8, **FAST)
    learner.learn(stream[0])
    sd = learner.strategy.state_dict()
    assert sd and all(k.startswith(("fisher.", "anchor.")) for k in sd)
    assert sd["fisher.classifier.weight"].shape[0] == 5 and (sd["fisher.classifier.weight"] >= 0).all()
    learner.learn(stream[1])
    assert learner.strategy.state_dict()["fisher.classifier.weight"].shape[0] == 10


def test_ewc_caps_a_lambda_that_would_make_sgd_diverge(stream):
    """λ·lr·F > 2 makes plain SGD on the penalty diverge; the cap keeps the loss finite."""
    learner = Learner(model(), strategy="ewc", progress=False, fisher_samples=64, fisher_batch=4,
                      ewc_lambda=1e9, epochs=2, batch_size=16, lr=0.05)
    learner.learn(stream[0])
    top = max(float(f.max()) for f in learner.strategy.fisher_.values())
    r1 = learner.learn(stream[1])  # raises "loss became inf" without the cap
    assert learner.strategy.effective_lambda_ == pytest.approx(1.0 / (0.05 * top))
    assert np.isfinite(r1.info["loss"])
    # the same run with the raw λ diverges, so the cap is what keeps it finite
    raw = Learner(model(), strategy="ewc", progress=False, fisher_samples=64, fisher_batch=4,
                  ewc_lambda=1e9, epochs=2, batch_size=16, lr=0.05)
    raw.learn(stream[0])
    raw.strategy.stable_lambda = lambda fishers: 1e9
    with pytest.raises(EvoError, match="loss became"):
        raw.learn(stream[1])


def test_trainable_head_only_changes_only_the_head(stream):
    learner = Learner(model(), strategy="replay", progress=False, trainable="head", **FAST)
    learner.learn(stream[0])
    before = learner.graph_
    learner.learn(stream[1])
    after = learner.graph_
    for n in before.nodes():
        if n != before.head and before.params(n):
            for k, t in before.params(n).items():
                assert torch.equal(t, after.params(n)[k]), (n, k)
    assert not torch.equal(before.params(before.head)["weight"], after.params(after.head)["weight"][:5])


def test_trainable_last_blocks_and_cheaper_steps():
    g = model()
    names = [k for k, _ in blocks(g)]
    assert names[0] == "stem" and "classifier" not in trainable_nodes(g, 0) - {g.head}
    last_two = trainable_nodes(g, 2) - {g.head}
    assert last_two == {n for _, ns in blocks(g)[-2:] for n in ns}
    net = g.to_module()
    from evo.learn.train import set_trainable

    set_trainable(net, g, "all")
    full = train_flops(net, torch.empty(8, 3, SIZE, SIZE))
    set_trainable(net, g, "head")
    head_only = train_flops(net, torch.empty(8, 3, SIZE, SIZE))
    assert head_only < full  # frozen layers skip their backward


def test_fit_respects_the_flop_cap():
    g = model()
    train, _ = evo.data.load_source("digits")
    net = g.to_module()
    per_step = train_flops(net, torch.empty(16, 3, SIZE, SIZE))
    cfg = TrainConfig(epochs=3, batch_size=16, max_flops=int(2.5 * per_step))
    meter = CostMeter("cpu")
    labels = train.labels[:64] % 3
    pre = evo.data.Preprocess(SIZE, (0.5,) * 3, (0.5,) * 3)
    stats = fit(net, g, train.images[:64], labels, pre, cfg, meter, progress=False)
    assert stats["stopped_by_cap"] and stats["steps"] == 2 and meter.flops == 2 * per_step <= cfg.max_flops


def test_warmup_ramps_then_decays_and_zero_is_plain_cosine():
    total = 20
    cosine = [lr_factor(s, total) for s in range(total + 1)]
    assert cosine[0] == 1.0 and cosine[-1] == pytest.approx(0.0) and cosine == sorted(cosine, reverse=True)
    assert cosine[5] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    one_cycle = [lr_factor(s, total, 0.3) for s in range(total + 1)]
    assert one_cycle[0] == pytest.approx(1 / 25) and one_cycle[6] == 1.0 and one_cycle[-1] == pytest.approx(0.0)
    assert one_cycle[:7] == sorted(one_cycle[:7]) and one_cycle[6:] == sorted(one_cycle[6:], reverse=True)
    steep = [lr_factor(s, 10, 0.95) for s in range(11)]  # a ramp over nearly every step still peaks and decays
    assert max(steep) == 1.0 and steep[-1] == pytest.approx(0.0)
    for name in ("evo_tune", "evo_latent", "replay"):  # every strategy that trains takes it
        assert make_strategy(name, warmup=0.3).options.warmup == 0.3


def test_fit_follows_the_warmup_schedule(monkeypatch):
    g = model()
    train, _ = evo.data.load_source("digits")
    pre = evo.data.Preprocess(SIZE, (0.5,) * 3, (0.5,) * 3)
    seen = []

    class Spy(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.01, warmup=0.5, trainable="head")
    monkeypatch.setattr(evo.learn.train, "make_optimizer", lambda params, c: Spy(params, lr=c.lr))
    fit(g.to_module(), g, train.images[:64], train.labels[:64] % 3, pre, cfg, CostMeter("cpu"), progress=False)
    assert seen == pytest.approx([0.01 * lr_factor(s, 4, 0.5) for s in range(4)])
    assert seen[0] < seen[1] < seen[2] and seen[2] > seen[3]


def test_epoch_callback_sees_each_epoch(stream):
    seen = []
    learner = Learner(model(), strategy="joint", progress=False, on_epoch_end=lambda e, net, s: seen.append(
        (e, s["steps"], net.training)), epochs=2, batch_size=32)
    learner.learn(stream[0])
    assert [e for e, _, _ in seen] == [1, 2] and seen[1][1] == 2 * seen[0][1] and not seen[0][2]


def test_training_options_are_validated():
    for bad in ({"optimizer": "rmsprop"}, {"lr": -1}, {"epochs": "3"}, {"batch_size": 0}, {"max_flops": 0},
                {"warmup": 1.0}, {"warmup": -0.1}, {"warmup": True}):
        with pytest.raises(ConfigError):
            Learner(model(), strategy="replay", **bad)
    with pytest.raises(ConfigError, match="temperature"):
        Learner(model(), strategy="lwf", temperature=0)
    with pytest.raises(ConfigError, match="ewc_lambda"):
        Learner(model(), strategy="ewc", ewc_lambda=float("nan"))
