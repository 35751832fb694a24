"""The growth search end to end: real Ray cluster, real Optuna journal, real data, real kills."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from evo.errors import ConfigError
from evo.runs import Run, RunError
from evo.search import SpaceError, load_space, parse_space
from evo.search.cluster import ClusterError, connect

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "name": "tiny",
    "scenario": {"kind": "class_incremental", "source": "digits", "increments": 2, "seed": 0,
                 "per_class_train": 20, "per_class_test": 10},
    "model": {"name": "small_cnn", "input_size": 32},
    "memory": 100,
    "operators": {"widen": {"factor": 1.5}, "deepen": {"kernel_size": [1, 3]}},
    "max_ops": 1,
    "training": {"strategy": ["evo", "evo_tune"], "epochs": 1, "taps": "features"},
    "budget": {"fraction_of_joint": 2.0},
    "trials": 3,
    "concurrency": 2,
}


def _write(tmp_path: Path, doc: dict, name: str = "space.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc))
    return p


# ---- spaces ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fashion_quick", "fashion_cil", "digits_domain", "fashion_latent", "fashion_latent_full",
                                  "fashion_permuted_full", "capacity_small_cnn"])
def test_shipped_spaces_parse(name):
    space = load_space(ROOT / "search_spaces" / f"{name}.yaml")
    assert space.name == name and space.trials >= 1 and space.operators


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(colour="blue"), "unknown key.*colour"),
    (lambda d: d["operators"].update(shrink={}), "unknown operator 'shrink'.*widen"),
    (lambda d: d["operators"].update(add_classes={}), "applied automatically"),
    (lambda d: d["operators"]["widen"].update(factor=0.5), "factor"),
    (lambda d: d["operators"]["widen"].update(bogus=1), "unknown parameter.*bogus"),
    (lambda d: d.update(budget={"fraction_of_joint": -1}), "positive"),
    (lambda d: d.update(budget={"flops": 1, "seconds": 2}), "exactly one"),
    (lambda d: d["scenario"].update(kind="sideways"), "scenario.kind.*class_incremental"),
    (lambda d: d.update(trials=0), "trials"),
    (lambda d: d["training"].update(lr={"low": 1, "high": 0}), "low <= high"),
    (lambda d: d.update(objective=["params"]), "objective"),
    (lambda d: d.update(policy="greedy"), "policy must be one of search, random, fast_path"),
    (lambda d: d.update(ties="bigger"), "ties must be one of best, grow, lossless"),
    (lambda d: d.update(ties="grow", objective=["accuracy", "params"]), "ties: grow prefers the larger"),
    (lambda d: d.update(validation_per_class=0), "validation_per_class"),
    (lambda d: d.update(min_ops=2), r"min_ops \(2\) must not exceed max_ops \(1\)"),
    (lambda d: d.update(min_ops=1, operators={}), "min_ops 1 asks every sampled candidate to grow.*no operators"),
    (lambda d: d["model"].update(widht=4), r"model: unknown key.*widht.*model.options"),
    (lambda d: d["model"].update(options=[4]), "model.options must map"),
    # training keys come from the strategies' option schemas: none silently dropped
    (lambda d: d["training"].update(alpha=0.5), r"training.alpha: no strategy of this space \(evo, evo_tune\)"),
    (lambda d: d["training"].update(strategy="sgd_plus"), "unknown strategy 'sgd_plus'.*replay"),
    (lambda d: d["training"].update(epochs=[1, -1]), "training.epochs:.*epochs"),
    (lambda d: d["training"].update(strategy="evo", epochs=1), "training.epochs: no strategy of this space \\(evo\\)"),
    (lambda d: d.update(training={"strategy": "lwf", "temperature": 0}), "training.temperature:.*> 0"),
    (lambda d: d["training"].update(expand=[0, 2000]), "training.expand is fixed when the first increment taps"),
    (lambda d: d["training"].update(expand=-5), "training.expand.*expand"),
    # found by a bad-input sweep: each used to be accepted, or to fail only once the run had begun
    (lambda d: d["budget"].update(joint_epochs="x"), "budget.joint_epochs"),
    (lambda d: d["budget"].update(joint_epochs=-1), "budget.joint_epochs"),
    (lambda d: d["scenario"].update(per_class_test=0), "scenario.per_class_test"),
    (lambda d: d["training"].update(lr={"low": 0.001, "high": 0.01, "log": "false"}), "log must be true or false"),
    (lambda d: d["model"].update(pretrained="no"), "model.pretrained must be true or false"),
    (lambda d: d.update(description=[["a"] * 3] * 3), "description must be text"),
    (lambda d: d["scenario"].update(source=5), "scenario.source is required and is a name or a path"),
])
def test_malformed_space_names_the_key(edit, message):
    doc = json.loads(json.dumps(TINY))
    edit(doc)
    with pytest.raises(SpaceError, match=message):
        parse_space(doc)


def test_model_options_build_the_zoo_model_and_bad_ones_are_named(tmp_path):
    import evo.graph as eg
    import evo.zoo
    from evo.errors import ConfigError
    from evo.search.launch import check_space

    eg.save(evo.zoo.load("small_cnn"), tmp_path / "saved")
    with pytest.raises(ConfigError, match="apply to zoo models only"):
        evo.zoo.resolve(tmp_path / "saved", options={"width": 4})

    doc = json.loads(json.dumps(TINY))
    doc["model"] = {"name": "small_cnn", "input_size": 32, "pretrained": False, "options": {"width": 4}}
    narrow = check_space(parse_space(doc))
    assert narrow.attrs("stem_0")["out_channels"] == 4
    for options, message in [({"width": 0}, "width must be a positive integer"),
                             ({"seed": "a"}, "seed must be an integer >= 0"),
                             ({"pretrained": True}, "set as model.pretrained / model.input_size, not under"),
                             ({"colour": 1}, r"takes no option\(s\) \['colour'\].*width")]:
        doc["model"]["options"] = options
        with pytest.raises(ConfigError, match=message):
            check_space(parse_space(doc))


def test_invalid_yaml_says_where(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nscenario: [unclosed\n")
    with pytest.raises(SpaceError, match="not valid YAML at line"):
        load_space(p)
    p.write_bytes(b"\xff\xfe" + bytes(range(256)))
    with pytest.raises(SpaceError, match="not a UTF-8 text file"):
        load_space(p)
    laughs = ["a: &a [x, x, x, x, x, x, x, x, x, x]"] + [
        f"{k}: &{k} [*{j}, *{j}, *{j}, *{j}, *{j}, *{j}, *{j}, *{j}, *{j}, *{j}]" for j, k in zip("abcde", "bcdef", strict=True)]
    p.write_text("\n".join(laughs) + "\n")  # 700 bytes that expand to a million values
    with pytest.raises(SpaceError, match="expands to more than"):
        load_space(p)


def test_bad_storage_url_and_unreachable_ray():
    from evo.search.storage import open_storage

    with pytest.raises(ConfigError, match="not supported"):
        open_storage("redis://nope", Path("."))
    with pytest.raises(ClusterError, match="unreachable"):
        connect("127.0.0.1:1")


# ---- a real round ------------------------------------------------------------------------------


def test_a_budget_a_round_cannot_afford_is_refused_before_the_run_exists_and_round_0s_line_is_the_drivers(
        ray_cluster, tmp_path, monkeypatch):
    """Round 0's pre-flight floor is the driver's own admission line: one FLOP under it, the driver itself
    (unchecked) cannot run round 0 and stops with only version 0 written; at it, round 0 commits. A fixed
    budget under any round's floor is refused naming that round, with nothing written (it used to fail
    in that round, after the run folder existed)."""
    import evo.search.launch
    from evo.search.driver import BudgetError
    from evo.search.launch import check_space, launch, round_floor
    from evo.search.scenario import stream_for

    space = load_space(_write(tmp_path, TINY))
    graph, stream = check_space(space), stream_for(space)
    floors = [round_floor(space, graph, stream, None, i) for i in range(len(stream))]
    assert [f[0] for f in floors] == ["evo"] * len(stream)  # the closed-form fast path is the cheapest candidate
    first = floors[0][1]
    dearest = max(range(len(floors)), key=lambda i: floors[i][1])
    with pytest.raises(SpaceError, match=rf"budget.flops .* in round {dearest},.*raise budget.flops to at least"):
        launch(_write(tmp_path, {**TINY, "budget": {"flops": floors[dearest][1] - 1}}), run_dir=tmp_path / "short",
               say=lambda s: None)
    assert not (tmp_path / "short").exists()
    with monkeypatch.context() as m:  # without the pre-flight check: round 0 fails in the driver
        m.setattr(evo.search.launch, "_check_round_budgets", lambda *a: None)
        with pytest.raises(BudgetError, match="no candidate fits"):
            launch(_write(tmp_path, {**TINY, "budget": {"flops": first - 1}}), run_dir=tmp_path / "unchecked",
                   say=lambda s: None)
        assert Run.open(tmp_path / "unchecked").versions() == [0]
        # a later round's floor is a lower bound (growth and learned held-out images price higher): it may stop
        with contextlib.suppress(BudgetError):
            launch(_write(tmp_path, {**TINY, "budget": {"flops": first}}), run_dir=tmp_path / "run", say=lambda s: None)
    run = Run.open(tmp_path / "run")
    assert run.versions()[:2] == [0, 1] and run.version_meta(1)["increment"] == 0


def test_launch_commits_versions_within_budget(ray_cluster, tmp_path):
    from evo.search.launch import launch, status

    lines: list[str] = []
    results = launch(_write(tmp_path, TINY), run_dir=tmp_path / "run", say=lines.append)
    assert len(results) == 2
    run = Run.open(tmp_path / "run")
    assert run.versions() == [0, 1, 2]
    for r in results:
        # the budget holds: measured spend never exceeds it (candidates are priced before they start)
        assert 0 < r.flops_spent <= r.budget_flops
        finished = [t for t in r.trials if t["state"] == "COMPLETE"]
        assert finished and all(t["flops"] <= t["price_flops"] for t in finished)
        assert any(t.get("enqueued") for t in r.trials)  # the no-growth fast path is always a candidate
    from evo.search.scenario import stream_for, validation_split
    from evo.search.worker import load_candidate

    seen = sum(len(validation_split(stream_for(TINY["scenario"]), i, 100)[0].train) for i in (0, 1))
    for t in (t for t in results[1].trials if t["state"] == "COMPLETE"):
        # `ties: lossless` reads this: an exact head counts every image seen (a refit from a memory of 100
        # holds round 0's 80 images too, so here only a changed feature width could lose any)
        _, state, _ = load_candidate(Path(t["out_dir"]))
        assert t["lossless"] is (int(state["strategy.head.n_samples"][0]) == seen), t["candidate"]
    meta = run.version_meta(2)
    assert meta["parent"] == 1 and meta["metrics"]["row"] and "forgetting" in meta["metrics"]
    lineage = json.loads((run.path / "lineage.json").read_text())
    assert [(e["source"], e["target"]) for e in lineage["edges"]] == [(0, 1), (1, 2)]
    assert (run.path / "optuna.journal").stat().st_size > 0
    assert len(run.rounds_table()) == 3
    assert "v2 ← v1" in status(run.path)
    assert any("committed version 2" in line for line in lines)
    with pytest.raises(RunError, match="evo resume"):
        launch(_write(tmp_path, TINY), run_dir=tmp_path / "run", say=lines.append)


def test_validation_split_holds_out_every_seen_class_and_never_the_test_split():
    import numpy as np

    from evo.search.scenario import stream_for, validation_split

    stream = stream_for(TINY["scenario"])
    fit, val = validation_split(stream, 1, per_class=3)
    inc = stream[1]
    assert val.classes == inc.classes_so_far and set(val.present_classes()) == set(inc.classes_so_far)
    assert all(n == 3 for n in val.class_counts().values())  # 3 per class for increments 0 and 1
    assert len(fit.train) == len(inc.train) - 3 * len(inc.new_classes)
    assert np.array_equal(fit.test.images, inc.test.images)  # the test split is untouched
    rows = {r.tobytes() for r in fit.train.images}
    assert not any(r.tobytes() in rows for r in val.images)  # nothing trains on what ranks it
    again_fit, again_val = validation_split(stream, 1, per_class=3)
    assert np.array_equal(again_val.images, val.images) and np.array_equal(again_fit.train.images, fit.train.images)
    # increment 0's held-out images are the same ones whichever round asks
    _, val0 = validation_split(stream, 0, per_class=3)
    assert {r.tobytes() for r in val0.images} <= {r.tobytes() for r in val.images}


def test_round_zero_grows_the_graph_the_head_will_read():
    import evo
    from evo.graph.taps import is_tapped
    from evo.search.candidate import growth_base

    g = evo.zoo.load("efficientnet_lite0", pretrained=True, input_size=64)
    space = load_space(ROOT / "search_spaces" / "fashion_cil.yaml")
    base = growth_base(g, {"increment": None}, space)
    assert is_tapped(base) and not is_tapped(g)
    assert base.attrs(base.head)["in_features"] == 2432  # evo's default taps: stride 8 and 16 at 4x4
    assert growth_base(g, {"increment": 0}, space) is g  # later rounds grow the committed version as is
    replay = parse_space({**json.loads(json.dumps(TINY)), "training": {"strategy": ["evo", "replay"]}})
    assert growth_base(g, {"increment": None}, replay) is g


@pytest.mark.parametrize("policy", ["fast_path", "random"])
def test_baseline_policies(ray_cluster, tmp_path, policy):
    """The baselines the search is measured against: never grow, or commit one random growth per round."""
    from evo.search.launch import launch

    doc = {**json.loads(json.dumps(TINY)), "policy": policy}
    results = launch(_write(tmp_path, doc), run_dir=tmp_path / "run", say=lambda s: None)
    run = Run.open(tmp_path / "run")
    for r in results:
        assert len([t for t in r.trials if t["state"] == "COMPLETE"]) == 1
    ops = [run.version_meta(n)["ops"] for n in (1, 2)]
    if policy == "fast_path":
        assert ops == [[], []] and all(run.version_meta(n)["training"]["strategy"] == "evo" for n in (1, 2))
        assert all(t.get("enqueued") for r in results for t in r.trials)
    else:
        assert all(len(o) >= 1 for o in ops)


def test_search_ranks_on_validation_not_test(ray_cluster, tmp_path):
    from evo.search.launch import launch

    results = launch(_write(tmp_path, TINY), run_dir=tmp_path / "run", say=lambda s: None)
    for r in results:
        done = [t for t in r.trials if t["state"] == "COMPLETE"]
        assert all(t["values"][0] == t["val_accuracy"] for t in done)
        assert all(t["val_nll"] >= 0 for t in done)
        top = max(t["val_accuracy"] for t in done)
        low = min(t["val_nll"] for t in done if t["val_accuracy"] == top)
        best = [t for t in done if t["val_accuracy"] == top and t["val_nll"] <= low * (1 + 1e-4) + 1e-12]
        meta = Run.open(tmp_path / "run").version_meta(r.version)
        assert meta["trial"] in {t["number"] for t in best}  # the committed version is the chosen one,
        chosen = next(t for t in best if t["number"] == meta["trial"])
        # which then learned the held-out images (its test accuracy measured again after that)
        assert meta["heldout"]["accuracy"] == r.accuracy and chosen["accuracy"] == meta["heldout"]["accuracy_before"]


def test_ties_go_to_the_smaller_model_and_rounding_is_a_tie():
    """Accuracy first, then validation log-loss; log-losses that differ by float rounding (a growth that
    changed nothing the head reads) are a tie, which the smaller model wins."""
    import optuna

    from evo.search.driver import best_trial

    def trial(acc, nll, params):
        return optuna.trial.create_trial(values=[acc], user_attrs={"val_nll": nll, "params": params})

    fast, noise, better, bigger_acc = (trial(0.937, 0.2107969957, 731498), trial(0.937, 0.2107963615, 732114),
                                       trial(0.937, 0.2089, 801042), trial(0.94, 0.5, 999999))
    assert best_trial([fast, noise]) is fast  # 3e-6 relative: the same function, the smaller model wins
    assert best_trial([fast, noise, better]) is better  # a real log-loss gain wins over size
    assert best_trial([fast, better, bigger_acc]) is bigger_acc  # accuracy first


def _flip(right, lost, gained=0):
    """Per-image correctness with `lost` right images turned wrong and `gained` wrong ones turned right."""
    import numpy as np

    out = right.copy()
    out[np.flatnonzero(right)[:lost]] = False
    out[np.flatnonzero(~right)[:gained]] = True
    return out


def _judged(right, nll, params):
    """A finished trial with validation accuracy, log-loss, size and its per-image record."""
    import optuna

    from evo.search.worker import pack_correct

    return optuna.trial.create_trial(values=[float(right.mean())], user_attrs={
        "val_nll": nll, "params": params, "val_correct": pack_correct(right)})


def test_ties_grow_takes_the_largest_candidate_validation_cannot_tell_from_the_best():
    """`ties: grow`: within one paired standard error of the best on the same validation images, the
    largest candidate wins; one clearly worse does not, and a larger copy of a smaller function does not."""
    import numpy as np
    import optuna

    from evo.search.driver import best_trial, paired_se
    from evo.search.worker import unpack_correct

    rng = np.random.default_rng(0)
    best_right = rng.random(400) < 0.9

    best = _judged(best_right, 0.30, 1_000)
    assert (unpack_correct(best.user_attrs["val_correct"]) == best_right).all()
    near = _judged(_flip(best_right, 6, 4), 0.31, 9_000)  # 2 of 400 images behind, 10 differ: noise
    far = _judged(_flip(best_right, 40), 0.50, 50_000)  # 40 behind: a real loss
    copy = _judged(_flip(best_right, 6, 4), 0.31 * (1 + 1e-6), 20_000)  # what `near` computes, larger
    behind = _judged(_flip(best_right, 2), 0.31, 30_000)  # 2 behind and never ahead: 1.4 standard errors
    one = _judged(_flip(best_right, 1), 0.32, 30_000)  # 1 behind: one standard error, still a tie
    assert paired_se(near, best) == pytest.approx(np.sqrt(10) / 400)  # McNemar's, from the 10 that differ
    assert best_trial([best, near, far]) is best  # the default: the best on validation
    assert best_trial([best, near, far], ties="grow") is near
    assert best_trial([best, near, far, copy], ties="grow") is near
    assert best_trial([best, behind], ties="grow") is best
    assert best_trial([best, one], ties="grow") is one
    certain = [_judged(best_right, 0.0, 1_000), _judged(best_right, 0.0, 5_000)]  # log-loss 0: cannot say "same"
    assert best_trial(certain, ties="grow") is certain[1]
    bare = optuna.trial.create_trial(values=[0.87], user_attrs={"val_nll": 0.3, "params": 99_999})
    assert best_trial([best, bare], ties="grow") is best  # no per-image record: only an equal accuracy ties


def test_ties_loss_takes_the_lowest_log_loss_among_candidates_validation_accuracy_cannot_separate():
    """`ties: loss`: within one paired standard error of the most accurate candidate, the lowest validation
    log-loss wins (the round-3 case measured on the full data: one image behind, a lower log-loss); a
    candidate clearly behind does not, however low its log-loss; log-losses equal up to rounding go to the
    smaller model; without per-image records or with every log-loss 0 it is the default order."""
    import numpy as np
    import optuna

    from evo.search.driver import best_trial

    rng = np.random.default_rng(2)
    base = rng.random(800) < 0.97

    fast = _judged(base, 0.075, 1_000)
    trained = _judged(_flip(base, 5, 4), 0.063, 1_000)  # one image behind of 800, 9 differ: noise
    far = _judged(_flip(base, 20), 0.010, 1_000)  # 20 behind: a real loss, whatever its log-loss
    same = _judged(_flip(base, 5, 4), 0.063 * (1 + 1e-6), 900)  # what `trained` computes, smaller
    assert best_trial([fast, trained]) is fast  # the default: accuracy first
    assert best_trial([fast, trained], ties="loss") is trained
    assert best_trial([fast, trained, far], ties="loss") is trained
    assert best_trial([fast, trained, same], ties="loss") is same
    certain = [_judged(base, 0.0, 1_000), _judged(_flip(base, 1), 0.0, 500)]
    assert best_trial(certain, ties="loss") is certain[0]
    bare = [optuna.trial.create_trial(values=[a], user_attrs={"val_nll": n, "params": 1})
            for a, n in ((0.97, 0.2), (0.9687, 0.1))]
    assert best_trial(bare, ties="loss") is bare[0]  # no per-image record: only an equal accuracy ties


def test_ties_lossless_commits_a_lossy_head_only_when_it_beats_the_exact_ones_beyond_noise():
    """`ties: lossless`: a candidate whose head was refit from exemplars wins only by more than two
    paired standard errors over every candidate whose head is still exact; otherwise the best exact one."""
    import numpy as np
    import optuna

    from evo.search.driver import best_trial
    from evo.search.worker import pack_correct

    rng = np.random.default_rng(1)
    base = rng.random(400) < 0.85

    def trial(right, params, lossless=True, nll=None):
        return optuna.trial.create_trial(values=[float(right.mean())], user_attrs={
            "val_nll": 0.4 - right.mean() / 10 if nll is None else nll, "params": params,
            "val_correct": pack_correct(right), "lossless": lossless})

    fast = trial(base, 1_000)
    tap = trial(base, 1_600, nll=0.2)  # exact too, same accuracy, lower log-loss
    slight = trial(_flip(base, 2, 6), 1_200, lossless=False)  # 4 images ahead, 8 differ: 1.4 standard errors
    clear = trial(_flip(base, 0, 20), 1_500, lossless=False)  # 20 ahead, none behind: 4.5 standard errors
    exact_gain = trial(_flip(base, 0, 3), 1_100)  # exact, 3 ahead: the best of the exact ones
    assert best_trial([fast, slight]) is slight  # the default takes any gain
    assert best_trial([fast, slight], ties="lossless") is fast
    assert best_trial([fast, tap, slight], ties="lossless") is tap  # among the exact ones, the usual order
    assert best_trial([fast, exact_gain, slight], ties="lossless") is exact_gain
    assert best_trial([fast, slight, clear], ties="lossless") is clear
    assert best_trial([slight], ties="lossless") is slight  # no exact candidate finished: the best
    assert best_trial([fast, exact_gain], ties="lossless") is exact_gain  # the best exact: no change
    # a lossless candidate within noise lets the best lossless one win, even one further behind
    lossy = trial(_flip(base, 0, 9), 1_300, lossless=False)
    behind = trial(_flip(base, 15, 15), 1_050)  # level on accuracy with base, 30 images differ: within noise
    assert best_trial([lossy, exact_gain, behind], ties="lossless") is exact_gain
    legacy = optuna.trial.create_trial(values=[float(base.mean())], user_attrs={  # recorded before `lossless`
        "val_nll": 0.3, "params": 900, "val_correct": pack_correct(base)})
    assert best_trial([legacy, slight], ties="lossless") is legacy


def test_search_tries_the_spare_tap_and_it_keeps_every_statistic(ray_cluster, tmp_path):
    """With `spare: auto` the closed-form head keeps statistics for one more block; every round the
    driver tries `add_tap` onto it, and that growth loses no data (the old images are not refit from memory)."""
    from evo.search.launch import launch
    from evo.search.scenario import stream_for, validation_split
    from evo.search.worker import load_candidate

    # two spare blocks (stride 8 at 4x4, stride 16 at 2x2): whichever round 0 takes, round 1 still has
    # one to try, against statistics that hold round 0's images
    doc = {**json.loads(json.dumps(TINY)), "model": {"name": "efficientnet_lite0", "pretrained": True, "input_size": 32},
           "memory": 20, "validation_per_class": 4, "operators": {"add_tap": {"grid": [2, 4]}},
           "training": {"strategy": "evo", "spare": [[[8, 4], [16, 2]]]}, "budget": {"fraction_of_joint": 20.0},
           "trials": 3}
    results = launch(_write(tmp_path, doc), run_dir=tmp_path / "run", say=lambda s: None)
    stream = stream_for(doc["scenario"])
    seen = [len(validation_split(stream, i, 4)[0].train) for i in (0, 1)]
    spare = [[t for t in r.trials if "spare tap" in str(t.get("enqueued"))] for r in results]
    assert [t["candidate"]["growth"][0]["site"]["node"] for t in spare[0]] == ["blocks_3_project_bn",
                                                                             "blocks_5_project_bn"]
    tried = [t for t in spare[1] if t["state"] == "COMPLETE"]
    assert tried and all(t["flops"] <= t["price_flops"] for r in spare for t in r if t["state"] == "COMPLETE")
    for trial in tried:
        assert trial["lossless"] is True
        _, state, _ = load_candidate(Path(trial["out_dir"]))
        assert int(state["strategy.head.n_samples"][0]) == sum(seen)  # exact: round 0's images all count
    _, _, state = Run.open(tmp_path / "run").load_version(2)  # it learned the held-out images after the choice
    assert int(state["strategy.head.n_samples"][0]) == sum(len(stream[i].train) for i in (0, 1))


def test_a_candidate_is_never_evaluated_twice(ray_cluster, tmp_path):
    """Optuna may propose the same computation again (no growth, nothing else to choose): it is skipped.
    (A knob the fast path ignores, such as lr, is refused by the space when no strategy reads it.)"""
    from evo.search.candidate import Candidate
    from evo.search.launch import launch

    doc = {**json.loads(json.dumps(TINY)), "max_ops": 0, "trials": 3,
           "training": {"strategy": "evo", "taps": "features"}}
    results = launch(_write(tmp_path, doc), run_dir=tmp_path / "run", say=lambda s: None)
    for r in results:
        ran = [t for t in r.trials if t["state"] == "COMPLETE"]
        assert len(ran) == 1  # every proposal is the no-growth fast path
        keys = [Candidate(**t["candidate"]).key() for t in r.trials]
        assert len(set(keys)) == 1
        assert all("duplicate of trial" in t["fail_reason"] for t in r.trials if t["state"] == "PRUNED")


def test_a_fine_tune_of_the_head_alone_is_the_fast_path():
    """`evo_tune` training only the final layer changes no feature, and its refit from the memory is
    dominated by `evo`'s exact solve: the search runs, prices and deduplicates it as the fast path, and
    never retries a fine-tune there."""
    import evo.zoo
    from evo.learn.strategies import canonical_training
    from evo.search.candidate import Candidate
    from evo.search.driver import cheapest_training
    from evo.search.scenario import stream_for, validation_split

    for trainable in ("head", 0):
        same = canonical_training({"strategy": "evo_tune", "trainable": trainable, "lr": 0.01, "taps": "features"})
        assert same == {"strategy": "evo", "taps": "features"}  # only what evo reads: what ran is recorded
        assert Candidate([], same).key() == Candidate([], {"strategy": "evo", "lr": 0.3, "taps": "features"}).key()
    for training in ({"strategy": "evo_tune", "trainable": 2}, {"strategy": "evo_tune"}, {"strategy": "evo"}, {}):
        assert canonical_training(training) == training
    doc = {**json.loads(json.dumps(TINY)),
           "training": {"strategy": ["evo", "evo_tune"], "epochs": [1, 2], "trainable": ["head", 1, 2]}}
    space = parse_space(doc)
    base = evo.zoo.load("small_cnn", input_size=32)
    inc, _ = validation_split(stream_for(TINY["scenario"]), 0, space.validation_per_class)
    tune = Candidate([], {"strategy": "evo_tune", "epochs": 2, "trainable": 2})
    changed, _ = cheapest_training(base, inc, {"increment": None}, tune, space, 0, None)
    assert changed == {"epochs": 1, "trainable": 1}  # the cheapest that still fine-tunes, not 'head'


def test_growth_a_frozen_head_cannot_see_is_not_evaluated(ray_cluster, tmp_path):
    """Under the frozen `evo` strategy, a deepening (identity at birth) changes no feature the head reads:
    the candidate would compute the fast path's predictions in a larger net, which no tie-break commits
    (not even `ties: grow`), so it is skipped: no slot, only the check's forwards, recorded on the trial
    and counted by `spent_flops` (what a resumed round rebuilds its spend from)."""
    import optuna

    from evo.search.driver import spent_flops
    from evo.search.launch import launch
    from evo.search.storage import open_storage

    doc = {**json.loads(json.dumps(TINY)), "operators": {"deepen": {"kernel_size": [1, 3]}}, "max_ops": 1,
           "min_ops": 1, "training": {"strategy": "evo", "taps": "features"}, "trials": 2,
           "validation": "hold_out"}
    for ties in ("best", "grow"):
        folder = tmp_path / ties
        results = launch(_write(tmp_path, {**doc, "ties": ties}, f"{ties}.yaml"), run_dir=folder, say=lambda s: None)
        storage = open_storage(None, folder)
        for r in results:
            ran = [t for t in r.trials if t["state"] == "COMPLETE"]
            skipped = [t for t in r.trials if "computes what trial" in t.get("fail_reason", "")]
            assert [t["candidate"]["growth"] for t in ran] == [[]], ran  # only the fast path ran
            assert skipped and all(t["candidate"]["growth"][0]["op"] == "deepen" for t in skipped)
            assert all(f"computes what trial {ran[0]['number']} does" in t["fail_reason"] for t in skipped)
            probes = sum(t.get("probe_flops", 0) for t in r.trials)
            assert all(t["probe_flops"] > 0 for t in skipped)
            assert r.flops_spent == ran[0]["flops"] + probes  # nothing else ran (validation: hold_out)
            study = optuna.load_study(study_name=f"round-{r.increment}", storage=storage)
            assert spent_flops(study) == r.flops_spent  # a resumed round counts the checks too


def test_failing_candidates_are_contained(ray_cluster, tmp_path):
    from evo.search.launch import launch

    doc = json.loads(json.dumps(TINY))
    doc["training"] = {"strategy": ["evo_tune", "evo"], "epochs": 1, "lr": 1e12, "taps": "features"}
    doc["trials"] = 4
    results = launch(_write(tmp_path, doc), run_dir=tmp_path / "run", say=lambda s: None)
    states = [t["state"] for r in results for t in r.trials]
    reasons = [t.get("fail_reason", "") for r in results for t in r.trials if t["state"] == "FAIL"]
    assert "FAIL" in states and "COMPLETE" in states
    assert all("loss became" in reason for reason in reasons)


def _evo(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "evo.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, **kw)


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_killed_driver_resumes_without_losing_or_repeating(tmp_path):
    doc = json.loads(json.dumps(TINY))
    doc["scenario"]["increments"] = 2  # killed in round 1, once round 0 is committed; resume finishes it
    space = _write(tmp_path, doc)
    run_dir = tmp_path / "run"
    proc = _evo("launch", str(space), "--run-dir", str(run_dir), "--num-cpus", "2", start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (run_dir / "versions" / "1" / "meta.json").exists():
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    proc.wait()
    committed = Run.open(run_dir).versions()
    assert 1 in committed and committed[-1] < 2
    before = {n: _tree_bytes(Run(run_dir).version_dir(n)) for n in committed}
    out = _evo("resume", str(run_dir), "--num-cpus", "2")
    text, _ = out.communicate(timeout=400)
    assert out.returncode == 0, text
    run = Run.open(run_dir)
    assert run.versions() == [0, 1, 2]
    assert all(_tree_bytes(run.version_dir(n)) == b for n, b in before.items())  # committed work byte-identical
    lost = [json.loads((run_dir / "metrics" / f"round_{i}.json").read_text()).get("lost_flops", 0) for i in range(2)]
    spent = [run.version_meta(n)["cost"]["flops"] for n in (1, 2)]
    assert all(s <= run.version_meta(n)["cost"]["budget_flops"] for s, n in zip(spent, (1, 2), strict=True))
    assert sum(lost) >= 0  # work cut by the kill is recorded apart, never charged to the round's budget
    assert [run.version_meta(n)["increment"] for n in (1, 2)] == [0, 1]  # nothing repeated


def test_cli_refuses_existing_run_with_exit_2(tmp_path):
    run_dir = tmp_path / "run"
    Run.create(run_dir, {})
    proc = _evo("launch", str(_write(tmp_path, TINY)), "--run-dir", str(run_dir))
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "evo resume" in text and "Traceback" not in text


def _kill_first_candidate_worker(stop: threading.Event, killed: list[int], raylet: int) -> None:
    """SIGKILL the first Ray worker seen running a candidate (Ray titles it 'ray::r<round>-t<trial>:...')
    in two scans in a row, so that it is killed mid-candidate, not as it finishes."""
    seen: set[str] = set()
    while not stop.is_set() and not killed:
        now = set()
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith("ray::r0-t") and _parent(pid) == raylet:  # only this session's cluster
                now.add(f"{pid}:{cmd}")
        for key in now & seen:
            os.kill(int(key.split(":")[0]), signal.SIGKILL)
            killed.append(int(key.split(":")[0]))
            return
        seen = now
        time.sleep(0.2)


def _parent(pid: str) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def test_killed_worker_is_recorded_and_the_round_goes_on(ray_cluster, tmp_path):
    import ray

    from evo.search.launch import launch

    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    doc = json.loads(json.dumps(TINY))
    doc["scenario"]["increments"] = 2
    doc["training"] = {"strategy": "evo_tune", "epochs": 10, "taps": "features"}
    doc["budget"] = {"fraction_of_joint": 100.0}
    doc["trials"] = 4
    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=_kill_first_candidate_worker, args=(stop, killed, raylet), daemon=True)
    watcher.start()
    try:
        results = launch(_write(tmp_path, doc), run_dir=tmp_path / "run", say=lambda s: None)
    finally:
        stop.set()
        watcher.join()
    assert killed, "no candidate worker was seen running"
    first = results[0].trials
    failed = [t for t in first if t["state"] == "FAIL"]
    assert failed, [(t["state"], t.get("fail_reason")) for r in results for t in r.trials]
    assert "worker died" in failed[0]["fail_reason"]
    assert any(t["state"] == "COMPLETE" for t in first)
    assert Run.open(tmp_path / "run").versions() == [0, 1, 2]


@pytest.mark.parametrize("name", ["../escaped", "/tmp/evo-abs-run", "a b"])
def test_a_name_that_is_not_a_plain_folder_name_is_refused_where_it_names_the_run_folder(tmp_path, monkeypatch, name):
    """Without --run-dir the space's name becomes runs/NAME: a path in it (found by a bad-input sweep:
    `../x` wrote outside runs/, an absolute name anywhere) is refused before anything is written. With
    --run-dir the name is only a label, and a stored space is not judged again on resume."""
    from evo.search.launch import launch

    monkeypatch.chdir(tmp_path)
    space = _write(tmp_path, {**TINY, "name": name})
    with pytest.raises(SpaceError, match="plain name"):
        launch(space, say=lambda s: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [space.name]
    assert not Path("/tmp/evo-abs-run").exists()
    assert parse_space({**TINY, "name": name}).name == name
