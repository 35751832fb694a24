"""`evo launch` / `evo resume` / `evo status` as library calls: the CLI only parses and prints."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evo.errors import EvoError
from evo.runs import Run, RunError
from evo.search.space import SearchSpace, load_space, parse_space


def _initial_model(space: SearchSpace):
    from evo.zoo import resolve as load_model

    m = space.model
    return load_model(m["name"], m.get("input_size"), pretrained=m.get("pretrained", True))


def launch(space_path: str | os.PathLike, run_dir: str | os.PathLike | None = None, ray_address: str | None = None,
           storage: str | None = None, dashboard: bool = False, num_cpus: int | None = None,
           say: Callable[[str], None] = print) -> list:
    """Start a new run of the space in `run_dir` (default runs/<space name>); refuses an existing folder."""
    space = load_space(space_path)
    path = Path(run_dir) if run_dir else Path("runs") / space.name
    if path.exists() and any(path.iterdir()):
        raise RunError(f"run folder {path} already exists; continue it with `evo resume {path}` or pass another "
                       "--run-dir")
    from evo.search.cluster import connect
    from evo.search.storage import open_storage

    storage_ok = open_storage(storage, path.parent) if storage else None  # a bad URL fails before any write
    del storage_ok
    info = connect(ray_address, num_cpus=num_cpus, dashboard=dashboard)
    _say_cluster(info, say)
    graph = _initial_model(space)
    run = Run.create(path, {"space": space.to_dict(), "space_file": str(space_path), "ray_address": ray_address,
                            "storage": storage})
    run.commit_version(graph, {"increment": None, "ops": [], "chosen": "initial model", "classes": graph.classes,
                               "params": graph.num_params(), "preprocess": graph.meta.get("preprocess")})
    say(f"run folder {run.path} (resume with `evo resume {run.path}`)")
    return _drive(run, space, storage, say)


def resume(run_dir: str | os.PathLike, ray_address: str | None = None, storage: str | None = None,
           dashboard: bool = False, num_cpus: int | None = None, say: Callable[[str], None] = print) -> list:
    """Continue a run after a crash or kill: committed versions are kept, the current round is finished."""
    run = Run.open(run_dir)
    cfg = run.config
    space = parse_space(cfg["space"], source=str(run.path / "config.json"))
    from evo.search.cluster import connect

    info = connect(ray_address or cfg.get("ray_address"), num_cpus=num_cpus, dashboard=dashboard)
    _say_cluster(info, say)
    if run.latest() is None:
        graph = _initial_model(space)
        run.commit_version(graph, {"increment": None, "ops": [], "chosen": "initial model", "classes": graph.classes,
                                   "params": graph.num_params(), "preprocess": graph.meta.get("preprocess")})
    say(f"resuming {run.path} after version {run.latest()}")
    return _drive(run, space, storage or cfg.get("storage"), say)


def _drive(run: Run, space: SearchSpace, storage: str | None, say: Callable[[str], None]) -> list:
    from evo.search.driver import Driver

    results = Driver(run, space, storage_url=storage, progress=say).run()
    say(summary_table(run))
    return results


def _say_cluster(info, say: Callable[[str], None]) -> None:
    say(f"Ray: {info.nodes} node(s), {info.cpus:g} CPUs, {info.gpus:g} GPUs"
        + (f"; dashboard {info.dashboard_url} (token auth on: see ~/.ray/auth_token)" if info.dashboard_url else ""))


def summary_table(run: Run) -> str:
    rows = [("version", "increment", "accuracy", "forgetting", "chosen growth", "TFLOPs", "seconds", "vs joint")]
    for n in run.versions():
        meta = run.version_meta(n)
        m, c = meta.get("metrics") or {}, meta.get("cost") or {}
        rows.append((str(n), _fmt(meta.get("increment")), _fmt(m.get("accuracy"), "{:.4f}"),
                     _fmt(m.get("forgetting"), "{:.4f}"), str(meta.get("chosen", "")),
                     _fmt(c.get("flops") and c["flops"] / 1e12, "{:.3f}"), _fmt(c.get("seconds"), "{:.1f}"),
                     _fmt(c.get("joint_ratio"), "{:.3f}")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows)


def _fmt(v: Any, spec: str = "{}") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return spec.format(v)


def status(run_dir: str | os.PathLike) -> str:
    run = Run.open(run_dir)
    latest = run.latest()
    if latest is None:
        raise EvoError(f"run {run.path} has no committed version yet")
    lines = [f"run {run.path}: {len(run.versions())} version(s), latest {latest}", "lineage:"]
    lin = run.lineage()
    for n in run.versions():
        meta = run.version_meta(n)
        parent = meta.get("parent")
        lines.append(f"  v{n} ← {'v' + str(parent) if parent is not None else 'start'}: {meta.get('chosen', '')}"
                     f" ({len(lin.nodes[n].get('classes') or [])} classes)")
    meta = run.version_meta(latest)
    lines.append(f"latest metrics: {meta.get('metrics') or {}}")
    lines.append(summary_table(run))
    return "\n".join(lines)
