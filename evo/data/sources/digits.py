"""scikit-learn's bundled 8x8 digits (1,797 images; no download), as a small second domain."""

from __future__ import annotations

import numpy as np

from evo.data.dataset import ImageSet, holdout_split
from evo.data.sources.base import SOURCES, Split

# Prefixed so that, next to Fashion-MNIST or a folder whose classes are "0".."9", a
# domain-incremental stream never merges two different kinds of image under one name.
CLASSES = [f"digit-{d}" for d in range(10)]


@SOURCES.register("digits")
def digits(test_fraction: float = 0.25, seed: int = 0) -> Split:
    """Pixel values 0..16 are scaled to 0..255; seeded per-class train/test split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    data = ImageSet.from_arrays(images, bunch.target, CLASSES)
    return holdout_split(data, test_fraction, seed)
