"""The data-source registry: each source is a function (**options) -> (train, test) ImageSets."""

from __future__ import annotations

from collections.abc import Callable

from evo.data.dataset import ImageSet
from evo.registry import Registry

Split = tuple[ImageSet, ImageSet]
SourceFn = Callable[..., Split]

SOURCES: Registry[SourceFn] = Registry("data source")
