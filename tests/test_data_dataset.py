"""ImageSet: validation, slicing, relabelling, and the seeded per-class hold-out split."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evo.data import ImageSet, concat, holdout_split
from evo.errors import DataError


def ids_set(labels, classes, start=0, size=4) -> ImageSet:
    """Each image encodes its id in pixel (0, 0): channel 0 = id % 256, channel 1 = id // 256."""
    n = len(labels)
    images = np.zeros((n, size, size, 3), np.uint8)
    ids = np.arange(start, start + n)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = ids % 256, ids // 256
    return ImageSet(images, np.asarray(labels), classes)


def ids_of(s: ImageSet) -> np.ndarray:
    return s.images[:, 0, 0, 0].astype(int) + 256 * s.images[:, 0, 0, 1].astype(int)


def test_from_arrays_converts_gray_and_rgba_to_rgb():
    gray = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    s = ImageSet.from_arrays(gray, [0, 1], ["a", "b"])
    assert s.images.shape == (2, 3, 3, 3)
    assert (s.images[..., 0] == gray).all() and (s.images[..., 2] == gray).all()
    rgba = np.full((1, 2, 2, 4), 7, np.uint8)
    rgba[..., 3] = 0
    assert ImageSet.from_arrays(rgba, [0], ["a"]).images.shape == (1, 2, 2, 3)


@pytest.mark.parametrize(
    "images, labels, classes, fragment",
    [
        (np.zeros((2, 4, 4, 3), np.float32), [0, 0], ["a"], "uint8"),
        (np.zeros((2, 4, 4), np.uint8), [0, 0], ["a"], "from_arrays"),
        (np.zeros((2, 4, 4, 3), np.uint8), [0], ["a"], "labels"),
        (np.zeros((2, 4, 4, 3), np.uint8), [0, 2], ["a", "b"], "[0, 2)"),
        (np.zeros((2, 4, 4, 3), np.uint8), [0, 0], ["a", "a"], "duplicate"),
    ],
)
def test_bad_arrays_raise_data_error(images, labels, classes, fragment):
    with pytest.raises(DataError, match=fragment.replace("[", r"\[").replace(")", r"\)")):
        ImageSet(images, np.asarray(labels), classes)


def test_arrays_are_read_only_and_caller_array_untouched():
    images = np.zeros((2, 3, 3, 3), np.uint8)
    s = ImageSet(images, np.array([0, 1]), ["a", "b"])
    with pytest.raises(ValueError):
        s.images[0, 0, 0, 0] = 1
    images[0, 0, 0, 0] = 5  # the caller's own array stays writable
    assert s.labels.dtype == np.int64


def test_counts_subset_select_relabel():
    s = ids_set([0, 1, 1, 2, 2, 2], ["a", "b", "c"])
    assert s.class_counts() == {"a": 1, "b": 2, "c": 3}
    assert len(s) == 6 and s.image_size == (4, 4)
    sub = s.subset([5, 0])
    assert list(ids_of(sub)) == [5, 0] and list(sub.labels) == [2, 0]
    sel = s.select_classes(["c", "a"])
    assert sel.classes == ["c", "a"] and sorted(sel.labels.tolist()) == [0, 0, 0, 1]
    assert set(ids_of(sel)) == {0, 3, 4, 5}
    rel = s.relabel(["z", "c", "b", "a"])
    assert [rel.classes[i] for i in rel.labels] == [s.classes[i] for i in s.labels]
    assert rel.present_classes() == ["c", "b", "a"]
    with pytest.raises(DataError, match="unknown classes"):
        s.select_classes(["nope"])
    with pytest.raises(DataError, match=r"\['c'\]"):
        s.relabel(["a", "b"])


def test_concat_and_resized():
    a, b = ids_set([0, 1], ["x", "y"]), ids_set([1], ["x", "y"], start=10)
    both = concat([a, b])
    assert list(ids_of(both)) == [0, 1, 10] and list(both.labels) == [0, 1, 1]
    with pytest.raises(DataError, match="image size"):
        concat([a, ids_set([0], ["x", "y"], size=5)])
    big = ImageSet(np.full((1, 4, 4, 3), 200, np.uint8), np.array([0]), ["x"]).resized((9, 7))
    assert big.images.shape == (1, 9, 7, 3) and (big.images == 200).all()


def test_holdout_split_is_stratified_seeded_and_disjoint():
    s = ids_set([0] * 10 + [1] * 20 + [2], ["a", "b", "c"])
    train, test = holdout_split(s, 0.2, seed=3)
    assert test.class_counts() == {"a": 2, "b": 4, "c": 0}  # a single sample stays in train
    assert not set(ids_of(train)) & set(ids_of(test))
    assert sorted([*ids_of(train), *ids_of(test)]) == list(range(31))
    again = holdout_split(s, 0.2, seed=3)[1]
    assert list(ids_of(again)) == list(ids_of(test))
    assert list(ids_of(holdout_split(s, 0.2, seed=4)[1])) != list(ids_of(test))


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(1, 12), min_size=1, max_size=5),
    frac=st.floats(0.0, 0.95),
    seed=st.integers(0, 2**31),
)
def test_holdout_split_partitions_every_class(counts, frac, seed):
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    s = ids_set(labels, [f"c{i}" for i in range(len(counts))])
    train, test = holdout_split(s, frac, seed)
    assert sorted([*ids_of(train), *ids_of(test)]) == list(range(len(labels)))
    for name, n in zip(s.classes, counts, strict=True):
        assert train.class_counts()[name] >= 1  # every class keeps training data
        if frac > 0 and n >= 2:
            assert test.class_counts()[name] >= 1
