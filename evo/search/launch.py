"""`evo launch` / `evo resume` / `evo status` as library calls: the CLI only parses and prints."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evo.errors import EvoError
from evo.runs import Run, RunError, check_new_run_dir, check_run_name
from evo.search.space import SearchSpace, SpaceError, check_training, load_space, parse_space


def _initial_model(space: SearchSpace):
    from evo.zoo import resolve as load_model

    m = space.model
    return load_model(m["name"], m.get("input_size"), pretrained=m.get("pretrained", True), options=m.get("options"))


def launch(space_path: str | os.PathLike, run_dir: str | os.PathLike | None = None, ray_address: str | None = None,
           storage: str | None = None, dashboard: bool = False, num_cpus: int | None = None,
           say: Callable[[str], None] = print) -> list:
    """Start a new run of the space in `run_dir` (default runs/<space name>); refuses an existing folder.

    Everything is validated (the space, its data sources, model and training options, the storage
    URL) before the run folder is created or Ray is started, so bad input leaves nothing behind."""
    space = load_space(space_path)
    if not run_dir:
        check_run_name(space.name, str(space_path), SpaceError)
    path = Path(run_dir) if run_dir else Path("runs") / space.name
    check_new_run_dir(path)
    graph = check_space(space)
    from evo.search.storage import open_storage

    if storage:
        open_storage(storage, path.parent)  # a bad URL fails before any write
    info = _connect(ray_address, num_cpus, dashboard, say)
    run = Run.create(path, {"space": space.to_dict(), "space_file": str(space_path), "ray_address": ray_address,
                            "storage": storage}, kind="search")
    with run.lock("launch"):
        run.commit_version(graph, {"increment": None, "ops": [], "chosen": "initial model", "classes": graph.classes,
                                   "params": graph.num_params(), "preprocess": graph.meta.get("preprocess")})
        say(f"run folder {run.path} (resume with `evo resume {run.path}`)")
        del info
        return _drive(run, space, storage, say)


def resume(run_dir: str | os.PathLike, ray_address: str | None = None, storage: str | None = None,
           dashboard: bool = False, num_cpus: int | None = None, say: Callable[[str], None] = print) -> list:
    """Continue a run after a crash or kill: committed versions are kept, the current round is finished."""
    run = Run.open(run_dir)
    cfg = run.config
    if run.kind != "search" or "space" not in cfg:
        raise RunError(f"{run.path} was made by `evo learn`, not a growth search; continue it with "
                       f"`evo learn {run.path} --data FOLDER`")
    space = parse_space(cfg["space"], source=str(run.path / "config.json"))
    with run.lock("resume"):
        if run.took_over:
            say(f"took over the run from pid {run.took_over.get('pid')} (`evo {run.took_over.get('command')}`), "
                "which stopped without releasing it")
        graph = check_space(space) if run.latest() is None else None
        _connect(ray_address or cfg.get("ray_address"), num_cpus, dashboard, say)
        if graph is not None:
            run.commit_version(graph, {"increment": None, "ops": [], "chosen": "initial model",
                                       "classes": graph.classes, "params": graph.num_params(),
                                       "preprocess": graph.meta.get("preprocess")})
        say(f"resuming {run.path} after version {run.latest()}")
        return _drive(run, space, storage or cfg.get("storage"), say)


def check_space(space: SearchSpace):
    """Validate what a space names before anything is written or started: the model (returned, loaded),
    the data stream, the memory, every training option against the strategies that read it (taps
    resolved in the model), the latent store's cut, found where the driver finds it, and that each
    round's budget fits its cheapest candidate."""
    from evo.learn.strategies import STRATEGIES, option_defaults
    from evo.search.scenario import stream_for

    graph = _initial_model(space)
    stream = stream_for(space)
    if len(stream) == 0:
        raise SpaceError("scenario: the stream has no increment; check increments and the source's classes")
    choices = space.training.get("strategy")
    strategies = list(choices.values()) if choices is not None else ["evo"]
    ranges, cut = {}, None
    for name in strategies:
        accepted = option_defaults(name)  # an unknown strategy name lists the valid ones
        ranges[name] = {k: r for k, r in space.training.items() if k != "strategy" and k in accepted}
        check_training(name, ranges[name], functools.partial(_on_the_model, graph, space.memory, name, None))
    if space.latents is not None:  # a cut the model lacks would otherwise fail once round 0 has begun
        from evo.learn.latent import cut_node, split
        from evo.search.candidate import growth_base

        base = growth_base(graph, {"increment": None}, space)  # what the driver resolves the cut on
        try:
            cut = cut_node(base, space.latents.cut)
        except EvoError:
            cut_node(graph, space.latents.cut)  # not in the model at all: that error says so
            raise SpaceError(f"latents.cut {space.latents.cut!r}: the head's taps read only layers below it (the "
                             "network past the deepest tap is dropped); move the cut down or tap above it") from None
        split(base, cut)
        _check_store_budget(space, base, cut, stream)
        for name in strategies:  # again with the cut: the first pass named bad values before growth_base met them
            if STRATEGIES.get(name).needs_latents:
                check_training(name, ranges[name], functools.partial(_on_the_model, graph, space.memory, name, cut))
    _check_round_budgets(space, graph, stream, cut)
    return graph


def _check_round_budgets(space: SearchSpace, graph, stream, cut: str | None) -> None:
    """A budget that a round's cheapest candidate does not fit fails that round once the run folder
    exists, and a run cannot be resumed with another budget: refused here instead (`round_floor`).
    A fixed budget (`flops`, `seconds`) is checked in every round, where memory and classes make the
    fast path dearer each round; `fraction_of_joint` in round 0 only, since later its yardstick is the
    grown parent, unknown until then."""
    kind, amount = space.budget
    for index in range(len(stream) if kind != "fraction_of_joint" else 1):
        floor = round_floor(space, graph, stream, cut, index)
        if floor is None:
            return
        name, need, budget = floor
        if need > budget:
            raise SpaceError(f"budget.{kind} {amount:g} buys {budget:.3g} FLOPs in round {index}, and its cheapest "
                             f"candidate ({name}, no growth{', with the pass below the cut' if cut else ''}) needs "
                             f"{need:.3g}: no candidate would fit; raise budget.{kind} to at least "
                             f"{_round_up(amount * need / budget)}")


def _round_up(x: float, digits: int = 3) -> str:
    """`x` rounded up to `digits` significant digits: advice that a reader can copy and that suffices."""
    step = 10 ** (math.floor(math.log10(x)) - digits + 1)
    return f"{math.ceil(x / step) * step:.{digits}g}"


def round_floor(space: SearchSpace, graph, stream, cut: str | None, index: int = 0) -> tuple[str, int, float] | None:
    """(strategy, FLOPs, budget): what round `index`'s cheapest candidate costs at least, the shared pass
    below the cut included, priced as the driver prices it (the same held-out split, prices and budget),
    and the round's budget in FLOPs. Round 0 is priced on the driver's own base graph; a later round on
    what round 0 commits without growth (growth, and the held-out images a version learns, only add to
    a later round's prices), which is known only where every strategy of the space prepares the model
    alike. None where it is not known, or no strategy of the space can be priced."""
    from evo.learn.latent.below import encode_flops
    from evo.search import pricing
    from evo.search.candidate import growth_base
    from evo.search.driver import cheapest_without_growth
    from evo.search.scenario import validation_split

    base = growth_base(graph, {"increment": None}, space)
    if index > 0 and base is graph:  # the strategies prepare the model differently: round 0's winner decides
        return None
    if index > 0:  # the parent's head predicts the classes seen so far (at most: its price is then a floor)
        from evo.learn.learner import reset_head

        base = reset_head(base, stream[index - 1].classes_so_far)
    inc, _ = validation_split(stream, index, space.validation_per_class)
    meta = {"increment": None if index == 0 else index - 1}
    seen_before = sum(len(stream[j].train) for j in range(index))
    cheapest = cheapest_without_growth(base, inc, meta, space, seen_before, cut)
    if cheapest is None:
        return None
    name, price = cheapest
    need = price + (encode_flops(base, cut, len(inc.train)) if cut is not None else 0)
    return name, need, pricing.budget_flops(space, pricing.joint_flops(graph, stream, index, space), graph)


def _check_store_budget(space: SearchSpace, base, cut: str, stream) -> None:
    """A byte budget must hold at least one latent per class of the stream, or eviction empties the
    store and every recompute would rest on the increment alone."""
    from evo.learn.latent import bytes_per_row

    budget = space.latents.budget_bytes
    row = bytes_per_row(tuple(base.shape(cut)), space.latents.codec)
    n_classes = len(stream[len(stream) - 1].classes_so_far)
    if budget is not None and budget < row * n_classes:
        raise SpaceError(f"latents.budget_mb {space.latents.budget_mb:g} holds fewer than one latent per class "
                         f"({n_classes} classes × {row:,} bytes at cut {cut!r}, {space.latents.codec}); raise it to at "
                         f"least {row * n_classes / 2**20:.3g} (many per class: the store then evicts class-balanced)")


def _on_the_model(graph, memory: int, name: str, cut: str | None, **options):
    """A Learner of `name` with `options` on the model, its taps resolved in it (a tap node the model
    lacks fails here, not in round 0), and, given the latent `cut`, every tap its statistics cover
    checked to lie at or above it (unless these options amount to another strategy's work, which
    then runs instead: `Strategy.computes`). A space's `trainable: N` is priced on the model, which
    counts the blocks it trains: N above that is an error here (elsewhere it means all of them)."""
    from evo.learn import Learner
    from evo.learn.tracked import head_taps

    learner = Learner(graph, memory=memory, strategy=name, progress=False, **options)
    strategy = learner.strategy
    prepared = strategy.prepare(graph)
    if cut is not None and type(strategy).computes(options) == name:
        from evo.learn.latent import check_layout

        head = head_taps(prepared)
        check_layout(prepared, cut, head + strategy.spare(prepared, head))
    if "trainable" in options and (cut is not None or not strategy.needs_latents):  # priced on what it trains
        from evo.learn.strategies import Workload
        from evo.learn.train import STRICT_TRAINABLE

        strict = STRICT_TRAINABLE.set(True)  # the space set N: more than the blocks it trains is an error
        try:
            strategy.price(prepared, Workload(n_train=1, n_classes=max(2, len(graph.classes)), cut=cut))
        finally:
            STRICT_TRAINABLE.reset(strict)
    return learner


def _connect(address: str | None, num_cpus: int | None, dashboard: bool, say: Callable[[str], None]):
    from evo.search.cluster import connect

    info = connect(address, num_cpus=num_cpus, dashboard=dashboard)
    _say_cluster(info, say)
    return info


def _drive(run: Run, space: SearchSpace, storage: str | None, say: Callable[[str], None]) -> list:
    from evo.search.driver import Driver

    results = Driver(run, space, storage_url=storage, progress=say).run()
    say(summary_table(run))
    return results


def _say_cluster(info, say: Callable[[str], None]) -> None:
    auth = "token auth on: see ~/.ray/auth_token" if info.token_auth else "token auth OFF: anyone on this host can use it"
    say(f"Ray: {info.nodes} node(s), {info.cpus:g} CPUs, {info.gpus:g} GPUs"
        + (f"; dashboard {info.dashboard_url} ({auth})" if info.dashboard_url else ""))


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
    """A run's lineage and metrics, derived in memory: status writes nothing and takes no lock."""
    run = Run.open(run_dir)
    latest = run.latest()
    if latest is None:
        raise RunError(f"run {run.path} has no committed version yet")
    lines = [f"run {run.path}: {len(run.versions())} version(s), latest {latest}", "lineage:"]
    for n in run.versions():
        meta = run.version_meta(n)
        parent = meta.get("parent")
        lines.append(f"  v{n} ← {'v' + str(parent) if parent is not None else 'start'}: {meta.get('chosen', '')}"
                     f" ({len(meta.get('classes') or [])} classes)")
    meta = run.version_meta(latest)
    lines.append(f"latest metrics: {meta.get('metrics') or {}}")
    lines.append(summary_table(run))
    return "\n".join(lines)
