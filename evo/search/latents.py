"""A round's share of the latent store: the increment's pass below the cut, computed once per round.

Every candidate of a round needs the same latents (the network below the cut is frozen), so the
driver encodes the increment before dispatching any candidate and publishes the result at
`runs/<run>/latents/round-<i>/` (the part, and the store after it: live rows, eviction). It is held
in the run folder rather than Ray's object store because workers memory-map it (one copy in the page
cache however many candidates run), it survives a killed driver (a resume reuses it, it is not
encoded again), it is on the shared storage that several machines already read, and the commit
hard-links it into the new version, so it becomes part of the run exactly when the version does.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evo.graph.archgraph import ArchGraph
from evo.learn.cost import CostMeter
from evo.learn.latent import (
    LatentError,
    StoreConfig,
    cut_node,
    encode_part,
    open_store,
    pending_dir,
    read_part,
    write_pending,
)
from evo.learn.latent.store import STORE_DIR


@dataclass(frozen=True)
class Staged:
    """The round's pending part: where it is, the cut, the FLOPs and seconds its pass cost, its bytes."""

    folder: Path
    cut: str
    flops: int
    seconds: float
    bytes: int
    summary: dict[str, Any]


def stage_round(run_dir: Path, index: int, parent_version: int, graph: ArchGraph, train, config: StoreConfig,
                preprocess: Any) -> Staged:
    """Encode round `index`'s training images below the cut (or reuse what a killed driver published)."""
    folder = pending_dir(run_dir, index)
    _remove_stale(Path(run_dir), index)
    if folder.is_dir():
        try:
            info = json.loads((folder / "round.json").read_text())
            if info.get("parent_version") == parent_version and len(read_part(folder)) == len(train):
                return _staged(folder, info)
        except (OSError, ValueError, LatentError):
            pass
        shutil.rmtree(folder)  # evo's own pending part, of another parent: encode again
    store = open_store(run_dir, parent_version, config)
    cut = store.cut or cut_node(graph, config.cut)
    meter = CostMeter()
    t0 = time.perf_counter()
    with meter:
        part = encode_part(graph, cut, train.images, train.labels, list(train.classes), index, config.codec,
                           preprocess, meter)
        after = store.with_part(part)
    info = {"parent_version": parent_version, "flops": part.flops, "seconds": time.perf_counter() - t0,
            "bytes": part.nbytes, "cut": cut}
    write_pending(run_dir, index, after, info)
    return _staged(folder, info)


def _staged(folder: Path, info: dict[str, Any]) -> Staged:
    summary = json.loads((folder / "manifest.json").read_text())
    return Staged(folder, str(info["cut"]), int(info["flops"]), float(info["seconds"]), int(info["bytes"]), summary)


def _remove_stale(run_dir: Path, index: int) -> None:
    """Pending parts of earlier rounds were committed with their versions (hard links): drop the run-level names."""
    root = run_dir / STORE_DIR
    if not root.is_dir():
        return
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("round-") and p.name[6:].isdigit() and int(p.name[6:]) < index:
            shutil.rmtree(p)


def drop_pending(run_dir: Path, index: int) -> None:
    """After the commit: the version holds the part; the pending name goes."""
    shutil.rmtree(pending_dir(run_dir, index), ignore_errors=True)
