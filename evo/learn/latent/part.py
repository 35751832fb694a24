"""One increment's latents: codes, labels and (int8) scales, on disk as .npy files read memory-mapped.

A part is written once and never changed (the store is append-only per increment). It is staged
under evo's temporary name, fsynced, then renamed into place, so it appears whole or not at all;
`part.json` records the row count and shape so that a damaged part is refused when opened.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from evo.errors import EvoError
from evo.fsutil import fsync_dir, fsync_tree, temp_dir
from evo.learn.latent.codec import check_codec, decode, dtype_of

PART_FILE = "part.json"
FORMAT = "evo-latent-part"


class LatentError(EvoError):
    """The latent store is missing, damaged, or cannot serve what was asked of it."""


@dataclass
class Part:
    """The latents of one increment's training images at the cut (rows in the increment's order)."""

    increment: int
    classes: list[str]  # `labels` index these names (the increment's own class list)
    labels: np.ndarray  # int64 (n,)
    codes: np.ndarray  # (n, *shape): fp32/fp16/int8, a memory map when read from disk
    scales: np.ndarray | None  # (n, C) fp32 for int8, else None
    codec: str
    cut: str
    flops: int = 0  # the pass below the cut that produced it

    def __post_init__(self) -> None:
        check_codec(self.codec)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.labels) != len(self.codes) or (self.scales is not None and len(self.scales) != len(self.codes)):
            raise LatentError(f"latent part of increment {self.increment}: {len(self.codes)} latents but "
                              f"{len(self.labels)} labels; it is damaged, delete the run's pending part and rerun")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape[1:])

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes + self.labels.nbytes + (0 if self.scales is None else self.scales.nbytes))

    def label_names(self) -> np.ndarray:
        return np.asarray(self.classes, dtype=object)[self.labels]

    def decode(self, rows: np.ndarray) -> Tensor:
        rows = np.sort(np.asarray(rows))  # memory maps read fastest in order
        return decode(self.codes[rows], None if self.scales is None else self.scales[rows], self.codec)

    def info(self) -> dict[str, Any]:
        return {"format": FORMAT, "increment": self.increment, "classes": list(self.classes), "rows": len(self),
                "shape": list(self.shape), "codec": self.codec, "cut": self.cut, "flops": int(self.flops),
                "bytes": self.nbytes}


def write_part_files(folder: Path, part: Part) -> None:
    """Write the part's files into an existing (staging) folder; part.json last."""
    np.save(folder / "latents.npy", np.ascontiguousarray(part.codes), allow_pickle=False)
    np.save(folder / "labels.npy", part.labels, allow_pickle=False)
    if part.scales is not None:
        np.save(folder / "scales.npy", np.ascontiguousarray(part.scales), allow_pickle=False)
    (folder / PART_FILE).write_text(json.dumps(part.info(), indent=1))


def publish(staging: Path, target: Path) -> None:
    """Rename a fully written staging folder to `target` (durable, never replacing an existing one)."""
    fsync_tree(staging)
    if target.exists():
        raise LatentError(f"{target} already exists; a latent part is written once and never replaced")
    os.rename(staging, target)
    fsync_dir(target.parent)


def write_part(target: Path, part: Part, extra: Any = None) -> Path:
    """Write `part` to folder `target` atomically; `extra(folder)` may add files to the same folder first."""
    target = Path(target)
    staging = temp_dir(target.parent, target.name)
    try:
        write_part_files(staging, part)
        if extra is not None:
            extra(staging)
        publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def read_part(folder: Path) -> Part:
    """Open a part written by `write_part`, memory-mapped; a missing or inconsistent file is a LatentError."""
    folder = Path(folder)
    try:
        info = json.loads((folder / PART_FILE).read_text())
        if info.get("format") != FORMAT:
            raise ValueError(f"format is {info.get('format')!r}, not {FORMAT!r}")
        codec = check_codec(info["codec"])
        codes = np.load(folder / "latents.npy", mmap_mode="r", allow_pickle=False)
        labels = np.load(folder / "labels.npy", allow_pickle=False)
        scales = np.load(folder / "scales.npy", mmap_mode="r", allow_pickle=False) if codec == "int8" else None
    except (OSError, ValueError, KeyError) as e:
        raise LatentError(f"latent part {folder} is unreadable ({e}); it was not written by this evo or is "
                          "damaged") from None
    if len(codes) != info["rows"] or list(codes.shape[1:]) != list(info["shape"]) or codes.dtype != dtype_of(codec):
        raise LatentError(f"latent part {folder}: part.json says {info['rows']} × {info['shape']} {codec}, the file "
                          f"holds {codes.shape} {codes.dtype}; it is damaged")
    return Part(int(info["increment"]), list(info["classes"]), labels, codes, scales, codec, str(info["cut"]),
                int(info.get("flops", 0)))
