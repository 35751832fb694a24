"""A real run for the corrections tests: Lite0 (ImageNet weights) at 32 px, the `evo` strategy, learnt
from a folder of Fashion-MNIST PNGs (3 classes), made once per session and copied per test."""

from __future__ import annotations

import shutil
import threading
import weakref
from pathlib import Path

import numpy as np
from PIL import Image

from evo.data import load_source

CLASSES = ["top", "trouser", "pullover"]


def fashion(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images and labels of the first 3 classes (0, 1, 2)."""
    train, test = load_source("fashion-mnist")
    data = train if split == "train" else test
    keep = np.isin(data.labels, [0, 1, 2])
    return data.images[keep], data.labels[keep]


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray | None) -> Path:
    """PNGs under root/<class>/ (or flat under root when labels is None)."""
    for i, img in enumerate(images):
        d = root / CLASSES[labels[i]] if labels is not None else root
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i}.png")
    return root


def make_run(base: Path, per_class: int = 400) -> Path:
    from evo.learn_run import learn_from_data

    images, labels = fashion("train")
    idx = np.concatenate([np.nonzero(labels == c)[0][:per_class] for c in range(3)])
    data = write_folder(base / "data", images[idx], labels[idx])
    learn_from_data("efficientnet_lite0", data, run_dir=base / "run", input_size=32, progress=False,
                    say=lambda _: None)
    return base / "run"


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


class LiveImages:
    """Wraps a decoder and records, at each call, how many images it returned earlier are still alive."""

    def __init__(self, decode):
        self.decode, self.refs, self.most, self._lock = decode, [], 0, threading.Lock()

    def __call__(self, *args, **kwargs):
        with self._lock:
            self.most = max(self.most, sum(r() is not None for r in self.refs))
        out = self.decode(*args, **kwargs)
        with self._lock:
            self.refs.append(weakref.ref(out))
        return out
