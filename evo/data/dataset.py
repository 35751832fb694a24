"""ImageSet: the one in-memory container every source returns and every scenario slices.

Images stay at their native size (resizing belongs to the model version's `Preprocess`), always
uint8 RGB (N, H, W, 3). Arrays are read-only views, so a loaded set can be cached and shared
between increments without anyone changing it under another's feet.
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evo.checks import check_int
from evo.errors import ConfigError, DataError


def check_size(size: Any, what: str = "size") -> tuple[int, int]:
    """`size` as (height, width): one positive int is a square side, as a model's input_size is."""
    def ok(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0

    pair = (size, size) if ok(size) else tuple(size) if isinstance(size, (list, tuple)) else ()
    if len(pair) != 2 or not all(ok(v) for v in pair):
        raise ConfigError(f"{what} must be a positive int (a square side) or [height, width] of positive ints; "
                          f"got {size!r}")
    return int(pair[0]), int(pair[1])


def _array(value: Any, what: str) -> np.ndarray:
    """np.asarray, with a ragged or otherwise unconvertible input named as the DataError it is."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as e:
        raise DataError(f"{what} must be one array of equal-sized entries; got {type(value).__name__} that numpy "
                        f"cannot stack ({e})") from None


def to_rgb(images: np.ndarray) -> np.ndarray:
    """Return uint8 (N, H, W, 3): grayscale (N, H, W) or (N, H, W, 1) is repeated, RGBA drops alpha."""
    images = _array(images, "images")
    if images.dtype != np.uint8:
        raise DataError(f"images must be uint8 (0..255); got dtype {images.dtype}. Scale and cast first.")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise DataError(f"images must be (N, H, W) or (N, H, W, 1|3|4); got shape {images.shape}")
    if images.shape[-1] == 1:
        return np.repeat(images, 3, axis=-1)
    return images[..., :3] if images.shape[-1] == 4 else images


def _readonly(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Images with integer labels; label i means `classes[i]`.

    `skipped` lists files the source could not read (corrupt, missing); they are not in the set.
    `groups`, when set, gives each sample a group id (e.g. the video clip a frame came from):
    `holdout_split` then keeps every group whole on one side, so near-duplicate frames of one
    clip never sit on both sides of a split.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    skipped: list[str] = field(default_factory=list)
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        images, labels = _array(self.images, "ImageSet.images"), _array(self.labels, "ImageSet.labels")
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise DataError(
                f"ImageSet.images must be uint8 (N, H, W, 3); got {images.dtype} {images.shape}. "
                "Use ImageSet.from_arrays to convert grayscale or RGBA."
            )
        if len(images) and 0 in images.shape[1:3]:
            raise DataError(f"ImageSet.images must be at least 1x1 pixels; got shape {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(f"ImageSet.labels must be ({len(images)},); got shape {labels.shape}")
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"ImageSet.labels must be integers; got dtype {labels.dtype}")
        if isinstance(self.classes, (str, bytes)) or not isinstance(self.classes, Iterable):
            raise DataError(f"ImageSet.classes must be a list of class names (label i means classes[i]); got "
                            f"{type(self.classes).__name__} {reprlib.repr(self.classes)}")
        classes = [str(c) for c in self.classes]
        if len(set(classes)) != len(classes):
            dup = sorted({c for c in classes if classes.count(c) > 1})
            raise DataError(f"ImageSet.classes has duplicate names {dup}; class names must be unique")
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DataError(
                f"ImageSet.labels must lie in [0, {len(classes)}) for {len(classes)} classes; "
                f"got range [{labels.min()}, {labels.max()}]"
            )
        object.__setattr__(self, "images", _readonly(images))
        object.__setattr__(self, "labels", _readonly(labels.astype(np.int64, copy=False)))
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "skipped", list(self.skipped))
        if self.groups is not None:
            groups = np.asarray(self.groups)
            if groups.shape != labels.shape or (groups.size and not np.issubdtype(groups.dtype, np.integer)):
                raise DataError(f"ImageSet.groups must be integers of shape ({len(labels)},); got "
                                f"{groups.dtype} {groups.shape}")
            object.__setattr__(self, "groups", _readonly(groups.astype(np.int64, copy=False)))

    def _groups_at(self, idx: np.ndarray) -> np.ndarray | None:
        return None if self.groups is None else self.groups[idx]

    @classmethod
    def from_arrays(
        cls, images: np.ndarray, labels: Sequence[int] | np.ndarray, classes: Sequence[str]
    ) -> ImageSet:
        """Build a set from grayscale, RGB or RGBA uint8 arrays (converted to RGB)."""
        lab = _array(labels, "labels")
        if lab.dtype == object:  # e.g. pandas' nullable Int64 as numpy: integers if they convert unchanged
            try:
                as_int = lab.astype(np.int64)
                lab = as_int if (as_int == lab).all() else lab
            except (TypeError, ValueError, OverflowError):
                pass
        integral = np.issubdtype(lab.dtype, np.integer) or lab.dtype == np.bool_ or (
            np.issubdtype(lab.dtype, np.floating) and np.isfinite(lab).all() and (lab == np.round(lab)).all())
        if lab.size and not integral:
            raise DataError(f"labels must be integers (label i means classes[i]); got {lab.dtype} values such as "
                            f"{lab.ravel()[:3].tolist()}")
        if isinstance(classes, (str, bytes)) or not isinstance(classes, Iterable):
            raise DataError(f"classes must be a list of class names (label i means classes[i]); got "
                            f"{type(classes).__name__} {reprlib.repr(classes)}")
        return cls(to_rgb(images), lab.astype(np.int64), list(classes))

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        size = "x".join(map(str, self.image_size))
        return (
            f"ImageSet({len(self)} images {size}, {len(self.classes)} classes, {len(self.skipped)} skipped)"
        )

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) shared by every image."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    def class_counts(self) -> dict[str, int]:
        """Samples per class, every class listed (zero included)."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts, strict=True)}

    def present_classes(self) -> list[str]:
        """Classes with at least one sample, in class-list order."""
        return [c for c, n in self.class_counts().items() if n]

    def subset(self, indices: Sequence[int] | np.ndarray, classes: Sequence[str] | None = None) -> ImageSet:
        """The samples at `indices` (copied); `classes` may shorten the class list to a prefix."""
        idx = _array(indices, "subset indices")
        if idx.dtype == np.bool_ and idx.shape == (len(self),):
            idx = np.flatnonzero(idx)  # a boolean mask over the samples
        elif idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise DataError(f"subset indices must be integers (or a boolean mask of length {len(self)}); got "
                            f"{idx.dtype} {idx.shape}")
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise DataError(f"subset indices must lie in [0, {len(self)}); got [{idx.min()}, {idx.max()}]")
        return ImageSet(self.images[idx], self.labels[idx], list(classes or self.classes), self.skipped,
                        self._groups_at(idx))

    def select_classes(self, names: Sequence[str]) -> ImageSet:
        """Only the samples of `names`, relabelled so that label i means `names[i]`."""
        if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
            raise ConfigError(f"select_classes takes a list of class names; got {type(names).__name__} {reprlib.repr(names)}")
        names = list(names)
        self._check_known(names)
        if set(names) >= set(self.present_classes()):
            return self.relabel(names)  # nothing dropped: share the image array instead of copying it
        mapping = np.full(len(self.classes), -1, dtype=np.int64)
        for new, name in enumerate(names):
            mapping[self.classes.index(name)] = new
        new_labels = mapping[self.labels]
        keep = np.flatnonzero(new_labels >= 0)
        return ImageSet(self.images[keep], new_labels[keep], names, self.skipped, self._groups_at(keep))

    def relabel(self, classes: Sequence[str]) -> ImageSet:
        """Same samples, labels re-expressed in a class list that contains every present class."""
        classes = list(classes)
        missing = [c for c in self.present_classes() if c not in classes]
        if missing:
            raise DataError(f"relabel: classes {missing} have samples but are not in the new class list")
        index = {c: i for i, c in enumerate(classes)}
        mapping = np.array([index.get(c, -1) for c in self.classes], dtype=np.int64)
        return ImageSet(self.images, mapping[self.labels], classes, self.skipped, self.groups)

    def resized(self, size: tuple[int, int]) -> ImageSet:
        """Every image resized to (height, width) with antialiased bilinear; same labels."""
        from evo.data.transforms import resize_uint8

        size = check_size(size, "ImageSet.resized size")
        return ImageSet(resize_uint8(self.images, size), self.labels, self.classes, self.skipped, self.groups)

    def permuted(self, seed: int) -> ImageSet:
        """Every image's pixel positions shuffled by one permutation drawn from `seed` (the same for every
        image and every set built with that seed): permuted Fashion-MNIST, a data type with no spatial
        structure left, where pretrained convolutional features are weak."""
        check_int("ImageSet.permuted seed", seed, 0)
        n, h, w = self.images.shape[:3]
        perm = np.random.default_rng(seed).permutation(h * w)
        flat = self.images.reshape(n, h * w, *self.images.shape[3:])
        return ImageSet(np.ascontiguousarray(flat[:, perm].reshape(self.images.shape)), self.labels, self.classes,
                        self.skipped, self.groups)

    def _check_known(self, names: Sequence[str]) -> None:
        unknown = [n for n in names if n not in self.classes]
        if unknown:
            raise DataError(f"unknown classes {unknown}; this set has {self.classes}")
        if len(set(names)) != len(names):
            raise ConfigError(f"class names must not repeat; got {list(names)}")


def concat(sets: Sequence[ImageSet]) -> ImageSet:
    """Stack sets that share one class list and one image size."""
    if not sets:
        raise DataError("concat needs at least one ImageSet")
    bad = [type(s).__name__ for s in sets if not isinstance(s, ImageSet)]
    if bad:
        raise DataError(f"concat stacks evo.data.ImageSet objects; got {bad}")
    first = sets[0]
    for s in sets[1:]:
        if s.classes != first.classes or s.image_size != first.image_size:
            raise DataError(
                f"concat needs one class list and one image size; got {first.image_size} vs {s.image_size} "
                "(relabel() and resized() them first)"
            )
    skipped = [p for s in sets for p in s.skipped]
    images = np.concatenate([s.images for s in sets])
    groups = None  # group ids are kept only when every set has them (they are the sources' own numbering)
    if all(s.groups is not None for s in sets):
        groups = np.concatenate([s.groups for s in sets])
    return ImageSet(images, np.concatenate([s.labels for s in sets]), first.classes, skipped, groups)


def holdout_split(data: ImageSet, test_fraction: float, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """Seeded per-class split: round(fraction * n) of each class to test, keeping >= 1 on each side.

    A class with a single sample stays in train. `test_fraction=0` gives an empty test set.
    With `data.groups` set, whole groups are drawn instead of samples (round(fraction * groups) of
    each class's groups, >= 1 on each side), so no group is split.
    """
    if not isinstance(data, ImageSet):
        raise DataError(f"holdout_split splits an evo.data.ImageSet; got {type(data).__name__}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.number)) \
            or not 0.0 <= float(test_fraction) < 1.0:
        raise ConfigError(f"test_fraction must be in [0, 1); got {test_fraction!r}")
    check_int("holdout_split seed", seed, 0)
    rng = np.random.default_rng(seed)
    test_idx: list[np.ndarray] = []
    for label in range(len(data.classes)):
        idx = rng.permutation(np.flatnonzero(data.labels == label))
        if data.groups is not None:
            test_idx.append(_group_holdout(data.groups, idx, test_fraction, rng))
            continue
        n_test = 0
        if test_fraction > 0 and len(idx) >= 2:
            n_test = min(max(round(test_fraction * len(idx)), 1), len(idx) - 1)
        test_idx.append(idx[:n_test])
    test = np.sort(np.concatenate(test_idx)) if test_idx else np.zeros(0, np.int64)
    train = np.setdiff1d(np.arange(len(data)), test)
    return data.subset(train), data.subset(test)


def _group_holdout(groups: np.ndarray, idx: np.ndarray, test_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """The rows of `idx` whose groups were drawn for test."""
    ids = rng.permutation(np.unique(groups[idx]))
    n_test = 0
    if test_fraction > 0 and len(ids) >= 2:
        n_test = min(max(round(test_fraction * len(ids)), 1), len(ids) - 1)
    return idx[np.isin(groups[idx], ids[:n_test])]
