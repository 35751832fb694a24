"""Build a space's data stream the same way in the driver and in every worker (seeded, so identical)."""

from __future__ import annotations

import dataclasses
import functools
import json

from evo.data import scenarios
from evo.data.dataset import ImageSet, concat, holdout_split
from evo.errors import ConfigError
from evo.search.space import SearchSpace

_BUILDERS = {"class_incremental": scenarios.class_incremental, "data_incremental": scenarios.data_incremental,
             "mixed": scenarios.mixed, "domain_incremental": scenarios.domain_incremental}


def stream_for(space: SearchSpace | dict) -> scenarios.Stream:
    cfg = space.scenario if isinstance(space, SearchSpace) else space
    return _cached(json.dumps(cfg, sort_keys=True))


@functools.lru_cache(maxsize=4)
def _cached(cfg_json: str) -> scenarios.Stream:
    cfg = json.loads(cfg_json)
    kind = cfg.pop("kind", "class_incremental")
    source = cfg.pop("source")
    try:
        if kind == "domain_incremental":
            return _BUILDERS[kind](source if isinstance(source, list) else [source], **cfg)
        return _BUILDERS[kind](source, **cfg)
    except TypeError as e:  # an option the scenario does not take
        raise ConfigError(f"scenario: {e}; see evo.data.{kind} for its options") from None


def validation_split(stream: scenarios.Stream, index: int, per_class: int) -> tuple[scenarios.Increment, ImageSet]:
    """Increment `index` without its validation images, and the validation set of every class seen so far.

    Each increment j keeps `per_class` images per class (at most a fifth of the class, seeded by j) out
    of its training data; candidates are ranked on the union of those held-out sets for j <= index, so
    a round's choice never looks at the test split. The same split is made in every worker.
    """
    inc = stream[index]
    fit, _ = _holdout(stream, index, per_class)
    return dataclasses.replace(inc, train=fit), heldout(stream, range(index + 1), per_class, inc.classes_so_far)


def heldout(stream: scenarios.Stream, increments, per_class: int, classes: list[str]) -> ImageSet:
    """The validation images held out of `increments` (`validation_split`'s), labelled over `classes`.

    A committed version learns its round's held-out images after the choice (`evo.search.absorb`), and
    later rounds take them out of their candidates' statistics again, so that validation stays unseen."""
    return concat([_holdout(stream, j, per_class)[1].relabel(classes) for j in increments])


def _holdout(stream: scenarios.Stream, j: int, per_class: int) -> tuple[ImageSet, ImageSet]:
    """Increment j's training images split into (fit, validation): `per_class` images per class, at most
    a fifth of its smallest class, seeded by j."""
    train_j = stream[j].train
    counts = [c for c in train_j.class_counts().values() if c]
    fraction = min(per_class / max(min(counts), 1), 0.2) if counts else 0.0
    return holdout_split(train_j, fraction, seed=10_007 + j)
