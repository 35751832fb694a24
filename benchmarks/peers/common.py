"""What every method in the peer benchmark shares: the stream, the backbone, the test split.

Split Fashion-MNIST, class-incremental, 5 increments × 2 classes, from `evo.data.class_incremental`
(the class order and the per-class samples depend only on the seed and the caps), and the
ImageNet-pretrained EfficientNet-Lite0 at 64 px from `evo.zoo`, compiled by `.to_module()`. Every
method is evaluated on the last increment's test set (all 10 classes), restricted after increment
i to the classes seen so far. Imported by the Avalanche runner too (its venv has evo's few deps).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import evo.data  # noqa: E402
import evo.zoo  # noqa: E402
from evo.data.transforms import Preprocess  # noqa: E402

DATASET, INCREMENTS, INPUT_SIZE, MEMORY = "fashion-mnist", 5, 64, 500


@dataclass
class Split:
    """One seed's data: per-increment training images/labels, the test set, each class's increment."""

    seed: int
    train_images: list[np.ndarray]  # uint8 (n_i, H, W, 3) per increment
    train_labels: list[np.ndarray]  # int64, in the stream's arrival order (label i = classes[i])
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]
    class_to_increment: list[int]

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def stream(seed: int, per_class: int | None, per_class_test: int | None):
    return evo.data.class_incremental(DATASET, increments=INCREMENTS, seed=seed,
                                      per_class_train=per_class, per_class_test=per_class_test)


def load_split(seed: int, per_class: int | None, per_class_test: int | None) -> Split:
    s = stream(seed, per_class, per_class_test)
    incs = list(s)
    last = incs[-1]
    task = [next(i for i, inc in enumerate(incs) if c in inc.new_classes) for c in last.classes_so_far]
    return Split(seed, [np.asarray(i.train.images) for i in incs], [np.asarray(i.train.labels) for i in incs],
                 np.asarray(last.test.images), np.asarray(last.test.labels), list(last.classes_so_far), task)


def backbone_graph():
    return evo.zoo.load("efficientnet_lite0", pretrained=True, input_size=INPUT_SIZE)


def preprocess(graph) -> Preprocess:
    return Preprocess.from_dict(graph.meta["preprocess"]) if "preprocess" in graph.meta else Preprocess.lite0(INPUT_SIZE)


def to_tensor(images: np.ndarray, pre: Preprocess, batch: int = 1024) -> torch.Tensor:
    """Preprocessed float32 NCHW inputs (for the gradient-based methods' data loaders)."""
    return torch.cat([pre(images[i : i + batch]) for i in range(0, len(images), batch)])
