"""Built-in sources: Fashion-MNIST from the Debian package, scikit-learn digits, and load_source dispatch."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest

from evo.data import SOURCES, load_source
from evo.data.sources import fashion_mnist as fm
from evo.errors import ConfigError, DataError

needs_fmnist = pytest.mark.skipif(
    not fm.DEFAULT_DIR.is_dir() and not os.environ.get("CI"),  # CI must have it: .ci/setup installs it
    reason="needs `sudo apt-get install dataset-fashion-mnist`"
)


def test_registry_lists_sources():
    assert {"fashion-mnist", "digits", "folder", "csv"} <= set(SOURCES.names())


@needs_fmnist
def test_fashion_mnist_real_files():
    train, test = load_source("fashion-mnist")
    assert train.images.shape == (60000, 28, 28, 3) and test.images.shape == (10000, 28, 28, 3)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"
    assert set(np.unique(train.labels)) == set(range(10))
    assert set(train.class_counts().values()) == {6000} and set(test.class_counts().values()) == {1000}
    # Known facts of the published files: the first training and test images are ankle boots,
    # grayscale becomes three equal channels, and the border pixels are mostly background.
    assert train.labels[0] == 9 and list(test.labels[:3]) == [9, 2, 1]
    assert (train.images[:100, ..., 0] == train.images[:100, ..., 2]).all()
    assert train.images[:1000, 0, 0, 0].mean() < 5


def _idx(magic: int, dims: tuple[int, ...], body: bytes) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + body


def _write_fmnist(root, n=4):
    files = {
        "train-images-idx3-ubyte.gz": _idx(2051, (n, 28, 28), bytes(n * 784)),
        "train-labels-idx1-ubyte.gz": _idx(2049, (n,), bytes(range(n))),
        "t10k-images-idx3-ubyte.gz": _idx(2051, (2, 28, 28), bytes(2 * 784)),
        "t10k-labels-idx1-ubyte.gz": _idx(2049, (2,), bytes([3, 4])),
    }
    for name, raw in files.items():
        (root / name).write_bytes(gzip.compress(raw))


def test_fashion_mnist_env_override_parses_synthetic_idx(tmp_path, monkeypatch):
    _write_fmnist(tmp_path)
    monkeypatch.setenv(fm.ENV_VAR, str(tmp_path))
    train, test = load_source("fashion-mnist")
    assert len(train) == 4 and list(train.labels) == [0, 1, 2, 3] and list(test.labels) == [3, 4]


@pytest.mark.parametrize(
    "payload, fragment",
    [
        (b"not gzip at all", "cannot read"),
        (gzip.compress(_idx(2049, (4, 28, 28), bytes(4 * 784))), "magic"),
        (gzip.compress(_idx(2051, (4, 28, 28), bytes(100))), "truncated"),
        (gzip.compress(b"\x00\x00"), "magic"),
        (gzip.compress(_idx(2051, (4, 28, 28), bytes(4 * 784)))[:40], "cannot read"),
    ],
)
def test_corrupt_idx_names_the_file(tmp_path, payload, fragment):
    _write_fmnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(payload)
    with pytest.raises(DataError, match=fragment) as err:
        fm.fashion_mnist(directory=tmp_path)
    assert "train-images-idx3-ubyte.gz" in str(err.value)


def test_fashion_mnist_label_out_of_range(tmp_path):
    _write_fmnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(_idx(2049, (4,), bytes([0, 1, 2, 77])))
    )
    with pytest.raises(DataError, match="disagree"):
        fm.fashion_mnist(directory=tmp_path)


def test_fashion_mnist_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv(fm.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_source("fashion-mnist")
    (tmp_path / "half").mkdir()
    with pytest.raises(DataError, match="missing"):
        fm.fashion_mnist(directory=tmp_path / "half")


def test_digits_real_data():
    train, test = load_source("digits")
    assert len(train) + len(test) == 1797 and train.image_size == (8, 8)
    assert train.classes == [f"digit-{d}" for d in range(10)]
    assert train.images.max() == 255 and train.images.min() == 0
    counts = test.class_counts()
    assert all(40 <= n <= 50 for n in counts.values())  # ~25% of ~180 per class
    # seeded: same seed, same split; another seed, another split
    again = load_source("digits", seed=0)[1]
    assert np.array_equal(again.images, test.images)
    assert not np.array_equal(load_source("digits", seed=1)[1].images, test.images)
    # `size` as one side is a square, as a model's input_size is (a search space's source_opts: {size: 32})
    square = load_source("digits", size=16)[0]
    assert square.image_size == (16, 16) and square.image_size == load_source("digits", size=[16, 16])[0].image_size
    # `permute`: one seeded pixel permutation, the same for train and test and for every image
    ptrain, ptest = load_source("digits", permute=3)
    flat, pflat = train.images.reshape(len(train), 64, -1), ptrain.images.reshape(len(train), 64, -1)
    perm = np.random.default_rng(3).permutation(64)
    assert np.array_equal(pflat, flat[:, perm]) and not np.array_equal(pflat, flat)
    assert np.array_equal(ptest.images.reshape(len(test), 64, -1), test.images.reshape(len(test), 64, -1)[:, perm])
    assert np.array_equal(ptrain.labels, train.labels)
    for bad in ("yes", -1):
        with pytest.raises(ConfigError, match="permute must be an integer seed >= 0"):
            load_source("digits", permute=bad)
    for bad in (0, -3, [16], "x"):
        with pytest.raises(ConfigError, match="size must be a positive int"):
            load_source("digits", size=bad)


def test_load_source_errors():
    with pytest.raises(DataError, match="built-in datasets are named builtin:"):
        load_source("imagenet-21k")  # neither a path that exists nor a registered name
    with pytest.raises(ConfigError, match="valid options"):
        load_source("digits", test_frac=0.1)
    with pytest.raises(DataError, match="does not exist"):
        load_source("no/such/list.csv")
    with pytest.raises(DataError, match="not an image folder or .csv manifest that exists"):
        load_source("no/such/folder")
