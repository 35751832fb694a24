"""evo's data layer: sources (Fashion-MNIST, digits, image folders, CSV manifests), incremental
scenarios built from them, and the preprocessing a model version carries."""

from __future__ import annotations

from typing import Any

from evo.data.dataset import ImageSet, concat, holdout_split
from evo.data.scenarios import (
    Increment,
    Stream,
    class_incremental,
    data_incremental,
    domain_incremental,
    mixed,
)
from evo.data.sources import SOURCES, load_source

__all__ = [
    "SOURCES",
    "ImageSet",
    "Increment",
    "Preprocess",
    "Stream",
    "class_incremental",
    "concat",
    "data_incremental",
    "domain_incremental",
    "holdout_split",
    "load_source",
    "mixed",
]


def __getattr__(name: str) -> Any:
    # Preprocess (torch) loads on first use, so that checking a source (`evo learn --data`) does not import torch
    if name == "Preprocess":
        from evo.data.transforms import Preprocess

        return Preprocess
    raise AttributeError(f"module 'evo.data' has no attribute {name!r}")
