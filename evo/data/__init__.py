"""evo's data layer: sources (Fashion-MNIST, digits, image folders, CSV manifests), incremental
scenarios built from them, and the preprocessing a model version carries."""

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
from evo.data.transforms import Preprocess

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
