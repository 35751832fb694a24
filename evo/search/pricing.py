"""Price candidates and budgets before anything runs (FLOPs on the meta device; no memory, no compute).

Prices are upper bounds of what the worker measures: the full forward is charged where the learner
may run only up to the features, and every layer is charged a weight gradient.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from evo.graph.archgraph import ArchGraph

DEFAULT_JOINT_EPOCHS = 3
_FLOPS_PER_SECOND: float | None = None


def _per_image(graph: ArchGraph, backward: bool) -> int:
    return graph.flops(batch=1, backward=backward)


def candidate_flops(grown: ArchGraph, inc, parent_meta: dict[str, Any], cand, space) -> int:
    """What learning `inc` with this candidate may cost, in FLOPs."""
    training = cand.training
    strategy = training.get("strategy", "evo")
    n = len(inc.train)
    m = space.memory if parent_meta.get("increment") is not None else 0
    fwd = _per_image(grown, backward=False)
    d = grown.attrs(grown.head)["in_features"] if grown.head else 0
    solve = 5 * (d + 1) ** 3 + 4 * (d + 1) ** 2 * len(inc.classes_so_far)
    if strategy == "evo":
        rebuilt = 2 * m if cand.growth else 0  # statistics and exemplar features recomputed from memory
        return int(fwd * (n + rebuilt) + solve)
    epochs = int(training.get("epochs", 2))
    images = n + m  # replay strategies train on the increment and the memory
    step = _per_image(grown, backward=True)
    teacher = fwd if strategy in ("lwf", "evo_tune") else 0
    return int(epochs * images * (step + teacher) + fwd * (n + 2 * m) + solve)


def joint_flops(parent: ArchGraph, stream, index: int, space) -> float:
    """Joint retraining on every image seen so far (increments 0..index) for `joint_epochs` epochs."""
    seen = sum(len(stream[i].train) for i in range(index + 1))
    epochs = space.raw.get("budget", {}).get("joint_epochs", DEFAULT_JOINT_EPOCHS)
    return float(epochs * seen * _per_image(parent, backward=True))


def budget_flops(space, joint: float, graph: ArchGraph | None = None) -> float:
    kind, amount = space.budget
    if kind == "fraction_of_joint":
        return amount * joint
    if kind == "flops":
        return amount
    return amount * flops_per_second(graph)


def flops_per_second(graph: ArchGraph | None) -> float:
    """This machine's measured forward throughput (FLOPs/s), to turn a seconds budget into FLOPs."""
    global _FLOPS_PER_SECOND
    if _FLOPS_PER_SECOND is None:
        import evo

        g = graph or evo.zoo.load("small_cnn")
        net = g.to_module().eval()
        x = torch.randn(32, *g.input_shape)
        with torch.no_grad():
            net(x)
            t = time.perf_counter()
            for _ in range(3):
                net(x)
            dt = (time.perf_counter() - t) / 3
        _FLOPS_PER_SECOND = g.flops(batch=32) / max(dt, 1e-6)
    return _FLOPS_PER_SECOND
