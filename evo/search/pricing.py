"""Price candidates and budgets before anything runs (FLOPs on the meta device; no memory, no compute).

Prices are upper bounds of what the worker measures: the full forward is charged where the learner
may run only up to the features, and every layer is charged a weight gradient.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from evo.graph.archgraph import ArchGraph
from evo.learn.strategies.evo import VERIFY_IMAGES

DEFAULT_JOINT_EPOCHS = 3
_FLOPS_PER_SECOND: float | None = None


def _per_image(graph: ArchGraph, backward: bool) -> int:
    return graph.flops(batch=1, backward=backward)


def candidate_flops(grown: ArchGraph, inc, parent_meta: dict[str, Any], cand, space,
                    seen_before: int | None = None) -> int:
    """What learning `inc` with this candidate may cost, in FLOPs (an upper bound of the measured cost).

    `seen_before` (training images of the earlier increments) bounds the exemplar memory's fill.
    """
    training = cand.training
    strategy = training.get("strategy", "evo")
    if parent_meta.get("increment") is None and strategy in ("evo", "evo_tune"):
        grown = _prepared(grown, strategy, training)  # the first increment rewires the head's input
    n = len(inc.train)
    m = space.memory if parent_meta.get("increment") is not None else 0
    if seen_before is not None:
        m = min(m, seen_before)
    fwd = _per_image(grown, backward=False)
    d = grown.attrs(grown.head)["in_features"] if grown.head else 0
    if strategy in ("evo", "evo_tune"):  # the statistics may also cover spare taps (upstream blocks:
        d = max(d, _strategy(strategy, training).statistics_width(grown))  # only their pooling is extra)
    c = len(inc.classes_so_far)
    solve = ridge_flops(n + m, d, c)
    # after growth: old and new features compared on a few exemplars, then possibly the statistics and
    # the exemplars' features recomputed from memory
    rebuilt = 2 * m + 2 * VERIFY_IMAGES if cand.growth else 0
    if strategy == "evo":  # the increment's features are computed once and reused for the memory
        return int(fwd * (n + rebuilt) + solve)
    epochs = int(training.get("epochs", 2))
    step = _step_per_image(grown, strategy, training)
    train = epochs * (n + m) * step
    if strategy == "evo_tune":  # fast path, fine-tuning, then a refit from memory + increment
        return int(fwd * (n + rebuilt) + solve + train + fwd * (n + 3 * m) + solve)
    teacher = epochs * (n + m) * fwd if strategy == "lwf" else 0
    return int(train + teacher + fwd * (n + 2 * m))


def _step_per_image(graph: ArchGraph, strategy: str, training: dict[str, Any]) -> int:
    """One training step per image, with the candidate's trainable set (frozen layers get no weight
    gradient, and no input gradient below the first trainable one): what the trainer measures."""
    from evo.learn.strategies import option_defaults
    from evo.learn.train import trainable_nodes

    default = option_defaults(strategy).get("trainable", "all")
    return graph.flops(batch=1, backward=True, trainable=trainable_nodes(graph, training.get("trainable", default)))


def ridge_flops(n: int, d: int, c: int) -> int:
    """Upper bound of the closed-form head's work: Gram and cross products of n rows, the GCV walk at
    its evaluation cap (Cholesky + triangular inverse each), the final solve, and calibration."""
    from evo.learn.strategies.evo import GCV_MAX_EVALS as max_evals

    d1 = d + 1
    return int(2 * n * d1 * (d1 + c) + max_evals * (2 * d1**3 // 3 + 8 * d1 * d1 * c)
               + d1**3 // 3 + 4 * d1 * d1 * c + 2 * n * d * c)


def _strategy(strategy: str, training: dict[str, Any]):
    """The closed-form strategy with the candidate's feature options (taps, spare)."""
    from evo.learn.strategies import make_strategy

    return make_strategy(strategy, **{k: training[k] for k in ("taps", "spare") if k in training})


def _prepared(graph: ArchGraph, strategy: str, training: dict[str, Any]) -> ArchGraph:
    return _strategy(strategy, training).prepare(graph)


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
        import evo.zoo

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
