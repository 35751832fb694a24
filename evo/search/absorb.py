"""After the choice, the committed version learns the round's held-out validation images too.

A round ranks its candidates on images held out of every increment so far (`validation_split`); each
candidate learns only the rest, a fifth less data where an increment is small. Once the winner is
chosen those images have done their job, and holding them out for good costs accuracy for nothing:
the winner's closed-form head adds them to its ridge statistics (sums, so this is exact) and solves
again, λ by its GCV walk from the winner's λ. A forward pass over the held-out images and the walk; no
gradient step. (At the winner's λ without a walk it cost a sixth less on a small search and lost 0.4
points on one seed of three: with fewer samples than features λ matters, and a fifth more data moves it.)

Later rounds must still rank on images their candidates never learned. The version records which
increments' held-out images it learned (`LEARNED_KEY`), and every candidate of the next round takes
them out of its statistics again before it is scored (`forget_heldout`), as undoing a correction
does: exact where the candidate kept its parent's statistics, and nothing to take out where it
rebuilt them from the exemplar memory or the latent store (neither holds a held-out image).

Only heads of the `evo` family learn them (the strategies whose head is the ridge solve); a winner
trained by a gradient strategy is committed as it is.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from evo.data.dataset import ImageSet, concat

LEARNED_KEY = "validation_learned"  # version meta: the increments whose held-out images its statistics hold


def learns_heldout(training: dict[str, Any]) -> bool:
    """Whether a candidate trained with `training` has a ridge head that can learn the held-out images."""
    from evo.learn.strategies import make_strategy, split_settings
    from evo.learn.strategies.evo import Evo

    name, options = split_settings(training)
    return isinstance(make_strategy(name, **options), Evo)


def forget_heldout(stream, parent_meta: dict[str, Any], per_class: int, classes: list[str],
                   forget: ImageSet | None) -> ImageSet | None:
    """`forget` (undone corrections) plus the held-out images the parent version learned: a candidate
    takes them out of its statistics before it is scored on them."""
    from evo.search.scenario import heldout

    learned = [int(j) for j in parent_meta.get(LEARNED_KEY) or []]
    if not learned:
        return forget
    held = heldout(stream, learned, per_class, classes)
    if forget is None or not len(forget):
        return held
    if forget.image_size != held.image_size:
        forget = forget.resized(held.image_size)
    return concat([held, forget.relabel(classes)])


def n_forgotten(stream, parent_meta: dict[str, Any], per_class: int, classes: list[str]) -> int:
    """How many held-out images each candidate of the round takes out again (priced as a forward pass)."""
    held = forget_heldout(stream, parent_meta, per_class, classes, None)
    return 0 if held is None else len(held)


def learn_heldout(task: dict[str, Any]) -> dict[str, Any]:
    """The worker's side: the winning candidate (`task['candidate_dir']`) learns every held-out image of
    increments 0..`task['increment']` with the `evo` strategy's exact update; the result is saved as a
    candidate folder (`task['out_dir']`). Its exemplar memory is the winner's: the held-out images stay
    out of it, so the next round's rebuilds hold none of them."""
    import torch

    from evo.learn.strategies import split_settings
    from evo.search.scenario import stream_for, validation_split
    from evo.search.space import SearchSpace, parse_space
    from evo.search.worker import load_candidate, make_learner, save_candidate, task_device

    t0 = time.perf_counter()
    torch.set_num_threads(int(task.get("threads", 1)))
    space = task["space"]
    if not isinstance(space, SearchSpace):
        space = parse_space(space, source=f"{task['run_dir']}/config.json")
    graph, state, report = load_candidate(Path(task["candidate_dir"]))
    inc, held = validation_split(stream_for(space), task["increment"], space.validation_per_class)
    _, options = split_settings({**task["training"], "strategy": "evo"})
    learner, _ = make_learner(graph, state, {"increment": task["increment"]}, space.memory,
                              {"strategy": "evo", **options}, device=task_device(task))
    memory = learner.memory_
    learned = learner.learn(dataclasses.replace(inc, train=held))
    learner.memory_ = memory
    # the statistics and λ change; the memory, the increment count and any other strategy's state do not
    new_state = {**state, **{k: v for k, v in learner.state_dict().items() if k.startswith("strategy.")}}
    summary = {"images": len(held), "flops": int(learned.cost.flops), "accuracy": float(learned.accuracy),
               "accuracy_before": float(report["metrics"]["accuracy"])}
    metrics = {**report["metrics"], "accuracy": learned.accuracy, "row": learned.row}
    save_candidate(Path(task["out_dir"]), learner.graph_, new_state, {**report, "metrics": metrics, "heldout": summary})
    return {**summary, "out_dir": task["out_dir"], "seconds": time.perf_counter() - t0}
