"""`evo learn`: apply one increment from a user's labelled folder or CSV to a model, committing a new version."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evo.runs import Run


def learn_from_data(model: str, data: str | os.PathLike, run_dir: str | os.PathLike | None = None,
                    strategy: str = "evo", memory: int = 500, input_size: int | None = None,
                    progress: bool = True, say: Callable[[str], None] = print,
                    **options: Any) -> int:
    """Learn `data` (an image folder or CSV manifest) into `model` and commit the next version.

    `model` is a run folder (continues from its latest version), a saved model folder or a zoo name
    (a new run folder is created, default runs/learn-<name>, holding it as version 0).
    """
    from evo.data import load_source
    from evo.learn import Learner
    from evo.zoo import resolve as load_model

    train, test = load_source(data)  # errors name the bad file or label before anything is written
    if train.skipped:
        say(f"skipped {len(train.skipped)} unreadable file(s), e.g. {train.skipped[0]}")
    path = Path(model)
    if (path / "config.json").is_file():
        run = Run.open(path)
    else:
        graph0 = load_model(model, input_size)
        target = Path(run_dir) if run_dir else Path("runs") / f"learn-{path.name}"
        run = Run.create(target, {"learn": {"model": model, "strategy": strategy, "memory": memory}})
        run.commit_version(graph0, {"increment": None, "ops": [], "chosen": "initial model",
                                    "classes": graph0.classes, "params": graph0.num_params()})
    graph, meta, state = run.load_version()
    strategy = run.config.get("learn", {}).get("strategy", strategy)
    learner = Learner(graph, memory=memory, strategy=strategy, progress=progress, **options)
    if meta.get("increment") is not None:
        learner.load_state_dict(state, graph)
    report = learner.learn(train)
    accuracy = learner.score(test) if len(test) else None
    increment = 0 if meta.get("increment") is None else meta["increment"] + 1
    version = run.commit_version(learner.graph_, {
        "increment": increment, "ops": [{"op": "add_classes", "params": {"names": report.new_classes}}]
        if report.new_classes else [], "chosen": f"learn {Path(data).name} [{strategy}]",
        "classes": learner.classes_, "params": learner.graph_.num_params(),
        "metrics": {"accuracy": accuracy, "heldout_images": len(test)},
        "cost": report.cost.to_dict(), "data": str(data), "skipped": list(train.skipped),
    }, state=learner.state_dict())
    acc = "-" if accuracy is None else f"{accuracy:.4f}"
    say(f"{report}\ncommitted {run.version_dir(version)}: {len(learner.classes_)} classes, held-out accuracy {acc}")
    return version
