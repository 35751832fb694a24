"""The growth-round driver: Optuna asks, Ray workers evaluate, the best feasible candidate is committed.

One Optuna study per round (increment), in the run folder's storage. Each candidate is priced on the
meta device before it starts and is never started when it cannot fit the round's remaining budget
(counting candidates in flight at their priced cost). Failures are contained: a candidate that raises,
runs out of memory or loses its worker is told FAIL with its reason and the round goes on. The driver
holds no training code; workers call evo.learn through `evo.search.worker.evaluate`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from evo.errors import EvoError
from evo.runs import Run
from evo.search import pricing
from evo.search.absorb import LEARNED_KEY
from evo.search.candidate import Candidate, candidate_sites, growth_base, suggest_candidate
from evo.search.executor import Executor, RayExecutor
from evo.search.round_state import InFlight, RoundState
from evo.search.space import SearchSpace
from evo.search.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)


DRIVER_STOPPED = "driver stopped while it ran"


class BudgetError(EvoError):
    """No candidate can fit the round's budget."""


@dataclass
class RoundResult:
    increment: int
    version: int
    chosen: str
    accuracy: float
    forgetting: float | None
    flops_spent: int
    budget_flops: float
    seconds: float
    joint_flops: float
    trials: list[dict[str, Any]] = field(default_factory=list)
    timing: dict[str, Any] = field(default_factory=dict)  # seconds, driver_seconds (outside waits), trials

    @property
    def joint_ratio(self) -> float:
        return self.flops_spent / self.joint_flops if self.joint_flops else math.nan


class Driver:
    """Runs growth rounds for every remaining increment of a run; safe to kill and resume."""

    def __init__(self, run: Run, space: SearchSpace, storage_url: str | None = None,
                 progress: Callable[[str], None] = print, cpus_per_candidate: float = 1.0,
                 gpus_per_candidate: float | None = None, executor: Executor | None = None) -> None:
        self.run_dir = run
        self.space = space
        self.storage = open_storage(storage_url, run.path)
        self.executor = executor if executor is not None else RayExecutor()
        self.say = progress
        self.cpus = cpus_per_candidate
        self.gpus = gpus_per_candidate
        self._staged = None  # the round's pending latent part (evo.search.latents.Staged)
        self._n_forget = 0  # held-out images the parent learned, which each candidate takes out again
        self._n_held = 0  # the round's held-out images (every increment's so far), learned after the choice

    @property
    def _cut(self) -> str | None:
        """The latent store's cut node this round (None without a store): no growth is offered below it."""
        return self._staged.cut if self._staged is not None else None

    # ---- the loop ----------------------------------------------------------------------------------
    def run(self) -> list[RoundResult]:
        from evo.search.scenario import stream_for

        stream = stream_for(self.space)
        results = []
        while True:
            latest = self.run_dir.latest()
            if latest is None:
                raise EvoError(f"run {self.run_dir.path} has no version 0; it was not created by `evo launch`")
            done = self.run_dir.version_meta(latest).get("increment")
            nxt = 0 if done is None else done + 1
            if nxt >= len(stream):
                break
            results.append(self.round(nxt, stream))
        return results

    def round(self, index: int, stream) -> RoundResult:
        """One growth round: ask, price, admit (RoundState), dispatch (the executor), tell, commit."""
        from evo.search.absorb import n_forgotten
        from evo.search.scenario import validation_split

        parent_version = self.run_dir.latest()
        parent, parent_meta, _ = self.run_dir.load_version(parent_version)
        inc, held = validation_split(stream, index, self.space.validation_per_class)
        self._n_held = len(held)
        self._n_forget = n_forgotten(stream, parent_meta, self.space.validation_per_class, inc.classes_so_far)
        base = growth_base(parent, parent_meta, self.space)
        self._parent, self._base, self._round_preprocess = parent, base, None  # what a no-growth candidate learns on
        policy = self.space.policy
        study = self._study(index, policy)
        self._recover(study)
        seen_before = sum(len(stream[j].train) for j in range(index))
        joint = pricing.joint_flops(parent, stream, index, self.space)
        budget = pricing.budget_flops(self.space, joint, parent)
        state = self._state(study, budget, policy)
        state.reserved = self._heldout_reserve(base, parent_meta, len(inc.classes_so_far))
        self._staged = self._stage_latents(index, parent_version, base, inc)
        if self._staged is not None:  # the round's shared pass below the cut, charged once
            state.spent += self._staged.flops
        if policy != "random":  # first start, or their run was cut by a killed driver
            done = {t.user_attrs.get("enqueued", "").removesuffix(CHEAPEST) for t in study.trials
                    if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.WAITING)}
            for label, params in self._enqueued(base, policy):
                if label not in done:
                    study.enqueue_trial(params, user_attrs={"enqueued": label})
        self.say(f"round {index}: increment of {len(inc.train)} images, new classes {inc.new_classes}; "
                 f"budget {budget / 1e12:.3f} TFLOPs ({self.space.budget[0]}={self.space.budget[1]:g}; "
                 f"joint retraining {joint / 1e12:.3f} TFLOPs); spent so far {state.spent / 1e12:.3f}"
                 + ("" if policy == "search" else f"; policy {policy}"))
        waited = 0.0
        t0 = time.perf_counter()
        while True:
            if state.can_start():
                self._propose(study, state, base, inc, parent_meta, parent_version, index, seen_before, policy)
                continue
            if not state.in_flight:
                break
            w0 = time.perf_counter()
            handle, outcome = self.executor.wait_one(list(state.in_flight))
            waited += time.perf_counter() - w0
            flight = state.in_flight[handle]
            state.finish(handle, self._finish(study, flight, outcome))
            self._requeue_deferred(study, state)
        elapsed = time.perf_counter() - t0
        timing = {"seconds": elapsed, "driver_seconds": elapsed - waited,
                  "trials": sum(1 for t in study.trials if t.state.is_finished())}
        return self._commit(study, index, parent_version, budget, state.spent, joint, timing)

    def _stage_latents(self, index: int, parent_version: int, base, inc):
        """With a latent store: the increment's pass below the cut, once for every candidate of the round."""
        if self.space.latents is None:
            return None
        from evo.active.rounds import for_round
        from evo.learn.learner import with_corrections
        from evo.search.latents import stage_round

        preprocess = self._preprocess()
        fixes = for_round(self.run_dir, parent_version, inc.train.image_size)  # what every candidate learns
        train, _ = with_corrections(inc.train, fixes.learn)
        staged = stage_round(self.run_dir.path, index, parent_version, base, train, self.space.latents,
                             preprocess)
        ev = (staged.summary.get("eviction") or {}).get("evicted")
        self.say(f"  latents: increment encoded below {staged.cut} once for the round ({staged.bytes / 2**20:.1f} "
                 f"MiB, {staged.flops / 1e9:.1f} GFLOPs); store {staged.summary['live_rows']} rows, "
                 f"{staged.summary['live_bytes'] / 2**20:.1f} MiB" + (f"; evicted {ev}" if ev else ""))
        return staged

    def _study(self, index: int, policy: str) -> optuna.Study:
        seed = index + 1000 * int(self.space.scenario.get("seed", 0))
        sampler = (optuna.samplers.RandomSampler(seed=seed) if policy == "random"
                   else optuna.samplers.TPESampler(seed=seed))
        return optuna.create_study(study_name=f"round-{index}", storage=self.storage, load_if_exists=True,
                                   directions=["maximize"] + (["minimize"] if "params" in self.space.objective else []),
                                   sampler=sampler)

    def _state(self, study: optuna.Study, budget: float, policy: str) -> RoundState:
        """The round's bookkeeping, rebuilt from the study (a resumed round continues where it stopped)."""
        state = RoundState(budget=budget, slots=self.space.trials if policy == "search" else 1,
                           concurrency=self.space.concurrency, max_streak=3 * self.space.trials,
                           spent=spent_flops(study))
        # slots used: finished trials, and failures of the candidate itself (not the driver's kill)
        state.started = sum(1 for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
                            or (t.state == optuna.trial.TrialState.FAIL
                                and t.user_attrs.get("fail_reason") != DRIVER_STOPPED))
        # candidates already evaluated (one cut by a killed driver may run again)
        state.seen = {Candidate(**t.user_attrs["candidate"]).key(): t.number for t in study.trials
                      if t.state == optuna.trial.TrialState.COMPLETE and "candidate" in t.user_attrs}
        return state

    def _propose(self, study: optuna.Study, state: RoundState, base, inc, parent_meta: dict[str, Any],
                 parent_version: int, index: int, seen_before: int, policy: str) -> None:
        """Ask Optuna for one candidate, price it, and start it if the round admits it."""
        trial = study.ask()
        try:
            cand, grown = suggest_candidate(trial, self.space, base, min_ops=self._min_ops(trial, policy), cut=self._cut)
            if self._cut is not None and cand.growth:
                from evo.learn.latent import check_growth

                check_growth(base, grown, self._cut, self.space.scenario.get("source"))
            price = pricing.candidate_flops(grown, inc, parent_meta, cand, self.space, seen_before, cut=self._cut,
                                            n_forget=self._n_forget)
            standard = "enqueued" in trial.user_attrs
        except EvoError as e:
            state.invalid()
            trial.set_user_attr("fail_reason", f"invalid candidate: {e}")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        room = state.room() + (state.reserved if standard else 0)
        plain = None if cand.key() in state.seen or price > room else \
            self._same_as_without_growth(trial, state, cand, grown, inc)
        if plain is not None:  # a larger net computing what a trial of this round computes: not worth a slot
            state.skip(cand.key(), plain)
            trial.set_user_attr("fail_reason", f"computes what trial {plain} does: the growth changes no feature "
                                               f"that {cand.training.get('strategy', 'evo')} reads")
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return
        admission = state.admit(cand.key(), price, standard=standard)
        if admission == "duplicate":  # the same computation again: not worth a trial or any budget
            trial.set_user_attr("fail_reason", f"duplicate of trial {state.seen[cand.key()]}")
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return
        trial.set_user_attr("price_flops", price)
        trial.set_constraint("budget", float(price - room))
        if admission == "over_budget":  # a candidate that never ran does not use up a trial
            trial.set_user_attr("fail_reason", f"over budget: needs {price:.3g} FLOPs, {max(room, 0):.3g} left")
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            retried = self._retry_cheaper(study, trial, cand, grown, inc, parent_meta, seen_before, price)
            if not retried:
                state.defer(price, trial.number, dict(trial.params), standard)
            if state.stuck() and not retried:
                if state.release():
                    self.say("  no candidate fits beside the reserve for learning the held-out images after the "
                             "choice: the reserve goes to the candidates")
                    return
                raise BudgetError(f"no candidate fits the round's budget of {state.budget:.3g} FLOPs (the last one "
                                  f"priced {price:.3g}); raise budget.{self.space.budget[0]} in the space")
            return
        task = {**self._task(parent_version, index, cand, trial.number), "max_flops": int(min(price, room))}
        handle = self.executor.submit(task, f"r{index}-t{trial.number}:{cand.name}", self.cpus, self.gpus)
        state.launch(handle, InFlight(trial, cand, price, time.perf_counter()), cand.key(), trial.number)
        self.say(f"  trial {trial.number:>3} started   {cand.name:<40} priced {price / 1e9:8.1f} GFLOPs")

    def _requeue_deferred(self, study: optuna.Study, state: RoundState) -> None:
        """Proposals priced out only beside running candidates' prices (upper bounds) are enqueued again once
        room returned (`RoundState.take_deferred`): Optuna's sampler would rarely draw the same candidate
        twice. Measured: the main job's last round ran only the fast path, priced at 47 GFLOPs and
        spending 16, while the two `add_tap` candidates that needed 143 and 187 of the 133 left beside
        it were dropped."""
        for number, params in state.take_deferred():
            study.enqueue_trial(params, user_attrs={"deferred": f"trial {number}, priced out beside running ones"})

    def _same_as_without_growth(self, trial: optuna.Trial, state: RoundState, cand: Candidate, grown,
                                inc) -> int | None:
        """The trial evaluating `cand`'s training without its growth, where the growth changes nothing that
        training reads (`Strategy.same_result` against the graph that trial learns on, on PROBE_IMAGES of
        the increment): `cand` would compute that trial's predictions in a larger net, which no tie-break
        commits (the same log-loss: `best_trial` drops the larger under `ties: grow` too). None otherwise.
        The check's forwards are spent, and recorded on the trial (`probe_flops`, which `spent_flops` counts)."""
        if not cand.growth:
            return None
        plain = state.seen.get(Candidate([], cand.training).key())
        if plain is None:
            return None
        from evo.learn.cost import CostMeter
        from evo.learn.strategies import make_strategy, split_settings

        name, options = split_settings(cand.training)
        meter = CostMeter()
        same = make_strategy(name, **options).same_result(self._parent, grown, inc.train.images[:PROBE_IMAGES],
                                                           self._preprocess(), meter)
        trial.set_user_attr("probe_flops", int(meter.flops))
        state.spent += int(meter.flops)
        return plain if same else None

    def _preprocess(self):
        """The round's input preprocessing (the base graph's), built once per round."""
        if self._round_preprocess is None:
            from evo.learn import Learner

            self._round_preprocess = Learner(self._base, progress=False).preprocess
        return self._round_preprocess

    def _retry_cheaper(self, study: optuna.Study, trial: optuna.Trial, cand: Candidate, grown, inc,
                       parent_meta: dict[str, Any], seen_before: int, price: int) -> bool:
        """An enqueued candidate (one every round tries on purpose) priced out of the room left (the budget
        less what was spent and what running candidates reserve) at its sampled training settings is
        enqueued once more at the cheapest ones the space offers, rather than lost. Returns whether it was."""
        label = trial.user_attrs.get("enqueued")
        if not label or label.endswith(CHEAPEST):
            return False
        try:
            cheaper = cheapest_training(grown, inc, parent_meta, cand, self.space, seen_before, self._cut,
                                        self._n_forget)
        except EvoError:  # a knob value this candidate cannot price: no retry, the round goes on
            return False
        if not cheaper or cheaper[1] >= price:
            return False
        params = {**trial.params, **{f"train_{k}": v for k, v in cheaper[0].items()}}
        study.enqueue_trial(params, user_attrs={"enqueued": label + CHEAPEST})
        return True

    # ---- pieces ------------------------------------------------------------------------------------
    def _min_ops(self, trial: optuna.Trial, policy: str) -> int:
        """Ops every candidate of this trial applies: one for random growth; the space's `min_ops` for a
        sampled search trial (an enqueued one, such as the fast path, fixes its own)."""
        if policy == "random":
            return max(1, self.space.min_ops)
        return 0 if "enqueued" in trial.user_attrs else self.space.min_ops

    def _enqueued(self, base, policy: str) -> list[tuple[str, dict[str, Any]]]:
        """Trials every round starts with: the no-growth fast path, then (policy search) every group the
        search may grow made wider at once (where the space offers `scale_width`), training above the
        latent cut on everything stored (where the space keeps latents), and `add_tap` onto each spare tap
        whose statistics the closed-form head keeps, the growths that lose nothing."""
        out = [(FAST_PATH, _fast_path_params(self.space))]
        if policy == "search":
            # where evo_latent is the only strategy, the fast path already is training above the cut
            latent = [(label, p) for label, p in _latent_params(self.space) if p != out[0][1]]
            out += _scale_all_params(self.space, base, self._cut) + latent + _spare_tap_params(self.space, base, self._cut)
        return [(label, {**_recipe_params(self.space, params), **params}) for label, params in out]

    def _task(self, parent_version: int, index: int, cand: Candidate, number: int) -> dict[str, Any]:
        staged = getattr(self, "_staged", None)
        return {"run_dir": str(self.run_dir.path), "parent_version": parent_version, "increment": index,
                "space": self.space.to_dict(), "candidate": cand.to_dict(),
                "latents": str(staged.folder) if staged is not None else None,
                "out_dir": str(self.run_dir.path / "candidates" / f"round-{index}" / f"trial-{number}")}

    def _finish(self, study: optuna.Study, flight: InFlight, outcome: Any) -> int:
        """Tell Optuna how a candidate ended; returns what it spent (a failure: its priced upper bound)."""
        number = flight.trial.number
        if isinstance(outcome, BaseException):  # task error, worker death, OOM: all contained here
            reason = _failure_reason(outcome)
            flight.trial.set_user_attr("fail_reason", reason)
            flight.trial.set_user_attr("flops", flight.price)
            study.tell(flight.trial, state=optuna.trial.TrialState.FAIL)
            self.say(f"  trial {number:>3} FAILED    {flight.candidate.name:<40} {reason}")
            return flight.price
        result = outcome
        values = [result.get("val_accuracy", result["accuracy"])] + ([result["params"]] if "params" in self.space.objective else [])
        for k, v in result.items():
            if k != "report":
                flight.trial.set_user_attr(k, v)
        flight.trial.set_user_attr("report", result.get("report"))
        study.tell(flight.trial, values)
        self.say(f"  trial {number:>3} finished  {flight.candidate.name:<40} val acc {values[0]:.4f}  "
                 f"{result['flops'] / 1e9:8.1f} GFLOPs  {result['seconds']:6.1f}s")
        return int(result["flops"])

    def _heldout_reserve(self, base, parent_meta: dict[str, Any], n_classes: int) -> int:
        """The budget held back for learning the held-out images after the choice: their price on the
        round's base graph (0 where the space never learns them)."""
        from evo.search.absorb import learns_heldout

        strategy = self.space.training.get("strategy")
        names = strategy.values() if strategy is not None else ["evo"]
        if self.space.validation != "learn" or not any(learns_heldout({"strategy": n}) for n in names):
            return 0
        fixed = {k: r.values()[0] for k, r in self.space.training.items() if len(r.values()) == 1}
        return pricing.heldout_flops(base, self._n_held, n_classes, fixed, self.space.memory,
                                     first=parent_meta.get("increment") is None)

    def _learn_heldout(self, best, cand: Candidate, index: int, room: float) -> dict[str, Any]:
        """The chosen candidate learns the round's held-out images (`evo.search.absorb`), run by the executor
        like a candidate, if its price fits the `room` left in the budget; returns what that did ({} where
        the space or the candidate's strategy does not). A failure costs the round nothing: the candidate
        is committed as it was chosen, and the version says why."""
        import evo.graph as eg
        from evo.search.absorb import learns_heldout

        if self.space.validation != "learn" or not self._n_held or not learns_heldout(cand.training):
            return {}
        graph = eg.load(Path(best.user_attrs["out_dir"]))
        price = pricing.heldout_flops(graph, self._n_held, len(graph.classes), cand.training, self.space.memory)
        if price > room:
            why = f"not learned: needs {price:.3g} FLOPs, {max(room, 0):.3g} left in the round's budget"
            self.say(f"  the held-out images were {why}")
            return {"skipped": why}
        task = {"kind": "learn_heldout", "run_dir": str(self.run_dir.path), "space": self.space.to_dict(),
                "increment": index, "training": cand.training, "candidate_dir": best.user_attrs["out_dir"],
                "out_dir": best.user_attrs["out_dir"] + "-heldout"}
        _, outcome = self.executor.wait_one([self.executor.submit(task, f"r{index}-heldout", self.cpus, self.gpus)])
        if isinstance(outcome, BaseException):
            reason = _failure_reason(outcome)
            self.say(f"  the held-out images were not learned ({reason}); the candidate is committed as chosen")
            return {"error": reason, "flops": price}  # charged its price, as a failed candidate is
        self.say(f"  the chosen candidate learned the {outcome['images']} held-out validation images: "
                 f"test accuracy {outcome['accuracy_before']:.4f} → {outcome['accuracy']:.4f} "
                 f"({outcome['flops'] / 1e9:.1f} GFLOPs)")
        return {**outcome, "price_flops": price}

    def _history_metrics(self, row: list[float] | None) -> dict[str, Any]:
        """Forgetting, BWT and average incremental accuracy over the lineage, with this round's row appended."""
        from evo.learn.metrics import AccuracyMatrix

        if not row:
            return {}
        matrix = AccuracyMatrix()
        for r in [*_history_rows(self.run_dir), row]:
            if len(r) != len(matrix) + 1:  # a data-incremental stream, or a gap: no matrix
                return {}
            matrix.append(r)
        d = matrix.to_dict()
        return {k: d.get(k) for k in ("forgetting", "bwt", "average_incremental_accuracy") if k in d}

    def _note(self, study: optuna.Study, number: int, attrs: dict[str, Any]) -> None:
        """Set user attributes on a trial by number (a trial still running, e.g. left by a killed driver)."""
        study_id = self.storage.get_study_id_from_name(study.study_name)
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, number)
        for k, v in attrs.items():
            self.storage.set_trial_user_attr(trial_id, k, v)

    def _recover(self, study: optuna.Study) -> None:
        """Trials left RUNNING by a killed driver are told FAIL. Work lost to the kill is not a marginal
        cost of the model: it is recorded apart (`lost_flops`, at its priced value) and does not use up
        the round's budget, so the round can always run its fast path after a resume."""
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            self._note(study, t.number, {"fail_reason": DRIVER_STOPPED, "flops": 0,
                                         "lost_flops": int(t.user_attrs.get("price_flops", 0))})
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            self.say(f"  trial {t.number} was running when the driver stopped: recorded as FAIL")

    def _commit(self, study: optuna.Study, index: int, parent_version: int, budget: float, spent: int,
                joint: float, timing: dict[str, Any]) -> RoundResult:
        from evo.search.worker import load_candidate

        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not done:
            trials = [{"number": t.number, "state": t.state.name, **t.user_attrs} for t in study.trials]
            self.run_dir.write_round(index, {"increment": index, "version": None, "trials": trials})
            reasons = sorted({t.get("fail_reason", "?") for t in trials})
            raise EvoError(f"round {index}: no candidate finished ({'; '.join(reasons)[:300]}); details in "
                           f"{self.run_dir.path / 'metrics' / f'round_{index}.json'}")
        best = best_trial(done, self.space.ties)
        cand = Candidate(**best.user_attrs["candidate"])
        heldout = self._learn_heldout(best, cand, index, budget - spent)
        out_dir = Path(heldout["out_dir"] if heldout.get("out_dir") else best.user_attrs["out_dir"])
        graph, state, report = load_candidate(out_dir)
        spent += int(heldout.get("flops", 0))
        trials = [{"number": t.number, "state": t.state.name, "values": t.values, **t.user_attrs}
                  for t in study.trials]
        lost = sum(int(t.user_attrs.get("lost_flops", 0)) for t in study.trials)
        metrics = dict(report["metrics"])
        metrics.update(self._history_metrics(metrics.get("row")))
        staged = getattr(self, "_staged", None)
        latent_meta = {} if staged is None else {"latents": {
            "cut": staged.cut, "flops": staged.flops, "seconds": staged.seconds, "bytes_written": staged.bytes,
            **{k: staged.summary.get(k) for k in ("codec", "live_rows", "live_bytes", "budget_bytes", "eviction")}}}
        version = self.run_dir.commit_version(graph, {
            "increment": index, "parent": parent_version, "ops": cand.growth, "training": cand.training,
            "chosen": cand.name, "trial": best.number, "classes": graph.classes, "params": graph.num_params(),
            "metrics": metrics,
            "cost": {"flops": spent, "seconds": timing["seconds"], "budget_flops": budget, "joint_flops": joint,
                     "joint_ratio": spent / joint if joint else None, "chosen_flops": best.user_attrs.get("flops"),
                     "heldout_flops": int(heldout.get("flops", 0)), "lost_flops": lost},
            "preprocess": graph.meta.get("preprocess"), **latent_meta, **(report.get("corrections") or {}),
            **({"heldout": {k: v for k, v in heldout.items() if k != "out_dir"}} if heldout else {}),
            **({LEARNED_KEY: list(range(index + 1))} if heldout.get("out_dir") else {}),
        }, state=state, extra_dirs={"latents": staged.folder} if staged is not None else None,
            round_doc={"increment": index, "budget_flops": budget, "spent_flops": spent, "lost_flops": lost,
                       "joint_flops": joint, "timing": timing, "trials": trials})
        if staged is not None:
            from evo.search.latents import drop_pending

            drop_pending(self.run_dir.path, index)
        result = RoundResult(index, version, cand.name, metrics["accuracy"], metrics.get("forgetting"), spent,
                             budget, timing["seconds"], joint, trials, timing)
        self.say(f"round {index}: committed version {version} ← {cand.name} (trial {best.number}); "
                 f"accuracy {result.accuracy:.4f}; spent {spent / 1e12:.3f} of {budget / 1e12:.3f} TFLOPs "
                 f"({result.joint_ratio:.3f} of joint retraining)")
        return result


def spent_flops(study: optuna.Study) -> int:
    """What a round's finished candidates cost: completed and failed ones, but not work lost to a killed
    driver (recorded apart as `lost_flops`); plus the driver's checks of whether a growth changes
    anything (`probe_flops`, on whichever trial asked)."""
    return sum(int(t.user_attrs.get("flops", 0)) for t in study.trials
               if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
               and t.user_attrs.get("fail_reason") != DRIVER_STOPPED) \
        + sum(int(t.user_attrs.get("probe_flops", 0)) for t in study.trials)


CHEAPEST = " (cheapest training)"


def cheapest_training(grown, inc, parent_meta: dict[str, Any], cand: Candidate, space: SearchSpace,
                      seen_before: int, cut: str | None, n_forget: int = 0) -> tuple[dict[str, Any], int] | None:
    """The training knobs that make `cand` cheapest (each knob at the end of its range that prices lowest,
    one knob at a time; knobs that do not change the price, such as lr, keep their value), and that price.
    A value that would make it another candidate (a fine-tune of the head alone is the fast path) is skipped."""
    from evo.learn.strategies import canonical_training

    def price(training: dict[str, Any]) -> int:
        return pricing.candidate_flops(grown, inc, parent_meta, Candidate(cand.growth, training), space,
                                       seen_before, cut=cut, n_forget=n_forget)

    best = dict(cand.training)
    best_price, changed = price(best), {}
    for key, rng in space.training.items():
        if key == "strategy" or len(rng.values()) < 2:
            continue
        for value in rng.values():
            if canonical_training({**best, key: value}, bool(cand.growth))["strategy"] != best.get("strategy", "evo"):
                continue
            p = price({**best, key: value})
            if p < best_price:
                best, best_price, changed[key] = {**best, key: value}, p, value
    return (changed, best_price) if changed else None


def cheapest_without_growth(base, inc, parent_meta: dict[str, Any], space: SearchSpace, seen_before: int,
                            cut: str | None) -> tuple[str, int] | None:
    """(strategy, price) of the cheapest no-growth candidate the space can draw this round: each strategy
    at its standard recipe (`_recipe_params`, the knobs it leaves sampled at their first value) and with
    each knob at each value the space offers (numeric ranges at their ends, where prices are lowest or
    highest), each then at its cheapest knobs (`cheapest_training`). Growth only adds compute, so a round whose budget is below
    this fails for sure; `evo launch` prices round 0 with it before anything is written. None when no
    strategy can be priced (the space's checks name why)."""
    from evo.learn.strategies import canonical_training

    strategy = space.training.get("strategy")
    priced = []
    for name in (["evo"] if strategy is None else strategy.values()):
        drawn = {k: r.trial_values()[0] for k, r in space.training.items()}
        recipe = {**drawn, **{k.removeprefix("train_"): v for k, v in
                              _recipe_params(space, {"train_strategy": name}).items()}, "strategy": name}
        # the recipe, and each knob at each of its values: one may make it another strategy's (cheaper)
        # work, which `cheapest_training` skips (evo_tune with `trainable: 0` is the fast path)
        trainings = [recipe, *({**recipe, k: v} for k, r in space.training.items() if k != "strategy"
                               for v in r.trial_values())]
        for training in trainings:
            cand = Candidate([], canonical_training(training))
            try:
                price = pricing.candidate_flops(base, inc, parent_meta, cand, space, seen_before, cut=cut)
                cheaper = cheapest_training(base, inc, parent_meta, cand, space, seen_before, cut)
            except EvoError:
                continue
            priced.append((cand.training.get("strategy", "evo"), min(price, cheaper[1]) if cheaper else price))
    return min(priced, key=lambda p: p[1]) if priced else None


PROBE_IMAGES = 8  # increment images on which the driver compares a frozen candidate's features with its
# parent's before admitting it (a changed layer shows on every image; the worker's own check, on 64
# exemplars, `evo.learn.strategies.evo.VERIFY_IMAGES`, decides whether statistics are kept)
FAST_PATH = "no-growth fast path"  # the enqueued candidate that keeps the parent's features and exact head
LOSSLESS_Z = 2.0  # `ties: lossless`: a lossy candidate must beat the lossless ones by this many paired standard errors
NLL_TIE = 1e-4  # validation log-losses this close (relative) come from the same function up to rounding
NLL_FLOOR = 1e-9  # below this a log-loss is 0 up to rounding: every image certain, nothing to compare


def best_trial(done: list, ties: str = "best") -> Any:
    """The candidate to commit: highest validation accuracy; on a tie the lower validation log-loss;
    log-losses within NLL_TIE of the lowest count as equal (growth that changed nothing the head
    reads differs only by float rounding), and among those the smaller model wins.

    `ties="grow"` (a space's `ties: grow`): among the candidates that validation cannot tell from that
    best one (`within_noise`), the largest wins. Function-preserving growth keeps what the parent
    computes, and its worth shows in the increments still to come, which a round's validation cannot
    see: for a net known to be short of capacity, that is the better bet on a tie.

    `ties="lossless"` (`ties: lossless`): a candidate whose head was refit from the exemplar memory (the
    old images' statistics lost: a widened tapped block, fine-tuning without a store) wins only if it
    beats every candidate whose head is still the exact solve over everything seen (the fast path, a
    spare tap, `evo_latent` on a store) by more than LOSSLESS_Z paired standard errors; otherwise the best of
    the lossless ones does (by the default order). Strategies say which heads are exact (`exact_head`);
    gradient strategies that train the head count as lossy. The loss is permanent and shows on old
    classes that a few dozen validation images per class barely sample, and the winner among
    near-equal candidates is partly noise.

    `ties="loss"` (`ties: loss`): among the candidates that validation accuracy cannot tell from the
    best one (`within_noise`), the lowest validation log-loss wins (log-losses within NLL_TIE of it:
    the smaller model). Accuracy on a few hundred images moves by whole images, and a candidate one
    image behind is as likely the better one; the log-loss sees how confidently every image is
    classified, so it has far less variance, and it is a proper score: in expectation the better
    predictor has the lower one. Without a per-image record, or where any of them has a log-loss of 0
    (none recorded, or every image certain: nothing to rank), this is `best`.
    """
    top = max(t.values[0] for t in done)
    best = _least_loss([t for t in done if t.values[0] == top])
    if ties == "lossless" and not _lossless(best):
        exact = [t for t in done if _lossless(t)]
        return best_trial(exact) if any(within_noise(t, best, z=LOSSLESS_Z) for t in exact) else best
    if ties == "loss":
        near = [t for t in done if within_noise(t, best)]
        return best if min(_nll(t) for t in near) <= NLL_FLOOR else _least_loss(near)
    if ties != "grow":
        return best
    near = [t for t in done if within_noise(t, best)]
    # a larger candidate computing what a smaller one does (the same log-loss) adds nothing: drop it; a
    # log-loss of 0 (every validation image certain) cannot tell two functions apart, so it drops nothing
    distinct = [t for t in near if not any(_size(o) < _size(t) and o.values[0] >= t.values[0] and _nll(o) > NLL_FLOOR
                                           and abs(_nll(o) - _nll(t)) <= NLL_TIE * _nll(o) for o in near)]
    return max(distinct, key=lambda t: (_size(t), t.values[0], -_nll(t), -t.number))


def _least_loss(trials: list) -> Any:
    """The lowest validation log-loss; log-losses within NLL_TIE of it are the same function up to
    rounding, and among those the smaller model wins (then the more accurate, the earlier)."""
    low = min(_nll(t) for t in trials)
    same = [t for t in trials if _nll(t) <= low * (1 + NLL_TIE) + 1e-12]
    return min(same, key=lambda t: (_size(t), -t.values[0], _nll(t), t.number))


def _nll(trial) -> float:
    """The validation log-loss (0 where none was recorded; a non-finite one ranks last)."""
    v = float(trial.user_attrs.get("val_nll", 0.0))
    return v if math.isfinite(v) else math.inf


def _lossless(trial) -> bool:
    """Whether the candidate's head still covers everything seen exactly (not refit from exemplars); a
    trial recorded before workers said so counts as lossless."""
    return bool(trial.user_attrs.get("lossless", True))


def _size(trial) -> int:
    return trial.user_attrs.get("params", 0)


def within_noise(trial, best, z: float = 1.0) -> bool:
    """Whether `trial`'s validation accuracy is within `z` standard errors of `best`'s, the error of
    their difference on the same images (from the images exactly one of them gets right); without a
    per-image record, only an equal accuracy is."""
    se = paired_se(trial, best)
    gap = best.values[0] - trial.values[0]
    return gap <= 0 if se is None else gap <= z * se + 1e-12


def paired_se(a, b) -> float | None:
    """The standard error of the difference in validation accuracy of two candidates judged on the same
    images (McNemar's), or None when either lacks the per-image record (`evo.search.worker.pack_correct`)."""
    from evo.search.worker import unpack_correct

    x, y = (unpack_correct(t.user_attrs.get("val_correct", "")) for t in (a, b))
    if x is None or y is None or len(x) != len(y) or not len(x):
        return None
    # McNemar's: the error of the difference were the two equally good, from the images they disagree on
    # (the error about the observed difference collapses when every disagreement goes one way)
    n, only_x, only_y = len(x), int((x & ~y).sum()), int((~x & y).sum())
    return math.sqrt(only_x + only_y) / n


def _strategy_param(space: SearchSpace, name: str) -> dict[str, Any]:
    """The Optuna parameter that fixes a standard candidate's strategy to `name`, where the space offers
    it among others (a single strategy is not sampled, so it needs none)."""
    strategy = space.training.get("strategy")
    if strategy is not None and strategy.choices and len(strategy.choices) > 1 and name in strategy.choices:
        return {"train_strategy": name}
    return {}


def _recipe_params(space: SearchSpace, params: dict[str, Any]) -> dict[str, Any]:
    """The training knobs of a standard (enqueued) candidate: its strategy's own defaults wherever the space's
    range admits them; a knob whose default lies outside its range stays sampled. A round's standard
    candidates are the ones it counts on (after growth the no-growth one is often the only one the
    budget admits), so they train with the library's recipe rather than a random draw (measured: the
    last round's sole candidate drawn at lr 0.0094 of [0.001, 0.01] cost 4 points of final accuracy);
    Optuna's sampled trials explore the ranges."""
    from evo.learn.strategies import option_defaults

    strategy = space.training.get("strategy")
    name = params.get("train_strategy") or ("evo" if strategy is None else
                                            strategy.values()[0] if len(strategy.values()) == 1 else None)
    if name is None:  # the strategy is sampled: its knobs are too
        return {}
    defaults = option_defaults(name)
    return {f"train_{k}": defaults[k] for k, r in space.training.items()
            if k != "strategy" and len(r.values()) > 1 and k in defaults and r.admits(defaults[k])}


def _fast_path_params(space: SearchSpace) -> dict[str, Any]:
    """Optuna parameters of the no-growth fast path: no ops, and the `evo` strategy where it is a choice."""
    return {"n_ops": 0, **_strategy_param(space, "evo")}


def _latent_params(space: SearchSpace) -> list[tuple[str, dict[str, Any]]]:
    """Optuna parameters of `evo_latent` without growth, where the space offers it (its knobs are sampled)."""
    strategy = space.training.get("strategy")
    if space.latents is None or strategy is None or "evo_latent" not in strategy.values():
        return []
    return [("train above the latent cut", {"n_ops": 0, **_strategy_param(space, "evo_latent")})]


def _scale_all_params(space: SearchSpace, base, cut: str | None) -> list[tuple[str, dict[str, Any]]]:
    """Optuna parameters of `scale_width` at the lowest site the search may grow, by the space's smallest
    factor: every channel group above the cut that `widen` can widen exactly (groups tied across the site
    stay) wider at once, as EfficientNet's width multiplier scales a net. A net that runs out of capacity
    lacks it everywhere, and among a round's handful of sampled trials this one (op, site) pair among
    dozens would rarely come up, so every round tries it, by the smallest factor (its other parameters and
    training knobs are sampled). Trained by `evo_latent` where the space offers it (the closed-form head
    alone would refit the changed features from exemplars)."""
    if "scale_width" not in space.operators or space.max_ops < 1:
        return []
    sites = candidate_sites(base, "scale_width", cut)
    if not sites:
        return []
    params: dict[str, Any] = {"n_ops": 1, "op_0": "scale_width", "site_0": 0.5 / len(sites)}
    factor = space.operators["scale_width"].get("factor")
    if factor is not None and len(factor.values()) > 1:  # a float, as a sampled factor is (one candidate key)
        params["scale_width_0_factor"] = min(factor.values()) if factor.choices else float(factor.low)
    if space.latents is not None:
        params.update(_strategy_param(space, "evo_latent"))
    return [(f"scale_width after {sites[0]['after']} (every widenable group above it)", params)]


def _spare_tap_params(space: SearchSpace, base, cut: str | None) -> list[tuple[str, dict[str, Any]]]:
    """Optuna parameters of `add_tap` onto each spare tap of `base` (where the space allows it); the site
    is a position in the list `suggest_candidate` samples from (`candidate_sites`, the cut's filter applied)."""
    from evo.learn.strategies import make_strategy

    strategy = space.training.get("strategy")
    if "add_tap" not in space.operators or space.max_ops < 1 or (strategy and "evo" not in strategy.values()):
        return []
    fixed = {k: space.training[k].values()[0] for k in ("taps", "spare") if k in space.training}
    sites = candidate_sites(base, "add_tap", cut)
    out = []
    for tap in make_strategy("evo", **fixed).spare_growths(base):
        site = {"node": tap.node}
        grid = _allowed_grid(space.operators["add_tap"].get("grid"), tap.grid)
        if site not in sites or grid is None:
            continue
        params = {**_fast_path_params(space), "n_ops": 1, "op_0": "add_tap",
                  "site_0": (sites.index(site) + 0.5) / len(sites)}
        if "grid" in space.operators["add_tap"] and len(space.operators["add_tap"]["grid"].values()) > 1:
            params["add_tap_0_grid"] = grid
        out.append((f"spare tap {tap.node} (exact statistics)", params))
    return out


def _allowed_grid(grid, spare: int) -> int | None:
    """The largest grid the space allows that the spare tap's grid is a multiple of (exact pooling)."""
    if grid is None:
        return 2 if spare % 2 == 0 else None  # add_tap's default grid
    if grid.choices is not None:
        ok = [g for g in grid.choices if isinstance(g, int) and spare % g == 0]
        return max(ok) if ok else None
    ok = [g for g in range(int(grid.low), int(grid.high) + 1) if spare % g == 0]
    return max(ok) if ok else None


def _history_rows(run: Run) -> list[list[float]]:
    """Accuracy-matrix rows of the committed versions, oldest first (version 0 has none)."""
    rows = []
    for n in run.versions():
        row = (run.version_meta(n).get("metrics") or {}).get("row")
        if row:
            rows.append(row)
    return rows


def _failure_reason(e: BaseException) -> str:
    try:
        import ray.exceptions as rex
    except ImportError:  # the in-process executor needs no Ray
        return f"{type(e).__name__}: {e}"[:500]
    if isinstance(e, rex.OutOfMemoryError):
        return "out of memory (Ray's memory monitor killed the worker)"
    if isinstance(e, (rex.WorkerCrashedError, rex.NodeDiedError, rex.ActorDiedError)):
        return f"worker died: {type(e).__name__}"
    if isinstance(e, rex.RayTaskError):
        cause = e.cause if getattr(e, "cause", None) is not None else e
        return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"[:500]
    return f"{type(e).__name__}: {e}"[:500]

