"""What a learning round takes from the corrections log: corrections to learn, and undone ones to forget.

A round (`evo learn RUN`, or a growth-search round) learns its increment plus every live correction
that its parent version has not learned yet: they join the training images, and the exemplar
memory with priority (`Learner.learn(..., corrections=)`). A correction learned by an earlier
version and undone since is forgotten (`forget=`): it leaves the memory, and the statistics take it
out. The child version's meta records `corrections` (the ids it includes) and `corrections_size`
(the image size they were learned at), so the lineage shows them and the engine can treat them as
part of the version's statistics (`Corrections` gives each its learned weight of 1, then lets the
guard top it up until it holds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evo.active.images import from_png
from evo.active.log import CorrectionLog
from evo.data.dataset import ImageSet
from evo.runs import Run

META_KEY = "corrections"
SIZE_KEY = "corrections_size"


@dataclass(frozen=True)
class RoundCorrections:
    """`learn`/`forget` as ImageSets (None when empty) with their ids; `included`: the child's ids."""

    learn: ImageSet | None = None
    learn_ids: list[int] = field(default_factory=list)
    forget: ImageSet | None = None
    forget_ids: list[int] = field(default_factory=list)
    included: list[int] = field(default_factory=list)

    def meta(self, image_size: tuple[int, int] | None) -> dict[str, Any]:
        """The child version's meta entries (nothing when no correction was ever included)."""
        if not self.included and not self.forget_ids:
            return {}
        return {META_KEY: self.included, SIZE_KEY: list(image_size) if image_size else None}

    def __str__(self) -> str:
        parts = [f"{len(self.learn_ids)} correction(s) learned"] if self.learn_ids else []
        parts += [f"{len(self.forget_ids)} undone correction(s) forgotten"] if self.forget_ids else []
        return ", ".join(parts)


def included(run: Run, version: int) -> list[int]:
    """The correction ids version `version` learned (cumulative over its ancestors)."""
    return [int(i) for i in run.version_meta(version).get(META_KEY) or []]


def for_round(run: Run, parent: int, size: tuple[int, int]) -> RoundCorrections:
    """The corrections a round on `parent` learns and forgets, their images resized straight to `size`
    (the increment's image size; the engine repeats that resize for their features). Reads only."""
    if not (run.path / "corrections.sqlite").is_file():
        return RoundCorrections(included=included(run, parent))
    log = CorrectionLog(run.path, write=False)
    try:
        rows = log.rows()
        have = set(included(run, parent))
        learn = [r for r in rows if r.undone is None and r.id not in have]
        forget = [r for r in rows if r.undone is not None and r.id in have]
        keep = sorted((have - {r.id for r in forget}) | {r.id for r in learn})
        return RoundCorrections(_images(log, learn, size), [r.id for r in learn], _images(log, forget, size),
                                [r.id for r in forget], keep)
    finally:
        log.close()


def learned_image(png: bytes, size: tuple[int, int]) -> np.ndarray:
    """A correction's image exactly as a round learned it: decoded, then resized straight to `size`."""
    from evo.data.transforms import resize_uint8

    return resize_uint8(from_png(png)[None], (int(size[0]), int(size[1])))[0]


def _images(log: CorrectionLog, rows: list, size: tuple[int, int]) -> ImageSet | None:
    if not rows:
        return None
    stack = np.stack([learned_image(log.image_png(r.id), size) for r in rows])
    classes = list(dict.fromkeys(r.label for r in rows))
    return ImageSet(stack, np.array([classes.index(r.label) for r in rows], dtype=np.int64), classes)
