"""ExemplarMemory: budget, balance, herding vs reservoir, shrink keeps the best-ranked, state round trip."""

from __future__ import annotations

import numpy as np
import pytest

from evo.errors import ConfigError, DataError, UnknownNameError
from evo.learn.memory import SELECTORS, ExemplarMemory, herding_order


def _increment(classes: range, per_class: int = 40, seed: int = 0, d: int = 8):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.array(list(classes)), per_class)
    images = rng.integers(0, 256, size=(len(labels), 4, 4, 1), dtype=np.uint8)
    features = rng.normal(size=(len(labels), d)) + labels[:, None] * 0.5
    return images, labels, features


def _rows_of(mem: ExemplarMemory, images: np.ndarray, c: int) -> list[int]:
    """Positions in `images` of class c's exemplars, in stored (rank) order."""
    flat = images.reshape(len(images), -1)
    return [
        int(np.flatnonzero((flat == row).all(axis=1))[0])
        for row in mem.images[mem.labels == c].reshape(-1, 16)
    ]


def test_registry_lists_selectors() -> None:
    assert SELECTORS.names() == ["herding", "reservoir"]
    with pytest.raises(UnknownNameError, match="herding, reservoir"):
        ExemplarMemory(selector="random")


@pytest.mark.parametrize("selector", ["herding", "reservoir"])
def test_budget_never_exceeded_and_classes_balanced(selector: str) -> None:
    mem = ExemplarMemory(budget=50, selector=selector, seed=1)
    for step, classes in enumerate([range(0, 2), range(2, 5), range(5, 7)]):
        images, labels, feats = _increment(classes, seed=step)
        mem.update(images, labels, features=feats)
        counts = mem.per_class_counts()
        assert len(mem) <= 50 and sum(counts.values()) == len(mem)
        assert max(counts.values()) - min(counts.values()) <= 1
    assert len(mem) == 50 and sorted(counts) == list(range(7))
    assert mem.images.dtype == np.uint8 and mem.images.shape[1:] == (4, 4, 1)


def test_small_classes_keep_everything_and_quota_is_exact() -> None:
    mem = ExemplarMemory(budget=10, selector="reservoir")
    mem.update(*_increment(range(3), per_class=2)[:2])
    assert mem.per_class_counts() == {0: 2, 1: 2, 2: 2}
    assert mem.quotas() == {0: 4, 1: 3, 2: 3}


def test_herding_matches_a_brute_force_reference_and_is_deterministic() -> None:
    f = np.random.default_rng(5).normal(size=(30, 6))
    fn = f / np.linalg.norm(f, axis=1, keepdims=True)
    mu, chosen = fn.mean(0), []
    for k in range(1, 11):  # iCaRL Algorithm 4, without repeats
        dist = [
            np.inf if i in chosen else np.linalg.norm(mu - (fn[chosen].sum(0) + fn[i]) / k) for i in range(30)
        ]
        chosen.append(int(np.argmin(dist)))
    assert herding_order(f, 10).tolist() == chosen
    assert herding_order(f, 10).tolist() == herding_order(f.copy(), 10).tolist()


def test_herding_differs_from_reservoir_and_approximates_the_mean_better() -> None:
    images, labels, feats = _increment(range(1), per_class=200)
    herd = ExemplarMemory(budget=10, selector="herding").update(images, labels, feats)
    again = ExemplarMemory(budget=10, selector="herding").update(images, labels, feats)
    res = ExemplarMemory(budget=10, selector="reservoir", seed=0).update(images, labels, feats)
    assert np.array_equal(herd.images, again.images)
    assert not np.array_equal(herd.images, res.images)
    fn = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    mu = fn.mean(0)
    herd_err = np.linalg.norm(fn[_rows_of(herd, images, 0)].mean(0) - mu)
    res_err = np.linalg.norm(fn[_rows_of(res, images, 0)].mean(0) - mu)
    assert herd_err < res_err


def test_shrink_keeps_the_best_ranked_herding_prefix() -> None:
    images, labels, feats = _increment(range(2), per_class=60)
    mem = ExemplarMemory(budget=20, selector="herding").update(images, labels, feats)
    before = {c: _rows_of(mem, images, c) for c in (0, 1)}
    assert before[0] == herding_order(feats[labels == 0], 10).tolist()
    mem.update(*_increment(range(2, 4), per_class=60, seed=9))
    for c in (0, 1):
        assert _rows_of(mem, images, c) == before[c][:5]


def test_reservoir_is_seeded_and_shrink_keeps_a_subset() -> None:
    images, labels, _ = _increment(range(2), per_class=60)
    a = ExemplarMemory(budget=20, selector="reservoir", seed=3).update(images, labels)
    b = ExemplarMemory(budget=20, selector="reservoir", seed=3).update(images, labels)
    c = ExemplarMemory(budget=20, selector="reservoir", seed=4).update(images, labels)
    assert np.array_equal(a.images, b.images) and not np.array_equal(a.images, c.images)
    before = _rows_of(a, images, 0)
    a.update(*_increment(range(2, 4), seed=2)[:2])
    assert _rows_of(a, images, 0) == before[:5]


def test_a_returning_class_merges_old_exemplars_with_new_samples() -> None:
    mem = ExemplarMemory(budget=10, selector="reservoir", seed=0)
    first, labels, _ = _increment(range(1), per_class=30, seed=0)
    second, _, _ = _increment(range(1), per_class=30, seed=1)
    mem.update(first, labels).update(second, labels)
    flat = mem.images.reshape(10, -1)
    from_first = sum((first.reshape(30, -1) == r).all(axis=1).any() for r in flat)
    assert len(mem) == 10 and 0 < from_first < 10  # a sample of both halves


def test_state_dict_round_trip_continues_identically() -> None:
    mem = ExemplarMemory(budget=30, selector="herding", seed=2)
    mem.update(*_increment(range(3)))
    state = mem.state_dict()
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in state.values())
    clone = ExemplarMemory.from_dict(mem.to_dict()).load_state_dict(state)
    nxt = _increment(range(3, 5), seed=7)
    mem.update(*nxt)
    clone.update(*nxt)
    for key, value in mem.state_dict().items():
        np.testing.assert_array_equal(clone.state_dict()[key], value)


def test_bad_input_is_refused() -> None:
    images, labels, feats = _increment(range(2))
    mem = ExemplarMemory(budget=10, selector="herding")
    with pytest.raises(DataError, match="needs features"):
        mem.update(images, labels)
    with pytest.raises(DataError, match="label -1"):
        mem.update(images, labels - 1, feats)
    with pytest.raises(DataError, match="empty"):
        mem.update(images[:0], labels[:0], feats[:0])
    with pytest.raises(DataError, match="one entry per image"):
        mem.update(images, labels[:-1], feats)
    with pytest.raises(DataError, match="NaN"):
        mem.update(images, labels, np.full_like(feats, np.nan))
    mem.update(images, labels, feats)
    with pytest.raises(ConfigError, match="width 3"):
        mem.update(images, labels, feats[:, :3])
    with pytest.raises(DataError, match="shape"):
        mem.update(images[:, :2], labels, feats)
    assert len(mem) == 10  # failed updates changed nothing
    with pytest.raises(ConfigError, match="budget"):
        ExemplarMemory(budget=0)


@pytest.mark.parametrize("selector", ["reservoir", "herding"])
def test_priority_samples_are_kept_first_and_dropped_last(selector):
    """A user's corrections (priority) fill a class's quota before any selected exemplar, survive a
    shrink when new classes arrive, and `without` takes one out exactly."""
    rng = np.random.default_rng(0)
    mem = ExemplarMemory(budget=12, selector=selector, seed=0)
    x = rng.integers(0, 255, (40, 4, 4, 3), dtype=np.uint8)
    y = np.repeat([0, 1], 20)
    feats = rng.normal(size=(40, 5)).astype(np.float32)
    prio = np.zeros(40, bool)
    prio[[3, 25, 26]] = True
    mem.update(x, y, feats, priority=prio)
    kept = {im.tobytes() for im in mem.images[mem.priority]}
    assert kept == {x[i].tobytes() for i in (3, 25, 26)} and len(mem) == 12
    x2 = rng.integers(0, 255, (60, 4, 4, 3), dtype=np.uint8)  # 3 new classes: each quota shrinks to 2-3
    mem.update(x2, np.repeat([2, 3, 4], 20), rng.normal(size=(60, 5)).astype(np.float32))
    assert {im.tobytes() for im in mem.images[mem.priority]} == kept  # all three survived the shrink
    assert all(mem.images[mem.labels == c][0].tobytes() in kept for c in (0, 1))  # first in their class
    drop = np.array([im.tobytes() == x[3].tobytes() for im in mem.images])
    smaller = mem.without(drop)
    assert len(smaller) == len(mem) - 1 and int(smaller.priority.sum()) == 2
    with pytest.raises(DataError, match="priority"):
        mem.update(x[:2], y[:2], feats[:2], priority=[True])
