"""Fashion-MNIST from the Debian package `dataset-fashion-mnist` (gzipped IDX files, parsed here).

Nothing is downloaded: the files are looked up in `directory`, else `$EVO_FASHION_MNIST_DIR`, else
the package's install path.
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from evo.data.dataset import ImageSet
from evo.data.sources.base import SOURCES, Split
from evo.errors import DataError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "EVO_FASHION_MNIST_DIR"
CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049  # ubyte data, 3 and 1 dimensions


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one (optionally gzipped) IDX file of unsigned bytes; any damage is a DataError naming it."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"cannot read {path}: {e}; reinstall with `sudo apt-get install --reinstall dataset-fashion-mnist`"
        ) from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        got = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
        raise DataError(f"{path} is not an IDX file of the expected kind (magic {got}, expected {magic})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(dims)):
        raise DataError(
            f"{path} is truncated or padded: header says {dims}, body has {len(raw) - header} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def find_dir(directory: str | os.PathLike | None = None) -> Path:
    """The folder holding the four files: argument, then env var, then the Debian path."""
    root = Path(directory or os.environ.get(ENV_VAR) or DEFAULT_DIR)
    if not root.is_dir():
        raise DataError(
            f"Fashion-MNIST folder {root} not found; install it with `sudo apt-get install dataset-fashion-mnist` "
            f"or point {ENV_VAR} at a folder with the IDX files"
        )
    return root


def _file(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"{root / (stem + '.gz')} is missing; `sudo apt-get install --reinstall dataset-fashion-mnist`"
    )


def _split(root: Path, which: str) -> ImageSet:
    img_stem, lab_stem = _FILES[which]
    images = read_idx(_file(root, img_stem), _IMAGES_MAGIC)
    labels = read_idx(_file(root, lab_stem), _LABELS_MAGIC)
    if len(images) != len(labels) or (labels.size and labels.max() >= len(CLASSES)):
        raise DataError(
            f"Fashion-MNIST {which} files in {root} disagree: {len(images)} images, {len(labels)} labels"
        )
    return ImageSet.from_arrays(images, labels, CLASSES)


@functools.lru_cache(maxsize=2)
def _load_cached(root: str, stamp: tuple[float, ...]) -> Split:
    return _split(Path(root), "train"), _split(Path(root), "test")


@SOURCES.register("fashion-mnist")
def fashion_mnist(directory: str | os.PathLike | None = None) -> Split:
    """60,000 train / 10,000 test 28x28 images in 10 clothing classes (converted to RGB).

    Results are cached per folder (ImageSets are read-only, so sharing them is safe).
    """
    root = find_dir(directory).resolve()
    stamp = tuple(p.stat().st_mtime for p in sorted(root.glob("*idx*")))
    return _load_cached(str(root), stamp)
