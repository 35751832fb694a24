"""`evo learn`: apply one increment from a user's labelled folder or CSV to a model, committing a new version.

Everything that can fail (the options, the data, the class names, the learning itself) runs before
anything is written: a new run folder appears only with its first learned version, and a learn into
an existing run holds the run's writer lock from reading its latest version to committing the next.
The run remembers the content hashes of every image it learned (`run.seen` in the version's state),
so learning the same images twice is caught.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evo.checks import check_memory
from evo.data.sources import check_source
from evo.data.sources._images import TOO_LARGE
from evo.errors import ConfigError, DataError
from evo.registry import unknown_name
from evo.runs import Run, RunError, check_new_run_dir, is_run

if TYPE_CHECKING:  # torch loads only once the input is checked: a typo is refused in a fraction of a second
    import torch

SEEN_KEY = "run.seen"
DEFAULTS = {"strategy": "evo", "memory": 500, "head": "auto"}
# The built-in strategies' names (registering them imports torch); tests hold them equal to evo.learn.STRATEGIES
BUILTIN_STRATEGIES = ("evo", "evo_latent", "evo_tune", "ewc", "joint", "lwf", "naive", "replay")


@dataclass(frozen=True)
class LearnOptions:
    strategy: str
    memory: int
    head: str


def learn_from_data(model: str, data: str | os.PathLike, run_dir: str | os.PathLike | None = None,
                    strategy: str | None = None, memory: int | None = None, input_size: int | None = None,
                    head: str | None = None, allow_duplicates: bool = False, progress: bool = True,
                    say: Callable[[str], None] = print, **options: Any) -> int:
    """Learn `data` (an image folder, a CSV manifest or `builtin:NAME`) into `model`; commit the next version.

    `model` is a run folder made by `evo learn` (continues from its latest version, with the options it
    was made with unless given here), a saved model folder or a zoo name (a new run folder is created,
    default runs/learn-<name>, holding it as version 0). Returns the committed version number.
    """
    _check_input(data, strategy, memory)
    path = Path(model)
    if is_run(path):
        run = Run.open(path)
        if run.kind != "learn":
            raise RunError(f"{run.path} is a growth search run (`evo launch`); learning other data into it would "
                           f"break its stream. Start a new run from one of its versions: "
                           f"`evo learn {run.path}/versions/N --data {data}`")
        with run.lock("learn"):
            if run.took_over:
                say(f"took over the run from pid {run.took_over.get('pid')}, which stopped without releasing it")
            graph, meta, state = run.load_version()
            saved = {**DEFAULTS, **run.config.get("learn", {}), **(meta.get("learn") or {})}
            opts = _options(strategy, memory, head, saved)
            learned = _learn(graph, state, meta, data, opts, allow_duplicates, progress, say, options,
                             run=run, parent=run.latest())
            return _commit(run, learned, opts, data, say)
    if path.is_dir() and not (path / "graph.json").is_file():
        raise RunError(f"{path} is neither an evo run folder (no run.json) nor a saved model folder (no graph.json)")
    target = Path(run_dir) if run_dir else Path("runs") / f"learn-{path.name}"
    check_new_run_dir(target)
    from evo.zoo import resolve

    graph0 = resolve(model, input_size)
    opts = _options(strategy, memory, head, DEFAULTS)
    learned = _learn(graph0, {}, {"increment": None}, data, opts, allow_duplicates, progress, say, options)
    run = Run.create(target, {"learn": {"model": model, **vars(opts)}}, kind="learn")
    with run.lock("learn"):
        run.commit_version(graph0, {"increment": None, "ops": [], "chosen": "initial model",
                                    "classes": graph0.classes, "params": graph0.num_params()})
        return _commit(run, learned, opts, data, say)


def _check_input(data: str | os.PathLike, strategy: str | None, memory: int | None) -> None:
    """Refuse a missing data path, an unknown strategy or a bad memory before torch is imported, in the
    words the data source and the Learner use. A strategy registered in this process
    (`evo.learn.register_strategy`) is left to the Learner."""
    check_source(data, names=False)
    if strategy is not None and strategy not in BUILTIN_STRATEGIES and "evo.learn.strategies" not in sys.modules:
        raise unknown_name("learning strategy", strategy, BUILTIN_STRATEGIES)
    if memory is not None:
        check_memory(memory)


def _options(strategy: str | None, memory: int | None, head: str | None, saved: dict[str, Any]) -> LearnOptions:
    return LearnOptions(strategy if strategy is not None else saved["strategy"],
                        memory if memory is not None else int(saved["memory"]),
                        head if head is not None else saved.get("head", "auto"))


@dataclass
class _Learned:
    learner: Any
    report: Any
    accuracy: float | None
    n_test: int
    skipped: list[str]
    seen: torch.Tensor
    parent_increment: int | None
    corrections: dict[str, Any]  # the version meta's `corrections`/`corrections_size` (evo.active.rounds)


def _learn(graph, state, meta, data, opts: LearnOptions, allow_duplicates: bool, progress: bool,
           say: Callable[[str], None], options: dict[str, Any], run: Run | None = None,
           parent: int | None = None) -> _Learned:
    """Validate and learn in memory; raises before anything is written. Continuing `run` from
    `parent`, the live corrections it has not learned join the data (`evo.active.rounds`)."""
    import torch

    from evo.data import load_source
    from evo.learn import Learner

    fresh = meta.get("increment") is None
    learner = Learner(graph, memory=opts.memory, strategy=opts.strategy, head=opts.head, progress=progress,
                      **options)  # an unknown strategy, a bad memory or head is refused here
    if learner.strategy.needs_latents:
        raise ConfigError(f"strategy {opts.strategy!r} trains on a latent store, which `evo learn` does not keep; "
                          "use it in a growth search (`latents:` in the space, as in search_spaces/fashion_latent.yaml) "
                          "or from Python (evo.learn.Learner(..., latents=StoreConfig(...)))")
    side = int(graph.input_shape[1])
    train, test = load_source(data, names=False, size=(side, side))  # resized to the model as read
    if train.skipped:
        big = [s for s in train.skipped if s.endswith(f"({TOO_LARGE})")]
        say(f"skipped {len(train.skipped)} file(s), e.g. {train.skipped[0]}"
            + (f"; {len(big)} of them {TOO_LARGE} (downscale them to learn them), e.g. {big[0]}" if big else ""))
    seen = state.get(SEEN_KEY, torch.zeros((0, 16), dtype=torch.uint8))
    hashes = image_hashes(train.images)
    repeat = np.isin(_keys(hashes), _keys(seen.numpy())) if len(seen) else np.zeros(len(hashes), bool)
    if repeat.any() and not allow_duplicates:
        if repeat.all():
            raise DataError(f"all {len(train)} training images of {data} were learned into this run before; nothing "
                            "new to learn (pass --allow-duplicates to learn them again)")
        say(f"skipped {int(repeat.sum())} image(s) already learned in this run (--allow-duplicates learns them again)")
        train = train.subset(np.flatnonzero(~repeat))
        hashes = hashes[~repeat]
    if fresh:
        _check_first_classes(graph, learner, train, opts, data)
        own = set(graph.classes or [])
        if len(train.present_classes()) < 2 and (opts.head == "reset" or not own & set(train.present_classes())):
            raise DataError(f"{data} holds one class ({train.present_classes()[0]!r}) and the model keeps no other: "
                            "a classifier needs two or more classes; add another class folder")
    else:
        learner.load_state_dict(state, graph)
    from evo.active.rounds import RoundCorrections, for_round

    rc = for_round(run, parent, train.image_size) if run is not None and not fresh else RoundCorrections()
    if str(rc):
        say(f"corrections: {rc}")
    report = learner.learn(train, corrections=rc.learn, forget=rc.forget)
    if len(learner.classes_) < 2:
        raise DataError(f"{data} holds one class ({learner.classes_[0]!r}) and the model keeps no other: a "
                        "classifier needs two or more classes; add another class folder")
    if fresh:
        dropped = [c for c in (graph.classes or []) if c not in learner.classes_]
        if dropped:
            say(f"the model's {len(dropped)} classes ({', '.join(dropped[:3])}, ...) are replaced by the "
                f"{len(learner.classes_)} classes of {data} (head {opts.head}; --head keep keeps them)")
    accuracy = learner.score(test) if len(test) else None
    return _Learned(learner, report, accuracy, len(test), list(train.skipped),
                    torch.cat([seen, torch.from_numpy(hashes)]), meta.get("increment"), rc.meta(train.image_size))


def _check_first_classes(graph, learner, train, opts: LearnOptions, data) -> None:
    """The closed-form strategies cannot keep model classes they have no statistics for: say so, with
    the CLI's option, before any work."""
    from evo.learn.strategies.evo import Evo

    if opts.head == "reset" or not isinstance(learner.strategy, Evo):
        return
    own = graph.classes or [f"class_{i}" for i in range(graph.attrs(graph.head)["out_features"])]
    both = [c for c in train.present_classes() if c in set(own)]
    if both or opts.head == "keep":
        named = f"class(es) {both[:3]} of {data} are also" if both else "--head keep keeps"
        raise ConfigError(f"{named} classes of the model ({len(own)} classes), and the `{opts.strategy}` "
                          "strategy cannot keep the model's classes without their statistics; pass --head reset to "
                          "replace the model's classes by those of the data, or rename the class folders")


def _commit(run: Run, learned: _Learned, opts: LearnOptions, data, say: Callable[[str], None]) -> int:
    learner, report = learned.learner, learned.report
    increment = 0 if learned.parent_increment is None else learned.parent_increment + 1
    state = {**learner.state_dict(), SEEN_KEY: learned.seen}
    version = run.commit_version(learner.graph_, {
        "increment": increment, "parent": run.latest(), "command": "learn",
        "ops": [{"op": "add_classes", "params": {"names": report.new_classes}}] if report.new_classes else [],
        "chosen": f"learn {Path(str(data)).name} [{opts.strategy}]", "learn": vars(opts),
        "classes": learner.classes_, "params": learner.graph_.num_params(),
        "metrics": {"accuracy": learned.accuracy, "heldout_images": learned.n_test},
        "cost": report.cost.to_dict(), "data": str(data), "skipped": learned.skipped, **learned.corrections,
    }, state=state)
    acc = "-" if learned.accuracy is None else f"{learned.accuracy:.4f}"
    say(f"{report}\ncommitted {run.version_dir(version)}: {len(learner.classes_)} classes, held-out accuracy {acc}")
    return version


def image_hashes(images: np.ndarray) -> np.ndarray:
    """A 16-byte content hash per image (uint8 (N, 16)): what the run remembers of what it learned."""
    out = np.empty((len(images), 16), dtype=np.uint8)
    for i, img in enumerate(images):
        out[i] = np.frombuffer(hashlib.blake2b(np.ascontiguousarray(img).tobytes(), digest_size=16).digest(),
                               dtype=np.uint8)
    return out


def _keys(h: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(h).view("V16").ravel()
