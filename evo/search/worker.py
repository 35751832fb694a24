"""The candidate worker: parent version in, trained child + metrics + measured cost out (runs in a Ray task).

Pure with respect to the run: it reads the parent version and writes only its own candidate folder
(atomically), which the driver commits if the candidate wins.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from evo.errors import EvoError


def make_learner(parent_graph, state: dict[str, torch.Tensor], parent_meta: dict[str, Any], memory: int,
                 training: dict[str, Any], progress: bool = False, device: str | torch.device = "cpu"):
    """A Learner continuing from a version (or starting fresh at version 0) with the candidate's settings.

    The space was validated against the strategies' options (`parse_space`), so a setting left out
    here belongs to another strategy of the space (the fast path has no epochs), or is the round's
    `max_flops` cap, which only training strategies take.
    """
    from evo.learn import Learner
    from evo.learn.strategies import split_settings

    strategy, options = split_settings(training)
    learner = Learner(parent_graph, memory=memory, strategy=strategy, progress=progress, device=device, **options)
    if parent_meta.get("increment") is None:  # version 0: the imported model, nothing learned yet
        return learner, True
    return learner.load_state_dict(state, parent_graph), False


def task_device(task: dict[str, Any]) -> str:
    """The device a candidate runs on: the task's `device` if set, else the GPU Ray assigned to this
    task (Ray sets CUDA_VISIBLE_DEVICES, so it is cuda:0 here), else the CPU."""
    if task.get("device"):
        return str(task["device"])
    try:
        import ray

        gpus = ray.get_gpu_ids() if ray.is_initialized() else []
    except Exception:  # noqa: BLE001 - outside a Ray worker there is no assignment to read
        gpus = []
    return "cuda" if gpus and torch.cuda.is_available() else "cpu"


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """What an executor runs: a candidate (`evaluate`), or the winner learning the held-out images
    (`kind: learn_heldout`, `evo.search.absorb.learn_heldout`)."""
    if task.get("kind") == "learn_heldout":
        from evo.search.absorb import learn_heldout

        return learn_heldout(task)
    return evaluate(task)


def evaluate(task: dict[str, Any]) -> dict[str, Any]:
    """Apply the candidate's growth to the parent, learn the increment, save the child; return its results."""
    from evo.runs import Run
    from evo.search.candidate import Candidate, growth_base
    from evo.search.scenario import stream_for, validation_split
    from evo.search.space import SearchSpace, parse_space

    torch.set_num_threads(int(task.get("threads", 1)))
    run = Run(task["run_dir"])
    graph, meta, state = run.load_version(task["parent_version"])
    space = task["space"]
    if not isinstance(space, SearchSpace):  # a run's stored space document: validated once, here
        space = parse_space(space, source=f"{task['run_dir']}/config.json")
    cand = Candidate(**task["candidate"])
    inc, validation = validation_split(stream_for(space), task["increment"], space.validation_per_class)
    training = dict(cand.training)
    if task.get("max_flops"):
        training["max_flops"] = int(task["max_flops"])  # the round's budget caps SGD training
    grown = cand.apply(growth_base(graph, meta, space)) if cand.growth else graph
    learner, fresh = make_learner(grown, state, meta, space.memory, training, device=task_device(task))
    if cand.growth and not fresh:
        learner = learner.with_graph(grown)
    if task.get("latents"):  # the round's pending part: the increment's latents, encoded once by the driver
        from evo.learn.latent import open_store

        learner.use_latents(open_store(run.path, task["parent_version"], space.latents, pending=Path(task["latents"])))
    from evo.active.rounds import for_round
    from evo.search.absorb import forget_heldout

    fixes = for_round(run, task["parent_version"], inc.train.image_size)  # the user's corrections join the data
    # what the parent learned of the held-out images comes out again: candidates are scored on unseen ones
    forget = forget_heldout(stream_for(space), meta, space.validation_per_class, inc.classes_so_far, fixes.forget)
    report = learner.learn(inc, corrections=fixes.learn, forget=forget)
    val_accuracy, val_nll, val_correct = validation_scores(learner, validation) if len(validation) \
        else (report.accuracy, 0.0, "")
    child, child_state = learner.graph_, learner.state_dict()
    metrics = {"accuracy": report.accuracy, "forgetting": report.forgetting, "bwt": report.bwt,
               "row": report.row, "average_incremental_accuracy": report.average_incremental_accuracy}
    result = {"accuracy": float(report.accuracy), "val_accuracy": float(val_accuracy), "val_nll": float(val_nll),
              "val_correct": val_correct,
              # the head the exact solve over everything seen (or stored), not refit from the exemplars or
              # trained by gradient: a strategy says so (`exact_head`), and one that does not is lossy
              "lossless": bool(report.info.get("exact_head", False)),
              "params": child.num_params(), "flops": int(report.cost.flops),
              "seconds": float(report.cost.seconds), "peak_mem_bytes": int(report.cost.peak_mem_bytes),
              "out_dir": task["out_dir"], "report": {"metrics": metrics, "summary": str(report),
                                                     "corrections": fixes.meta(inc.train.image_size)}}
    save_candidate(Path(task["out_dir"]), child, child_state, result["report"])
    return result


def validation_scores(learner, validation) -> tuple[float, float, str]:
    """Accuracy and mean negative log-likelihood of the true class on the held-out validation images,
    and which images it got right (`pack_correct`).

    The likelihood ranks candidates whose accuracy ties (e.g. all near 100 % on an easy first
    increment): it still sees how confidently each one is right. The per-image record lets the driver
    compare two candidates on the same images (`evo.search.driver.paired_se`).
    """
    import numpy as np

    proba = learner.predict_proba(validation.images)
    truth = np.array([learner.classes_.index(validation.classes[i]) for i in validation.labels])
    picked = proba[np.arange(len(truth)), truth]
    right = proba.argmax(1) == truth
    return float(right.mean()), float(-np.log(np.clip(picked, 1e-12, None)).mean()), pack_correct(right)


def pack_correct(right) -> str:
    """A boolean per validation image as hex (one bit each), small enough for a trial's attributes."""
    import numpy as np

    return f"{len(right)}:" + np.packbits(np.asarray(right, dtype=bool)).tobytes().hex()


def unpack_correct(packed: str):
    """The boolean array `pack_correct` wrote, or None for a trial that has no record."""
    import numpy as np

    if not packed or ":" not in packed:
        return None
    n, hexbits = packed.split(":", 1)
    return np.unpackbits(np.frombuffer(bytes.fromhex(hexbits), dtype=np.uint8))[:int(n)].astype(bool)


def save_candidate(out_dir: Path, graph, state: dict[str, torch.Tensor], report: dict[str, Any]) -> None:
    """Write a candidate folder whole: staged under evo's temporary name, then swapped into place."""
    from safetensors.torch import save_file

    import evo.graph as eg
    from evo.fsutil import swap_dir, temp_dir

    staging = temp_dir(out_dir.parent, out_dir.name)
    try:
        eg.save(graph, staging / "model", extra_files={"report.json": report})
        if state:
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()},
                      str(staging / "model" / "state.safetensors"))
        swap_dir(staging / "model", out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_candidate(out_dir: Path):
    from safetensors.torch import load_file

    import evo.graph as eg

    if not (out_dir / "report.json").is_file():
        raise EvoError(f"candidate folder {out_dir} is missing or incomplete")
    state = load_file(str(out_dir / "state.safetensors")) if (out_dir / "state.safetensors").is_file() else {}
    return eg.load(out_dir), state, json.loads((out_dir / "report.json").read_text())


def evaluate_remote(task: dict[str, Any], cpus: float, gpus: float | None, name: str):
    """Submit `run_task` as a Ray task with its resources and a readable name for the dashboard."""

    remote = _remote_fn()
    opts: dict[str, Any] = {"num_cpus": cpus, "name": name, "max_retries": 0}
    if gpus:
        opts["num_gpus"] = gpus
    task = {**task, "threads": max(1, int(cpus))}
    return remote.options(**opts).remote(task)


_REMOTE = None


def _remote_fn():
    global _REMOTE
    if _REMOTE is None:
        import ray

        _REMOTE = ray.remote(run_task)
    return _REMOTE
