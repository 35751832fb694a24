"""The driver's core without Ray: the round's budget, duplicate and recovery rules, and a whole round
run by the in-process executor on a real journal and real data."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from evo.search.round_state import InFlight, RoundState


def _state(**kw) -> RoundState:
    return RoundState(**{"budget": 100.0, "slots": 3, "concurrency": 2, "max_streak": 4, **kw})


def test_admission_reserves_the_price_of_running_candidates():
    s = _state()
    assert s.admit("a", 60) == "start"
    s.launch("h1", InFlight(None, None, 60, 0.0), "a", 0)
    assert s.room() == 40 and s.admit("b", 50) == "over_budget" and s.started == 1
    assert s.admit("c", 40) == "start"
    s.launch("h2", InFlight(None, None, 40, 0.0), "c", 1)
    assert not s.can_start()  # concurrency 2
    s.finish("h1", 25)  # measured below its price: the difference returns to the room
    assert s.spent == 25 and s.room() == 35 and s.can_start()


def test_duplicates_and_prunes_use_no_slot_and_end_in_a_streak():
    s = _state()
    s.seen["a"] = 0
    assert [s.admit("a", 1), s.admit("b", 500), s.admit("a", 1)] == ["duplicate", "over_budget", "duplicate"]
    assert s.started == 0 and not s.stuck()
    assert s.admit("c", 500) == "over_budget" and s.stuck() and not s.can_start()
    t = _state()
    assert t.admit("x", 500) == "over_budget" and t.admit("y", 10) == "start" and t.streak == 0


def test_a_candidate_back_below_its_price_restarts_the_streak():
    """Proposals priced out beside a running candidate's price may fit once it spent less: the streak
    that would end the round starts again (not when it spent its full price: nothing changed)."""
    s = _state(max_streak=2)
    assert s.admit("a", 60) == "start"
    s.launch("h1", InFlight(None, None, 60, 0.0), "a", 0)
    assert [s.admit("b", 50), s.admit("c", 50)] == ["over_budget", "over_budget"] and not s.can_start()
    s.finish("h1", 20)
    assert s.can_start() and s.admit("b", 50) == "start"
    s.launch("h2", InFlight(None, None, 50, 0.0), "b", 1)
    assert [s.admit("d", 90), s.admit("e", 90)] == ["over_budget", "over_budget"]
    s.finish("h2", 50)  # spent its price: the room did not grow
    assert not s.can_start()


def test_candidates_priced_out_by_running_prices_are_proposed_again_when_room_returns():
    """A proposal that fits the budget but not beside the running candidates' prices (upper bounds)
    waits; once one comes back below its price, the waiting ones that now fit are enqueued, cheapest
    first, as long as the room lasts, and Optuna proposes them next with the same parameters."""
    import optuna

    from evo.search.driver import Driver

    s = _state(budget=100.0)
    assert not s.defer(50, 9, {}) and not s.deferred  # nothing runs: a priced-out proposal never fits
    assert s.admit("a", 70) == "start"
    s.launch("h1", InFlight(None, None, 70, 0.0), "a", 0)
    assert s.admit("b", 50) == "over_budget"
    assert s.defer(50, 1, {"n_ops": 1, "site_0": 0.5})  # fits once nothing runs
    assert s.defer(40, 2, {"n_ops": 1, "site_0": 0.25}) and s.defer(90, 3, {"n_ops": 1, "site_0": 0.75})
    assert not s.defer(101, 4, {})  # beyond the budget whatever runs: dropped
    drv = Driver.__new__(Driver)  # only the round's state and study are read
    study = optuna.create_study()
    drv._requeue_deferred(study, s)
    assert not study.trials  # nothing came back yet: no room
    s.finish("h1", 10)  # room 90
    drv._requeue_deferred(study, s)
    waiting = [(t.system_attrs["fixed_params"], t.user_attrs["deferred"]) for t in study.get_trials(states=(optuna.trial.TrialState.WAITING,))]
    assert [p["site_0"] for p, _ in waiting] == [0.25, 0.5]  # cheapest first, 40 + 50 fit in 90; 90 waits on
    assert all("priced out beside running ones" in why for _, why in waiting)
    assert [d[1] for d in s.deferred] == [3]
    full = _state(budget=1000.0, slots=1)
    assert full.admit("z", 600) == "start"  # the round's only slot
    full.launch("h", InFlight(None, None, 600, 0.0), "z", 0)
    assert full.defer(500, 7, {"n_ops": 0})
    full.finish("h", 100)  # room 900, but no slot left: nothing is left waiting in the study
    drv._requeue_deferred(study, full)
    assert [d[1] for d in full.deferred] == [7] and len(study.trials) == 2


def test_a_resumed_round_is_rebuilt_from_its_study(tmp_path):
    """Killed-driver trials: recorded FAIL, their cost apart (not spent), their slot free again."""
    from evo.runs import Run
    from evo.search.driver import DRIVER_STOPPED, Driver
    from evo.search.space import parse_space

    doc = {"name": "t", "scenario": {"source": "digits", "increments": 2, "per_class_train": 10,
                                     "per_class_test": 5},
           "model": {"name": "small_cnn"}, "budget": {"flops": 1e12}, "trials": 3}
    run = Run.create(tmp_path / "run", {"space": doc}, kind="search")
    drv = Driver(run, parse_space(doc), progress=lambda s: None)
    study = drv._study(0, "search")
    done = study.ask()
    done.set_user_attr("flops", 7)
    done.set_user_attr("candidate", {"growth": [], "training": {}})
    study.tell(done, 0.9)
    cut = study.ask()
    cut.set_user_attr("price_flops", 900)
    drv._recover(study)
    state = drv._state(study, 1e12, "search")
    assert state.spent == 7 and state.started == 1 and len(state.seen) == 1
    t = study.trials[1]
    assert t.user_attrs["fail_reason"] == DRIVER_STOPPED and t.user_attrs["lost_flops"] == 900


def _tiny_round(tmp_path, **changes):
    import evo
    from evo.runs import Run
    from evo.search.driver import Driver
    from evo.search.executor import InProcessExecutor
    from evo.search.scenario import stream_for
    from evo.search.space import parse_space

    doc = {"name": "t", "scenario": {"source": "digits", "increments": 2, "per_class_train": 15,
                                     "per_class_test": 5, "seed": 0},
           "model": {"name": "small_cnn", "input_size": 32}, "memory": 50,
           "operators": {"deepen": {"kernel_size": 1}}, "max_ops": 1,
           "training": {"strategy": "evo", "taps": "features"}, "budget": {"fraction_of_joint": 2.0},
           "trials": 2, "concurrency": 1, "validation_per_class": 3, **changes}
    space = parse_space(doc)
    run = Run.create(tmp_path / "run", {"space": doc}, kind="search")
    with run.lock("test"):
        run.commit_version(evo.zoo.load("small_cnn", input_size=32), {"increment": None, "ops": []})
        return Driver(run, space, progress=lambda s: None, executor=InProcessExecutor()).round(0, stream_for(space))


def test_min_ops_spends_every_sampled_trial_on_growth(tmp_path):
    """`min_ops: 1`: the enqueued no-growth candidate still runs; every trial Optuna samples grows.
    (`evo_tune` trains the grown net: under the frozen `evo` a deepening computes the fast path's
    predictions and is not evaluated, `test_search.py::test_growth_a_frozen_head_cannot_see_is_not_evaluated`.)"""
    result = _tiny_round(tmp_path, min_ops=1, trials=3, budget={"fraction_of_joint": 20.0},
                         training={"strategy": "evo_tune", "taps": "features", "epochs": 1})
    ran = [t for t in result.trials if t["state"] == "COMPLETE"]
    assert len(ran) == 3
    assert not ran[0]["candidate"]["growth"]  # the fast path, enqueued first
    assert all(t["candidate"]["growth"] for t in ran[1:])


def test_a_round_runs_in_process_without_ray(tmp_path):
    import ray

    import evo
    from evo.runs import Run
    from evo.search.driver import Driver
    from evo.search.executor import InProcessExecutor
    from evo.search.scenario import stream_for
    from evo.search.space import parse_space

    doc = {"name": "t", "scenario": {"source": "digits", "increments": 2, "per_class_train": 15,
                                     "per_class_test": 5, "seed": 0},
           "model": {"name": "small_cnn", "input_size": 32}, "memory": 50,
           "operators": {"deepen": {"kernel_size": 1}}, "max_ops": 1,
           "training": {"strategy": "evo", "taps": "features"}, "budget": {"fraction_of_joint": 2.0},
           "trials": 2, "concurrency": 1, "validation_per_class": 3}
    space = parse_space(doc)
    run = Run.create(tmp_path / "run", {"space": doc}, kind="search")
    with run.lock("test"):
        run.commit_version(evo.zoo.load("small_cnn", input_size=32), {"increment": None, "ops": []})
        was_up = ray.is_initialized()
        result = Driver(run, space, progress=lambda s: None, executor=InProcessExecutor()).round(0, stream_for(space))
    assert ray.is_initialized() == was_up  # no cluster was started
    assert result.version == 1 and 0 < result.flops_spent <= result.budget_flops
    assert result.timing["trials"] >= 1 and result.timing["seconds"] >= result.timing["driver_seconds"] >= 0
    states = [t["state"] for t in result.trials]
    assert states.count("COMPLETE") >= 1
    assert Run.open(run.path).version_meta(1)["chosen"] == result.chosen


@pytest.mark.parametrize("reason_of", [ValueError("bad lr")])
def test_failures_are_contained_with_their_reason(reason_of):
    from evo.search.driver import _failure_reason

    assert _failure_reason(reason_of) == "ValueError: bad lr"
    assert optuna.__version__  # the driver's storage API is public (no study._storage)


def test_a_search_round_learns_the_live_corrections(tmp_path):
    """Corrections made between rounds join the next round's data (every candidate's) and memory with
    priority; the committed version lists them, and the engine on it finds them holding."""
    import evo
    from evo.active import Corrections
    from evo.runs import Run
    from evo.search.driver import Driver
    from evo.search.executor import InProcessExecutor
    from evo.search.scenario import stream_for
    from evo.search.space import parse_space

    doc = {"name": "t", "scenario": {"source": "digits", "increments": 2, "per_class_train": 15,
                                     "per_class_test": 5, "seed": 0},
           "model": {"name": "small_cnn", "input_size": 32}, "memory": 50, "operators": {"deepen": {"kernel_size": 1}},
           "max_ops": 1, "training": {"strategy": "evo", "taps": "features"}, "budget": {"fraction_of_joint": 2.0},
           "trials": 1, "concurrency": 1, "validation_per_class": 3}
    space = parse_space(doc)
    stream = stream_for(space)
    run = Run.create(tmp_path / "run", {"space": doc}, kind="search")
    with run.lock("test"):
        run.commit_version(evo.zoo.load("small_cnn", input_size=32), {"increment": None, "ops": []})
        Driver(run, space, progress=lambda s: None, executor=InProcessExecutor()).round(0, stream)
    test = stream[0].test
    with Corrections.open(run.path) as eng:  # two images flagged as one other known class (no conflict)
        target = eng.classes[0]
        picks = [i for i in range(len(test)) if test.classes[test.labels[i]] != target][:2]
        ids = [eng.correct(test.images[i], target).id for i in picks]
    with run.lock("test"):
        result = Driver(run, space, progress=lambda s: None, executor=InProcessExecutor()).round(1, stream)
    meta = Run.open(run.path).version_meta(result.version)
    assert meta["corrections"] == ids and meta["corrections_size"] == list(stream[1].train.image_size)
    _, _, state = Run.open(run.path).load_version(result.version)
    assert int((state["memory.keys"] < 0).sum()) == 2
    with Corrections.open(run.path, write=False) as eng:
        live = [c for c in eng.list() if not c.undone]
        assert {c.id for c in live} == set(ids) and all(c.holds for c in live)


def test_a_candidate_that_must_grow_but_finds_no_site_is_invalid_not_a_silent_no_growth():
    import optuna

    import evo
    from evo.errors import InvalidSiteError
    from evo.search.candidate import suggest_candidate
    from evo.search.space import parse_space

    doc = {"name": "t", "scenario": {"source": "digits"}, "model": {"name": "small_cnn", "input_size": 32},
           "operators": {"widen": {"factor": 2.0}}, "max_ops": 1, "min_ops": 1,
           "training": {"strategy": "evo"}, "budget": {"fraction_of_joint": 1.0}}
    space = parse_space(doc)
    graph = evo.zoo.load("small_cnn", input_size=32)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    cand, _ = suggest_candidate(study.ask(), space, graph, min_ops=1)
    assert cand.growth and cand.growth[0]["op"] == "widen"
    # every widen group lies below a cut at the MLP's activation: nothing to widen above it
    with pytest.raises(InvalidSiteError, match=r"widen has no site above the latent cut.*min_ops 1"):
        suggest_candidate(study.ask(), space, graph, min_ops=1, cut="fc_relu")


def test_standard_candidates_train_with_the_strategys_recipe_where_the_range_admits_it():
    """The enqueued candidates a round counts on take their strategy's defaults; a knob whose default is
    outside the space's range stays sampled (Optuna's trials explore the ranges either way)."""
    from evo.learn.strategies import option_defaults
    from evo.search import load_space
    from evo.search.driver import _fast_path_params, _recipe_params
    from evo.search.space import parse_space

    space = load_space(Path(__file__).resolve().parents[1] / "search_spaces" / "capacity_small_cnn.yaml")
    d = option_defaults("evo_latent")
    assert _recipe_params(space, _fast_path_params(space)) == {
        "train_epochs": d["epochs"], "train_lr": d["lr"], "train_replay": d["replay"]}
    doc = {**space.raw, "training": {**space.raw["training"], "lr": {"low": 0.002, "high": 0.01}, "epochs": [3, 4]}}
    assert _recipe_params(parse_space(doc), {}) == {"train_replay": d["replay"]}
