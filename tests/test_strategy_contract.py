"""One contract over every registered strategy (`list_strategies()`), as scikit-learn checks every
estimator: a strategy added later is covered without touching this file.

- state_dict round trip: a learner restored from (graph_, state_dict()) continues exactly as the
  original does;
- `with_graph` independence: learning on the copy leaves the original untouched;
- nothing changed after an error raised mid-increment (after the strategy already learned);
- priced >= measured: `Strategy.price` bounds the FLOPs the meter records, increment after increment;
- predict after learn: probabilities over the classes learned.
Small on purpose: small_cnn at 16 px on 24 digits per class, two increments of five classes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import evo.data
import evo.zoo
from evo.errors import DataError
from evo.learn import Learner, list_strategies
from evo.learn.strategies import Workload, option_defaults

SIZE = 16
FAST = {"epochs": 1, "batch_size": 32, "train_batch_size": 32, "lr": 0.05, "fisher_samples": 32,
        "taps": "auto"}
MEMORY = 20


def options(name: str) -> dict:
    return {k: v for k, v in FAST.items() if k in option_defaults(name)}


def model():
    return evo.zoo.load("small_cnn", num_classes=3, input_size=SIZE, seed=1)


def learner(name: str) -> Learner:
    from evo.learn.latent import StoreConfig
    from evo.learn.strategies import STRATEGIES

    # a strategy that trains on stored latents gets a store (cut at small_cnn's stride-1 block output)
    store = StoreConfig(cut=1, codec="fp32") if STRATEGIES.get(name).needs_latents else None
    return Learner(model(), memory=MEMORY, strategy=name, progress=False, device="cpu", latents=store,
                   **options(name))


@pytest.fixture(scope="module")
def stream():
    train, test = evo.data.load_source("digits")
    rng = np.random.default_rng(0)

    def cap(d, k):
        return d.subset(np.sort(np.concatenate(
            [rng.permutation(np.flatnonzero(d.labels == c))[:k] for c in range(10)])))

    return evo.data.class_incremental((cap(train, 24), cap(test, 6)), increments=2, seed=0,
                                      order=[f"digit-{d}" for d in range(10)])


_TRAINED: dict[str, tuple] = {}


def after_first(name: str, stream) -> tuple[Learner, object]:
    """A learner of strategy `name` restored after increment 0 (trained once per module), and the
    report of that increment. Restoring from (graph_, state_dict()) is how the search continues."""
    if name not in _TRAINED:
        ln = learner(name)
        report = ln.learn(stream[0])
        _TRAINED[name] = (ln.graph_, ln.state_dict(), report)
    graph, state, report = _TRAINED[name]
    return learner(name).load_state_dict(state, graph), report


def snapshot(ln: Learner) -> dict:
    return {"state": {k: v.clone() for k, v in ln.state_dict().items()},
            "graph": {k: v.clone() for k, v in ln.graph_.state_dict().items()},
            "classes": list(ln.classes_), "reports": len(ln.reports_), "cost": ln.cost_,
            "memory": None if ln.memory_ is None else len(ln.memory_)}


def assert_same(a: dict, b: dict) -> None:
    assert a["classes"] == b["classes"] and a["reports"] == b["reports"] and a["cost"] == b["cost"]
    assert a["memory"] == b["memory"]
    for key in ("state", "graph"):
        assert a[key].keys() == b[key].keys(), key
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key} {k} changed"


STRATEGIES = list_strategies()


def _below_cut(name: str, graph, n: int) -> tuple[str | None, int]:
    """A latent strategy's cut node and the FLOPs of encoding n images below it (which a learner's
    meter records and a search prices once per round, apart from the strategy's own price)."""
    from evo.learn.latent import cut_node
    from evo.learn.latent.below import encode_flops
    from evo.learn.strategies import STRATEGIES as REGISTRY

    if not REGISTRY.get(name).needs_latents:
        return None, 0
    cut = cut_node(graph, 1)
    return cut, encode_flops(graph, cut, n)


def test_the_contract_covers_every_registered_strategy() -> None:
    assert {"evo", "evo_tune", "ewc", "joint", "lwf", "naive", "replay"} <= set(STRATEGIES)


@pytest.mark.parametrize("name", STRATEGIES)
def test_predict_after_learn(stream, name) -> None:
    ln, report = after_first(name, stream)
    names, probs = ln.predict(stream[0].test.images[:6])
    proba = ln.predict_proba(stream[0].test.images[:6])
    assert set(names) <= set(stream[0].classes_so_far) and len(probs) == 6
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-6)
    assert report.accuracy is not None and 0 <= report.accuracy <= 1


@pytest.mark.parametrize("name", STRATEGIES)
def test_state_dict_round_trip_continues_identically(stream, name) -> None:
    ln = learner(name)
    ln.learn(stream[0])
    state = ln.state_dict()
    restored = learner(name).load_state_dict(state, ln.graph_)
    if ln.latents_ is not None:  # a latent store lives in the run folder, beside state_dict: hand it over
        restored.use_latents(ln.latents_, staged=False)
    assert restored.state_dict().keys() == state.keys()
    assert all(torch.equal(restored.state_dict()[k], v) for k, v in state.items())
    a, b = ln.learn(stream[1]), restored.learn(stream[1])
    images = stream[1].test.images
    np.testing.assert_allclose(ln.predict_proba(images), restored.predict_proba(images), atol=1e-5)
    assert a.accuracy == pytest.approx(b.accuracy, abs=1e-9)


@pytest.mark.parametrize("name", STRATEGIES)
def test_with_graph_is_independent(stream, name) -> None:
    ln, _ = after_first(name, stream)
    before = snapshot(ln)
    other = ln.with_graph(ln.graph_.copy())
    other.learn(stream[1])
    assert_same(snapshot(ln), before)
    assert len(other.classes_) == 10 and len(ln.classes_) == 5


@pytest.mark.parametrize("name", STRATEGIES)
def test_nothing_changes_after_an_error_mid_increment(stream, name) -> None:
    ln, _ = after_first(name, stream)
    before = snapshot(ln)
    inc = stream[1]
    # the test split names a class the model never learned: evaluation fails after the strategy
    # has already learned the increment on its working copies
    ghost = evo.data.ImageSet(inc.test.images, np.where(np.arange(len(inc.test)) == 0, len(inc.test.classes),
                                                        inc.test.labels), [*inc.test.classes, "ghost"])
    with pytest.raises(DataError, match="ghost"):
        ln.learn(dataclasses.replace(inc, test=ghost))
    assert_same(snapshot(ln), before)
    ln.learn(inc)  # and it still learns normally afterwards
    assert len(ln.classes_) == 10


@pytest.mark.parametrize("name", STRATEGIES)
@pytest.mark.parametrize("grown", [False, True])
def test_priced_is_at_least_measured(stream, name, grown) -> None:
    import evo.ops

    ln, r0 = after_first(name, stream)
    cut, encode0 = _below_cut(name, model(), len(stream[0].train))
    work0 = Workload(n_train=len(stream[0].train), n_classes=len(stream[0].classes_so_far), first=True, cut=cut)
    assert ln.strategy.price(model(), work0) + encode0 >= r0.cost.flops > 0
    parent = ln.graph_
    seen = len(stream[0].train)
    # the last site: above a latent strategy's cut (growing below it needs the images again, and is refused)
    graph = evo.ops.apply(parent, "deepen", site=evo.ops.sites(parent, "deepen")[-1]) if grown else parent
    cut, encode1 = _below_cut(name, graph, len(stream[1].train))
    work1 = Workload(n_train=len(stream[1].train), n_classes=len(stream[1].classes_so_far),
                     n_memory=min(MEMORY, seen), n_seen=seen, grown=grown, cut=cut)
    price1 = ln.strategy.price(graph, work1) + encode1
    r1 = (ln.with_graph(graph) if grown else ln).learn(stream[1])
    assert price1 >= r1.cost.flops > 0, f"priced {price1:.4g} < measured {r1.cost.flops:.4g}"
