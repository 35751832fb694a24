"""Seeded, reproducible streams of increments: class-, data-, mixed- and domain-incremental.

A stream is planned up front (which sample goes to which increment; cheap, and an empty increment
fails at once) and materialised lazily, one `Increment` per access. Labels always index the
stream's global class list in arrival order, so label i means the same class in every increment.

`per_class_train` caps each class's samples within each increment and `per_class_test` each class's
test samples, for fast experiments. Randomness is split into independent streams (class order, train sampling, test sampling), so
changing a cap such as `per_class_test` never changes the class order.
"""

from __future__ import annotations

import operator
import os
import reprlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np

from evo.data.dataset import ImageSet, check_size, concat
from evo.data.sources import load_source
from evo.errors import ConfigError, DataError, OutOfRangeError

Source = str | os.PathLike | tuple[ImageSet, ImageSet]


@dataclass(frozen=True, eq=False)
class Increment:
    """One arrival. `train` and `test` use `classes_so_far` as their class list.

    `test` holds the held-out data of every class seen so far (evaluation only). `test_by_increment[j]`
    holds the test data of the classes increment j trained on, for the accuracy matrix a[i][j]; in a
    data-incremental stream every column is the full test set.
    """

    index: int
    train: ImageSet
    test: ImageSet
    new_classes: list[str]
    classes_so_far: list[str]
    test_by_increment: list[ImageSet]

    @property
    def trained_classes(self) -> list[str]:
        """Classes with samples in this increment's train set (new and known)."""
        return self.train.present_classes()


@dataclass(frozen=True)
class _Step:
    train_idx: np.ndarray  # rows of the stream's train pool
    n_so_far: int  # classes_so_far = pool classes[:n_so_far]
    trained: np.ndarray  # class indices with samples in this step


class Stream(Sequence[Increment]):
    """A planned sequence of increments; iterate it, index it, take its `len()`."""

    def __init__(self, kind: str, train: ImageSet, test: ImageSet, steps: list[_Step]) -> None:
        self.kind, self._train, self._test, self._steps = kind, train, test, steps
        for i, step in enumerate(steps):
            if len(step.train_idx) == 0:
                raise DataError(
                    f"{kind} stream: increment {i} would have no training samples; use fewer increments or larger per-class limits"
                )

    @property
    def classes(self) -> list[str]:
        """The global class list, in arrival order."""
        return list(self._train.classes[: self._steps[-1].n_so_far])

    def __len__(self) -> int:
        return len(self._steps)

    def __repr__(self) -> str:
        return f"Stream({self.kind}, {len(self)} increments, {len(self.classes)} classes)"

    @overload
    def __getitem__(self, i: int) -> Increment: ...
    @overload
    def __getitem__(self, i: slice) -> list[Increment]: ...
    def __getitem__(self, i: int | slice) -> Increment | list[Increment]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        try:
            k = operator.index(i) if not isinstance(i, bool) else None
        except TypeError:
            k = None
        if k is None:
            raise DataError(f"a stream is indexed by an integer or a slice; got {type(i).__name__} {i!r}")
        i = k
        if not -len(self) <= i < len(self):
            raise OutOfRangeError(f"increment {i} is out of range for a stream of {len(self)} "
                                  f"(0..{len(self) - 1}, or negative from the end)")
        return self._build(i % len(self))

    def __iter__(self) -> Iterator[Increment]:
        return (self._build(i) for i in range(len(self)))

    def _test_of(self, class_idx: np.ndarray, n_so_far: int) -> ImageSet:
        rows = np.flatnonzero(np.isin(self._test.labels, class_idx))
        return self._test.subset(rows, self._train.classes[:n_so_far])

    def _build(self, i: int) -> Increment:
        step = self._steps[i]
        n, classes = step.n_so_far, self._train.classes[: step.n_so_far]
        before = self._steps[i - 1].n_so_far if i else 0
        return Increment(
            index=i,
            train=self._train.subset(step.train_idx, classes),
            test=self._test_of(np.arange(n), n),
            new_classes=list(classes[before:n]),
            classes_so_far=list(classes),
            test_by_increment=[self._test_of(s.trained, n) for s in self._steps[: i + 1]],
        )


# --- planning helpers -------------------------------------------------------------------------


def _load(source: Source, source_opts: Mapping[str, Any] | None) -> tuple[ImageSet, ImageSet]:
    if isinstance(source, tuple):
        if len(source) != 2 or not all(isinstance(s, ImageSet) for s in source):
            raise ConfigError("a loaded source must be a (train, test) pair of ImageSets")
        if source_opts:
            raise ConfigError("source_opts only apply to a source given by name or path")
        return source
    if source_opts is not None and not isinstance(source_opts, Mapping):
        raise ConfigError(f"source_opts must be a mapping of option name to value (e.g. {{'size': 32}}); got "
                          f"{type(source_opts).__name__} {reprlib.repr(source_opts)}")
    return load_source(source, **(source_opts or {}))


def _check_int(name: str, value: Any, low: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(
            f"{name} must be an integer >= {low}{' or None' if allow_none else ''}; got {value!r}"
        )


def _rngs(seed: int) -> tuple[np.random.Generator, ...]:
    _check_int("seed", seed, 0)
    return tuple(np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(3))


def _order(classes: list[str], order: Sequence[str] | None, rng: np.random.Generator) -> list[str]:
    """The given class order (a subset is allowed), else a seeded permutation of all classes."""
    if order is None:
        return [classes[i] for i in rng.permutation(len(classes))]
    if isinstance(order, (str, bytes)) or not isinstance(order, Iterable):
        raise ConfigError(f"order must be a list of class names; got {type(order).__name__} {reprlib.repr(order)}")
    order = [str(c) for c in order]
    unknown = [c for c in order if c not in classes]
    if unknown:
        raise DataError(f"order names unknown classes {unknown}; the source has {classes}")
    if len(set(order)) != len(order) or not order:
        raise ConfigError(f"order must list each class at most once, and at least one; got {order}")
    return order


def _groups(order: list[str], increments: int, initial: int | None) -> list[list[str]]:
    """Split the class order into `increments` groups: `initial` first, the rest as evenly as possible."""
    _check_int("increments", increments, 1)
    _check_int("initial_classes", initial, 1, allow_none=True)
    if initial is None:
        cuts = np.array_split(np.arange(len(order)), increments)
    else:
        if initial > len(order):
            raise ConfigError(f"initial_classes={initial} exceeds the {len(order)} classes of the stream")
        rest = np.array_split(np.arange(initial, len(order)), increments - 1) if increments > 1 else []
        cuts = [np.arange(initial), *rest]
    groups = [[order[i] for i in c] for c in cuts]
    if any(not g for g in groups):
        raise DataError(
            f"{increments} increments over {len(order)} classes leaves an increment with no classes; use at most {len(order)} increments"
        )
    return groups


def _cap(idx: np.ndarray, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    if limit is None or len(idx) <= limit:
        return idx
    return np.sort(rng.choice(idx, size=limit, replace=False))


def _pool(data: ImageSet, order: list[str], limit: int | None, rng: np.random.Generator) -> ImageSet:
    """`data` restricted to `order`'s classes (label i = order[i]), at most `limit` samples a class."""
    data = data.select_classes(order)
    if limit is None:
        return data
    keep = [_cap(np.flatnonzero(data.labels == c), limit, rng) for c in range(len(order))]
    return data.subset(np.sort(np.concatenate(keep)))


def _chunks(pool: ImageSet, label: int, parts: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A class's samples dealt into `parts` chunks; with `pool.groups` (e.g. video clips) whole groups
    are dealt, so each increment brings new clips rather than more frames of old ones."""
    rows = np.flatnonzero(pool.labels == label)
    if pool.groups is None:
        return np.array_split(rng.permutation(rows), parts)
    dealt = np.array_split(rng.permutation(np.unique(pool.groups[rows])), parts)
    return [rows[np.isin(pool.groups[rows], ids)] for ids in dealt]


def _steps_from(
    pool: ImageSet,
    per_step: list[list[np.ndarray]],
    sizes: list[int],
    limit: int | None,
    rng: np.random.Generator,
) -> list[_Step]:
    steps = []
    for arrays, n in zip(per_step, sizes, strict=True):
        capped = [_cap(np.sort(a), limit, rng) for a in arrays if len(a)]
        idx = np.sort(np.concatenate(capped)) if capped else np.zeros(0, np.int64)
        steps.append(_Step(idx, n, np.unique(pool.labels[idx])))
    return steps


def _check_limits(per_class_train: int | None, per_class_test: int | None) -> None:
    _check_int("per_class_train", per_class_train, 1, allow_none=True)
    _check_int("per_class_test", per_class_test, 0, allow_none=True)


# --- scenarios --------------------------------------------------------------------------------


def class_incremental(
    source: Source,
    increments: int = 5,
    seed: int = 0,
    order: Sequence[str] | None = None,
    per_class_train: int | None = None,
    per_class_test: int | None = None,
    initial_classes: int | None = None,
    source_opts: Mapping[str, Any] | None = None,
) -> Stream:
    """Each increment brings new classes only (10 classes / 5 increments = 2 each).

    `order` fixes the class order (a subset selects classes), else it is a seeded permutation.
    `initial_classes` makes a larger first increment (the base model), the rest split evenly.
    `per_class_*` cap samples per class, for fast experiments.
    """
    _check_limits(per_class_train, per_class_test)
    r_order, r_train, r_test = _rngs(seed)
    train, test = _load(source, source_opts)
    groups = _groups(_order(train.classes, order, r_order), increments, initial_classes)
    flat = [c for g in groups for c in g]
    tr, te = _pool(train, flat, None, r_train), _pool(test, flat, per_class_test, r_test)
    sizes = list(np.cumsum([len(g) for g in groups]))
    per_step = [[np.flatnonzero(tr.labels == flat.index(c)) for c in g] for g in groups]
    return Stream("class-incremental", tr, te, _steps_from(tr, per_step, sizes, per_class_train, r_train))


def data_incremental(
    source: Source,
    increments: int = 5,
    seed: int = 0,
    per_class_train: int | None = None,
    per_class_test: int | None = None,
    source_opts: Mapping[str, Any] | None = None,
) -> Stream:
    """All classes are known from the first increment; each increment brings new samples of them.

    Each class's training samples are shuffled and dealt into `increments` equal chunks;
    `per_class_train` caps each chunk.
    """
    _check_limits(per_class_train, per_class_test)
    _check_int("increments", increments, 1)
    _, r_train, r_test = _rngs(seed)
    train, test = _load(source, source_opts)
    classes = train.present_classes()
    tr, te = _pool(train, classes, None, r_train), _pool(test, classes, per_class_test, r_test)
    chunks = [_chunks(tr, c, increments, r_train) for c in range(len(classes))]
    per_step = [[ch[i] for ch in chunks] for i in range(increments)]
    return Stream(
        "data-incremental",
        tr,
        te,
        _steps_from(tr, per_step, [len(classes)] * increments, per_class_train, r_train),
    )


def mixed(
    source: Source,
    increments: int = 5,
    seed: int = 0,
    order: Sequence[str] | None = None,
    per_class_train: int | None = None,
    per_class_test: int | None = None,
    initial_classes: int | None = None,
    source_opts: Mapping[str, Any] | None = None,
) -> Stream:
    """New classes arrive as in `class_incremental`, and every known class keeps receiving new samples.

    A class introduced at increment t has its training samples dealt evenly over increments t..end,
    so from the second increment on each one mixes new classes with new samples of known ones.
    """
    _check_limits(per_class_train, per_class_test)
    r_order, r_train, r_test = _rngs(seed)
    train, test = _load(source, source_opts)
    groups = _groups(_order(train.classes, order, r_order), increments, initial_classes)
    flat = [c for g in groups for c in g]
    tr, te = _pool(train, flat, None, r_train), _pool(test, flat, per_class_test, r_test)
    per_step: list[list[np.ndarray]] = [[] for _ in groups]
    for t, g in enumerate(groups):
        for c in g:
            for k, chunk in enumerate(_chunks(tr, flat.index(c), increments - t, r_train)):
                per_step[t + k].append(chunk)
    sizes = list(np.cumsum([len(g) for g in groups]))
    return Stream("mixed", tr, te, _steps_from(tr, per_step, sizes, per_class_train, r_train))


def domain_incremental(
    sources: Sequence[Source],
    seed: int = 0,
    per_class_train: int | None = None,
    per_class_test: int | None = None,
    size: tuple[int, int] | None = None,
    prefix: bool = False,
    source_opts: Sequence[Mapping[str, Any] | None] | None = None,
) -> Stream:
    """One increment per source: a new kind of data arrives with its own classes.

    Images are resized (antialiased bilinear) to `size`, default the largest height and width among
    the sources, so that all test data stacks into one set. Class names must be distinct across
    sources; `prefix=True` names them "<source>:<class>" (loaded pairs are called "source<i>").
    """
    _check_limits(per_class_train, per_class_test)
    if isinstance(sources, (str, os.PathLike, tuple)) or not isinstance(sources, Sequence) or len(sources) < 1:
        raise ConfigError("domain_incremental takes a list of sources, e.g. ['fashion-mnist', 'digits']; got "
                          f"{type(sources).__name__} {reprlib.repr(sources)}")
    if source_opts is not None and (isinstance(source_opts, (str, bytes, Mapping))
                                    or not isinstance(source_opts, Sequence)):
        raise ConfigError(f"domain_incremental source_opts is a list with one mapping (or None) per source; got "
                          f"{type(source_opts).__name__} {reprlib.repr(source_opts)}")
    if size is not None:
        size = check_size(size, "domain_incremental size")
    opts = list(source_opts) if source_opts is not None else [None] * len(sources)
    if len(opts) != len(sources):
        raise ConfigError(f"source_opts needs one entry per source ({len(sources)}); got {len(opts)}")
    _, r_train, r_test = _rngs(seed)
    pairs = [_load(s, o) for s, o in zip(sources, opts, strict=True)]
    if prefix:
        pairs = [
            _prefixed(p, s if isinstance(s, (str, os.PathLike)) else f"source{i}")
            for i, (s, p) in enumerate(zip(sources, pairs, strict=True))
        ]
    names = [c for tr, _ in pairs for c in tr.classes]
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise DataError(
            f"classes {dup} appear in more than one source; pass prefix=True to keep them distinct"
        )
    hw = tuple(size) if size is not None else tuple(max(tr.image_size[k] for tr, _ in pairs) for k in (0, 1))
    tr = concat([p[0].resized(hw).relabel(names) for p in pairs])
    te = _pool(concat([p[1].resized(hw).relabel(names) for p in pairs]), names, per_class_test, r_test)
    sizes = list(np.cumsum([len(p[0].classes) for p in pairs]))
    per_step = [[np.flatnonzero(tr.labels == names.index(c)) for c in p[0].classes] for p in pairs]
    return Stream("domain-incremental", tr, te, _steps_from(tr, per_step, sizes, per_class_train, r_train))


def _prefixed(pair: tuple[ImageSet, ImageSet], name: str | os.PathLike) -> tuple[ImageSet, ImageSet]:
    label = os.fspath(name)
    return tuple(ImageSet(s.images, s.labels, [f"{label}:{c}" for c in s.classes], s.skipped) for s in pair)  # type: ignore[return-value]
