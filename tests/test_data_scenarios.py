"""Scenarios: seeded, reproducible increments with global labels, disjoint data and per-increment tests."""

from __future__ import annotations

import os

import numpy as np
import pytest

import evo.data
from evo.data import ImageSet, class_incremental, data_incremental, domain_incremental, mixed
from evo.data.sources import fashion_mnist as fm
from evo.errors import ConfigError, DataError, OutOfRangeError


def ids_set(per_class: int, n_classes: int, start: int, size: int = 4, prefix: str = "c") -> ImageSet:
    """Each image encodes a unique id in pixel (0, 0), so provenance can be checked exactly."""
    labels = np.repeat(np.arange(n_classes), per_class)
    ids = np.arange(start, start + len(labels))
    images = np.zeros((len(labels), size, size, 3), np.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = ids % 256, ids // 256
    return ImageSet(images, labels, [f"{prefix}{i}" for i in range(n_classes)])


def ids_of(s: ImageSet) -> np.ndarray:
    return s.images[:, 0, 0, 0].astype(int) + 256 * s.images[:, 0, 0, 1].astype(int)


@pytest.fixture
def pair():
    return ids_set(30, 10, 0), ids_set(10, 10, 10_000)


def names_of(s: ImageSet) -> list[str]:
    return [s.classes[i] for i in s.labels]


def source_class(pair, ids):
    """Class names of ids in the original source (train ids < 10000, test ids from 10000)."""
    train, test = pair
    return [
        train.classes[train.labels[i]] if i < 10_000 else test.classes[test.labels[i - 10_000]] for i in ids
    ]


def test_class_incremental_structure(pair):
    stream = class_incremental(pair, increments=5, seed=0)
    assert len(stream) == 5 and sorted(stream.classes) == sorted(pair[0].classes)
    seen: list[str] = []
    for i, inc in enumerate(stream):
        assert inc.index == i and len(inc.new_classes) == 2
        assert inc.classes_so_far == seen + inc.new_classes == stream.classes[: 2 * (i + 1)]
        seen = inc.classes_so_far
        assert inc.train.classes == inc.test.classes == inc.classes_so_far
        assert inc.trained_classes == inc.new_classes and len(inc.train) == 60
        # labels are global: the name a label maps to is the sample's true class in the source
        assert names_of(inc.train) == source_class(pair, ids_of(inc.train))
        assert names_of(inc.test) == source_class(pair, ids_of(inc.test))
        assert set(names_of(inc.test)) == set(inc.classes_so_far) and len(inc.test) == 20 * (i + 1)
        assert len(inc.test_by_increment) == i + 1
        for j, t in enumerate(inc.test_by_increment):
            assert set(names_of(t)) == set(stream[j].new_classes) and t.classes == inc.classes_so_far
        assert (ids_of(inc.train) < 10_000).all() and (ids_of(inc.test) >= 10_000).all()
    all_train = np.concatenate([ids_of(inc.train) for inc in stream])
    assert sorted(all_train) == list(range(300))  # every sample exactly once


def test_class_incremental_seeded(pair):
    a = [inc.new_classes for inc in class_incremental(pair, seed=7)]
    b = class_incremental(pair, seed=7)
    assert a == [inc.new_classes for inc in b]
    assert all(
        np.array_equal(x.train.images, y.train.images)
        for x, y in zip(b, class_incremental(pair, seed=7), strict=True)
    )
    assert a != [inc.new_classes for inc in class_incremental(pair, seed=8)]


def test_class_incremental_options(pair):
    s = class_incremental(
        pair, increments=3, order=["c9", "c1", "c5", "c0"], per_class_train=4, per_class_test=3
    )
    assert [inc.new_classes for inc in s] == [["c9", "c1"], ["c5"], ["c0"]]
    assert s[0].train.class_counts() == {"c9": 4, "c1": 4}
    assert s[-1].test.class_counts() == {"c9": 3, "c1": 3, "c5": 3, "c0": 3}
    s = class_incremental(pair, increments=3, initial_classes=6, seed=1)
    assert [len(inc.new_classes) for inc in s] == [6, 2, 2]
    a = [inc.new_classes for inc in class_incremental(pair, seed=3, per_class_test=2)]
    assert a == [inc.new_classes for inc in class_incremental(pair, seed=3)]  # caps never change the order
    assert len(s[0:2]) == 2 and s[-1].index == 2
    with pytest.raises(IndexError):  # a list's convention, and an evo error naming the valid range
        s[3]
    with pytest.raises(OutOfRangeError, match=r"increment -4 is out of range .* \(0\.\.2"):
        s[-4]
    assert s[np.int64(1)].index == 1
    for bad in ("1", 1.0, True, None):
        with pytest.raises(DataError, match="integer or a slice"):
            s[bad]


def test_errors(pair):
    with pytest.raises(DataError, match="no classes"):
        class_incremental(pair, increments=11)
    with pytest.raises(DataError, match="unknown classes"):
        class_incremental(pair, order=["c1", "zebra"])
    with pytest.raises(ConfigError, match="increments"):
        class_incremental(pair, increments=0)
    with pytest.raises(ConfigError, match="per_class_train"):
        class_incremental(pair, per_class_train=0)
    with pytest.raises(ConfigError, match="seed"):
        mixed(pair, seed=-1)
    with pytest.raises(ConfigError, match="initial_classes"):
        class_incremental(pair, increments=2, initial_classes=20)
    tiny = ids_set(1, 3, 0), ids_set(1, 3, 10_000)
    with pytest.raises(DataError, match="increment 1 would have no training samples"):
        data_incremental(tiny, increments=2)


def test_data_incremental(pair):
    s = data_incremental(pair, increments=3, seed=0)
    assert s[0].new_classes == pair[0].classes and all(inc.new_classes == [] for inc in s[1:])
    ids = [set(ids_of(inc.train)) for inc in s]
    assert not (ids[0] & ids[1] or ids[1] & ids[2] or ids[0] & ids[2])
    assert set().union(*ids) == set(range(300))
    for inc in s:
        assert set(inc.train.class_counts().values()) == {10} and inc.classes_so_far == pair[0].classes
        assert len(inc.test_by_increment[-1]) == len(inc.test) == 100
    capped = data_incremental(pair, increments=3, per_class_train=2)
    assert len(capped[1].train) == 20
    assert [list(ids_of(x.train)) for x in s] == [list(ids_of(x.train)) for x in data_incremental(pair, 3, 0)]


def test_mixed(pair):
    s = mixed(pair, increments=4, seed=2)
    assert [len(inc.new_classes) for inc in s] == [3, 3, 2, 2]
    for i, inc in enumerate(s):
        trained = set(inc.trained_classes)
        assert set(inc.new_classes) <= trained
        if i:
            assert trained - set(inc.new_classes), "a later increment also brings known classes"
        assert names_of(inc.train) == source_class(pair, ids_of(inc.train))
    all_ids = np.concatenate([ids_of(inc.train) for inc in s])
    assert sorted(all_ids) == list(range(300))
    assert set(names_of(s[2].test_by_increment[1])) == set(s[1].trained_classes)


def test_domain_incremental_with_loaded_pairs():
    a = ids_set(6, 3, 0, size=6, prefix="shoe"), ids_set(2, 3, 10_000, size=6, prefix="shoe")
    b = ids_set(6, 2, 100, size=3, prefix="d"), ids_set(2, 2, 10_100, size=3, prefix="d")
    s = domain_incremental([a, b], seed=0)
    assert (
        len(s) == 2
        and s[1].new_classes == ["d0", "d1"]
        and s.classes == ["shoe0", "shoe1", "shoe2", "d0", "d1"]
    )
    assert s[1].train.image_size == (6, 6) and s[1].test.image_size == (6, 6)
    assert s[1].trained_classes == ["d0", "d1"] and len(s[1].test) == 10
    clash = ids_set(6, 2, 100, prefix="shoe"), ids_set(2, 2, 10_100, prefix="shoe")
    with pytest.raises(DataError, match="prefix=True"):
        domain_incremental([a, clash])
    named = domain_incremental([a, clash], prefix=True)
    assert named.classes[:1] == ["source0:shoe0"] and named.classes[3:] == ["source1:shoe0", "source1:shoe1"]
    with pytest.raises(ConfigError, match="list of sources"):
        domain_incremental("digits")


needs_fmnist = pytest.mark.skipif(
    not fm.DEFAULT_DIR.is_dir() and not os.environ.get("CI"),  # CI must have it: .ci/setup installs it
    reason="needs `apt-get install dataset-fashion-mnist`"
)


@needs_fmnist
def test_fashion_mnist_class_incremental_by_name():
    stream = evo.data.class_incremental("fashion-mnist", increments=5, seed=0)
    assert len(stream) == 5
    first, last = stream[0], stream[4]
    assert len(first.train) == 12000 and len(first.test) == 2000 and len(last.test) == 10000
    assert sorted(last.classes_so_far) == sorted(fm.CLASSES)
    assert [inc.new_classes for inc in stream] == [
        inc.new_classes for inc in evo.data.class_incremental("fashion-mnist", seed=0)
    ]


@needs_fmnist
def test_domain_fashion_mnist_then_digits():
    s = domain_incremental(["fashion-mnist", "digits"], per_class_train=20, per_class_test=5)
    assert [len(inc.new_classes) for inc in s] == [10, 10] and s[1].new_classes[0] == "digit-0"
    assert s[1].train.image_size == (28, 28) and len(s[1].train) == 200 and len(s[1].test) == 100
    assert s[1].train.images.max() == 255  # upscaled digits keep their ink
