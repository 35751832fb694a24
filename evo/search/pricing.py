"""Price candidates and budgets before anything runs (FLOPs from shapes; no memory, no compute).

A candidate's price is its strategy's (`Strategy.price`, beside the code that spends the compute),
an upper bound of what the worker measures. This module only states the round's workload and turns
the space's budget (a fraction of joint retraining, FLOPs, or seconds) into FLOPs.
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


def candidate_flops(grown: ArchGraph, inc, parent_meta: dict[str, Any], cand, space,
                    seen_before: int | None = None, cut: str | None = None, n_forget: int = 0) -> int:
    """What learning `inc` with this candidate may cost, in FLOPs (an upper bound of the measured cost):
    the candidate's strategy prices its own work (`Strategy.price`).

    `seen_before` (training images of the earlier increments) bounds the exemplar memory's fill and the
    stored latents; `cut`: the latent store's cut node (the pass below it is priced once per round);
    `n_forget`: held-out images the parent learned, which the candidate takes out again.
    """
    from evo.learn.strategies import Workload, make_strategy, split_settings

    name, options = split_settings(cand.training)
    first = parent_meta.get("increment") is None
    m = 0 if first else space.memory
    if seen_before is not None:
        m = min(m, seen_before)
    work = Workload(n_train=len(inc.train), n_classes=len(inc.classes_so_far), n_memory=m,
                    n_seen=seen_before or 0, first=first, grown=bool(cand.growth), cut=cut, n_forget=n_forget)
    return make_strategy(name, **options).price(grown, work)


def heldout_flops(graph: ArchGraph, n_images: int, n_classes: int, training: dict[str, Any], n_memory: int = 0,
                  first: bool = False) -> int:
    """What learning `n_images` held-out images into a committed version's head costs
    (`evo.search.absorb`): the `evo` strategy's price for them (with `training`'s evo options), no
    rebuild; the `n_memory` exemplars' stored features join the calibration; `first`: `graph` is not
    prepared yet (round 0 prices the imported model)."""
    from evo.learn.strategies import Workload, make_strategy, split_settings

    _, options = split_settings({**training, "strategy": "evo"})
    work = Workload(n_train=n_images, n_classes=n_classes, n_memory=n_memory, first=first)
    return make_strategy("evo", **options).price(graph, work)


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
