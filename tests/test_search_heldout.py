"""After the choice the committed version learns the round's held-out validation images; the next round's
candidates take them out again before they are scored (real data, real rounds, in process: no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evo.runs import Run
from evo.search import SpaceError, parse_space
from evo.search.round_state import RoundState

SPACE = {
    "name": "heldout",
    "scenario": {"kind": "class_incremental", "source": "digits", "increments": 3, "seed": 0,
                 "per_class_train": 20, "per_class_test": 10},
    "model": {"name": "small_cnn", "input_size": 32},
    "memory": 100, "validation_per_class": 4,
    "operators": {"widen": {"factor": 1.5}},
    "max_ops": 1,
    "training": {"strategy": ["evo", "evo_tune"], "epochs": 1, "taps": "features"},
    "budget": {"fraction_of_joint": 2.0}, "trials": 3, "concurrency": 1,
}


def _drive(tmp_path: Path, **changes) -> tuple[Run, list]:
    from evo.search.driver import Driver
    from evo.search.executor import InProcessExecutor
    from evo.search.launch import check_space

    space = parse_space({**json.loads(json.dumps(SPACE)), **changes})
    graph = check_space(space)
    run = Run.create(tmp_path / "run", {"space": space.to_dict()}, kind="search")
    with run.lock("test"):
        run.commit_version(graph, {"increment": None, "ops": [], "classes": graph.classes})
        return run, Driver(run, space, progress=lambda s: None, executor=InProcessExecutor()).run()


def _n_samples(state) -> int:
    return int(state["strategy.head.n_samples"][0])


@pytest.fixture(scope="module")
def learned(tmp_path_factory) -> tuple[Run, list]:
    return _drive(tmp_path_factory.mktemp("heldout"))


def test_every_version_holds_every_image_and_candidates_are_scored_on_unseen_ones(learned):
    from evo.search.scenario import stream_for, validation_split
    from evo.search.worker import load_candidate

    run, results = learned
    stream = stream_for(SPACE["scenario"])
    fit = [len(validation_split(stream, j, 4)[0].train) for j in range(3)]
    every = [len(stream[j].train) for j in range(3)]
    for r in results:
        meta = run.version_meta(r.version)
        # the committed version's statistics count every training image of the increments so far
        assert _n_samples(run.load_version(r.version)[2]) == sum(every[:r.increment + 1])
        assert meta["validation_learned"] == list(range(r.increment + 1))
        assert meta["heldout"]["images"] == sum(every[:r.increment + 1]) - sum(fit[:r.increment + 1])
        assert meta["metrics"]["accuracy"] == meta["heldout"]["accuracy"] == r.accuracy
        # its cost is the round's, priced before it ran, inside the budget
        assert meta["cost"]["heldout_flops"] == meta["heldout"]["flops"] > 0
        assert meta["heldout"]["flops"] <= meta["heldout"]["price_flops"]
        assert 0 < r.flops_spent <= r.budget_flops
        for t in r.trials:
            if t["state"] != "COMPLETE" or not t["lossless"]:
                continue
            # a candidate that kept its parent's statistics took the parent's held-out images out again:
            # the validation images it is ranked on are ones it never learned
            _, state, _ = load_candidate(Path(t["out_dir"]))
            assert _n_samples(state) == sum(fit[:r.increment + 1]), (r.increment, t["candidate"])


def test_the_committed_head_is_the_exact_solve_over_every_image(learned):
    """The version after learning the held-out images equals one that learned all of them at once."""
    import numpy as np

    from evo.learn import Learner
    from evo.search.scenario import stream_for

    run, results = learned
    first = results[0]
    graph, _, state = run.load_version(first.version)
    assert run.version_meta(first.version)["training"]["strategy"] == "evo"  # the fast path won on round 0 here
    fresh = Learner(run.load_version(0)[0], memory=100, strategy="evo", progress=False, taps="features")
    fresh.learn(stream_for(SPACE["scenario"])[0])
    ref = fresh.state_dict()
    for key in ("strategy.head.gram", "strategy.head.xty"):
        np.testing.assert_allclose(state[key].numpy(), ref[key].numpy(), rtol=1e-9, atol=1e-9)


def test_hold_out_keeps_them_out_for_good(tmp_path):
    from evo.search.scenario import stream_for, validation_split

    scenario = {**SPACE["scenario"], "increments": 2}
    run, results = _drive(tmp_path, validation="hold_out", scenario=scenario)
    stream = stream_for(scenario)
    fit = [len(validation_split(stream, j, 4)[0].train) for j in range(2)]
    for r in results:
        meta = run.version_meta(r.version)
        assert "validation_learned" not in meta and "heldout" not in meta
        assert _n_samples(run.load_version(r.version)[2]) <= sum(fit[:r.increment + 1])  # a refit may hold fewer


def test_a_gradient_winner_is_committed_as_it_is(tmp_path):
    run, results = _drive(tmp_path, training={"strategy": "replay", "epochs": 1}, operators={},
                          scenario={**SPACE["scenario"], "increments": 2})
    assert all("validation_learned" not in run.version_meta(r.version) for r in results)


def test_bad_validation_value_is_named():
    with pytest.raises(SpaceError, match="validation must be one of learn, hold_out; got 'sometimes'"):
        parse_space({**json.loads(json.dumps(SPACE)), "validation": "sometimes"})


def test_closed_form_beside_gradient_strategies_keeps_the_held_out_images_out():
    """A gradient candidate starts from its parent's head and cannot take learned images out again, so where
    both kinds meet the held-out images stay out by default, and asking for `learn` is refused by name."""
    mixed = {**json.loads(json.dumps(SPACE)), "training": {"strategy": ["evo", "replay"]}}
    assert parse_space(mixed).validation == "hold_out"
    with pytest.raises(SpaceError, match="validation: learn with gradient strategies.*drop replay"):
        parse_space({**mixed, "validation": "learn"})
    assert parse_space({**mixed, "training": {"strategy": "replay"}}).validation == "learn"  # nothing learns them
    assert parse_space({**mixed, "training": {"strategy": ["evo", "evo_tune"]}}).validation == "learn"


def test_the_reserve_is_released_when_no_candidate_fits_beside_it():
    state = RoundState(budget=100, slots=3, concurrency=2, max_streak=2, reserved=30)
    assert state.admit("fast", 90, standard=True) == "start"  # a standard candidate may use the reserve
    state = RoundState(budget=100, slots=2, concurrency=1, max_streak=2, reserved=30)
    assert state.room() == 70 and state.admit("a", 80) == "over_budget"
    assert state.release() and state.room() == 100 and state.streak == 0
    assert state.admit("a", 80) == "start" and not state.release()


def test_a_grown_candidate_starts_on_its_own_price_and_its_held_out_step_is_checked_after_the_choice(
        tmp_path, monkeypatch):
    """Learning the held-out images on a grown graph is priced far above any budget here: the grown
    candidates still start (the reserve covers the base graph's step only), and where one wins, its
    step does not fit the room left, so the version says so and is committed as chosen."""
    import evo.search.pricing as pricing

    real = pricing.heldout_flops
    base_params = {}

    def priced(graph, *args, **kwargs):
        flops = real(graph, *args, **kwargs)
        base_params.setdefault("n", graph.num_params())  # the first call prices the round-0 base graph
        return flops * 10**6 if graph.num_params() > base_params["n"] else flops

    monkeypatch.setattr(pricing, "heldout_flops", priced)
    run, results = _drive(tmp_path, training={"strategy": "evo", "taps": "features"},
                          scenario={**SPACE["scenario"], "increments": 2}, trials=4)
    grown = [t for r in results for t in r.trials if t.get("candidate", {}).get("growth") and "val_accuracy" in t]
    assert grown, "no grown candidate ran"
    for r in results:
        meta = run.version_meta(r.version)
        if meta["ops"]:  # a grown winner: its held-out step did not fit
            assert "not learned: needs" in meta["heldout"]["skipped"]


def test_a_winner_whose_held_out_step_does_not_fit_the_room_left_is_committed_as_chosen(learned):
    """Nothing reserves a grown winner's larger held-out step: after the choice its price is checked
    against the room measured then, and where it does not fit the images stay out, and the round says so."""
    import optuna

    from evo.search.candidate import Candidate
    from evo.search.driver import Driver
    from evo.search.executor import InProcessExecutor

    run, results = learned
    said = []
    driver = Driver(run, parse_space(json.loads(json.dumps(SPACE))), progress=said.append,
                    executor=InProcessExecutor())
    driver._n_held = 8
    best = optuna.trial.create_trial(values=[1.0], user_attrs={"out_dir": str(run.path / "versions" / "1")})
    cand = Candidate(growth=[], training={"strategy": "evo", "taps": "features"})
    out = driver._learn_heldout(best, cand, 1, room=1e6)
    assert set(out) == {"skipped"} and "not learned: needs" in out["skipped"] and "1e+06 left" in out["skipped"]
    assert any("were not learned" in s for s in said)
