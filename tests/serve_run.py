"""A small real run for the server tests: small_cnn learns 8 Fashion-MNIST classes (2 held back as new ones)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

KNOWN = 8  # classes 8, 9 (Bag, Ankle boot) are the "new class" annotations


def fashion(split: str = "test"):
    from evo.data import load_source

    train, test = load_source("fashion-mnist")
    return train if split == "train" else test


def make_run(path: Path, per_class: int = 30, seed: int = 0, model: str = "small_cnn",
             input_size: int | None = None) -> Path:
    from evo.data import ImageSet
    from evo.learn import Learner
    from evo.runs import Run
    from evo.zoo import resolve

    train = fashion("train")
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(train.labels == c), per_class, replace=False) for c in range(KNOWN)])
    data = ImageSet(np.ascontiguousarray(train.images[idx]), train.labels[idx], train.classes[:KNOWN])
    graph = resolve(model, input_size)
    run = Run.create(path, {"learn": {"model": model, "strategy": "evo", "memory": 100, "head": "auto"}}, kind="learn")
    run.commit_version(graph, {"increment": None, "ops": [], "chosen": "initial model", "classes": graph.classes})
    learner = Learner(graph, memory=100, progress=False)
    learner.learn(data)
    run.commit_version(learner.graph_, {"increment": 0, "ops": [], "chosen": "serve test run",
                                        "classes": learner.classes_}, state=learner.state_dict())
    return path
