"""The growth search with a latent store: one pass below the cut per round, evo_latent candidates trained
above it on everything stored, the store committed with each version, growth below the cut refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from evo.errors import EvoError
from evo.learn.latent import StoreConfig, open_store, read_part
from evo.runs import Run
from evo.search import SpaceError, parse_space
from evo.search.executor import InProcessExecutor

SPACE = {
    "name": "tiny_latent",
    "scenario": {"kind": "class_incremental", "source": "digits", "increments": 3, "seed": 0,
                 "per_class_train": 16, "per_class_test": 10},
    "model": {"name": "small_cnn", "input_size": 32},
    "memory": 40,
    "latents": {"cut": 1, "codec": "fp16"},
    "operators": {"widen": {"factor": 1.5}},
    "max_ops": 1,
    "training": {"strategy": ["evo", "evo_latent"], "epochs": 1, "taps": "features"},
    "budget": {"fraction_of_joint": 4.0},
    "trials": 4,
    "concurrency": 1,
    "validation_per_class": 3,
}


def _drive(tmp_path: Path, doc: dict) -> tuple[Run, list]:
    from evo.search.driver import Driver
    from evo.search.launch import check_space

    space = parse_space(json.loads(json.dumps(doc)))
    graph = check_space(space)
    run = Run.create(tmp_path / "run", {"space": space.to_dict()})
    run.commit_version(graph, {"increment": None, "ops": [], "classes": graph.classes})
    lines: list[str] = []
    results = Driver(run, space, progress=lines.append, executor=InProcessExecutor()).run()
    return run, results, lines


def test_latent_search_commits_the_store_with_each_version(tmp_path: Path) -> None:
    run, results, lines = _drive(tmp_path, SPACE)
    assert run.versions() == [0, 1, 2, 3]
    assert sum("encoded below" in line for line in lines) == 3  # once per round, not per candidate
    latent_trials = [t for r in results for t in r.trials
                     if t["state"] == "COMPLETE" and t["candidate"]["training"].get("strategy") == "evo_latent"]
    assert latent_trials and all(t["flops"] <= t["price_flops"] for t in latent_trials)
    for r in results:
        assert 0 < r.flops_spent <= r.budget_flops
    seen = 0
    for v in (1, 2, 3):
        meta = run.version_meta(v)
        part = read_part(run.version_dir(v) / "latents")
        assert part.increment == meta["increment"] and meta["latents"]["flops"] > 0
        seen += len(part)
        store = open_store(run.path, v, StoreConfig(codec="fp16"))
        assert store.n_live() == seen == meta["latents"]["live_rows"]  # everything seen, nothing evicted
    assert not any((run.path / "latents").iterdir())  # pending parts went with their versions
    # the evo_latent report recomputed its statistics from every stored latent
    report = json.loads((Path(latent_trials[-1]["out_dir"]) / "report.json").read_text())
    assert "summary" in report


def test_growth_below_the_cut_is_never_proposed(tmp_path: Path) -> None:
    """With the cut at stride 2, five of small_cnn's six widen groups lie below it: the search proposes
    only the one above (refusing the others as failed trials would spend the round's trials on nothing;
    `check_growth` still refuses such growth, tests/test_latent_store.py)."""
    import evo.ops
    import evo.zoo
    from evo.learn.latent import cut_node, sites_above

    doc = json.loads(json.dumps(SPACE))
    doc["scenario"]["increments"] = 1
    doc["latents"]["cut"] = 2
    doc["trials"] = 3
    graph = evo.zoo.load("small_cnn", input_size=32)
    allowed = sites_above(graph, cut_node(graph, 2), "widen", evo.ops.sites(graph, "widen"))
    assert allowed == [{"group": "fc1"}]
    run, results, _ = _drive(tmp_path, doc)
    trials = [t for r in results for t in r.trials]
    assert not [t for t in trials if "below the latent cut" in t.get("fail_reason", "")]
    grown = [g for t in trials for g in t["candidate"]["growth"]]
    assert grown and all(g["site"] in allowed for g in grown)


def test_a_space_without_latents_refuses_evo_latent(tmp_path: Path) -> None:
    doc = {k: v for k, v in SPACE.items() if k != "latents"}
    with pytest.raises(SpaceError, match="add `latents:"):
        parse_space(doc)
    doc["latents"] = "none"
    doc["training"] = {"strategy": ["evo"], "taps": "features"}
    assert parse_space(doc).latents is None
    doc["latents"] = {"cut": 8, "codec": "fp8"}
    with pytest.raises(SpaceError, match="codec"):
        parse_space(yaml.safe_load(yaml.safe_dump(doc)))


def test_training_options_that_clash_are_judged_together_when_the_space_loads() -> None:
    """`train_taps: deepest` is valid only with `head_init: fresh`: a space fixing both loads (each key
    alone would fail), one that can draw the clash names the combination, and a value no combination
    accepts is named by its key."""
    doc = json.loads(json.dumps(SPACE))
    doc["training"].update(taps="auto+features", head_init="fresh", train_taps="deepest")
    assert parse_space(doc).training["train_taps"].values() == ("deepest",)
    from evo.search.launch import check_space

    check_space(parse_space(doc))  # and against the model, as `evo launch` checks it
    doc["training"]["head_init"] = ["fresh", "ridge"]
    with pytest.raises(SpaceError, match=r"training: .*needs head_init: fresh \(a combination this space can "
                                         r"draw for evo_latent: .*head_init: ridge.*train_taps: deepest"):
        parse_space(doc)
    doc["training"]["head_init"] = "ridge"
    with pytest.raises(SpaceError, match=r"training.train_taps: .*needs head_init: fresh"):
        parse_space(doc)
    doc["training"].update(head_init="fresh", warmup=2.0)  # the wrong key is blamed, not train_taps
    with pytest.raises(SpaceError, match=r"training.warmup: .*warmup"):
        parse_space(doc)
    doc["training"].pop("warmup")
    # many combinations: a value wrong on its own is still found (pairwise, no cap)
    doc["training"].update(epochs=[1, -1], strategy="evo_latent", **{k: [0.1, 0.2, 0.3, 0.4] for k in (
        "noise", "subsample", "weight_decay")}, lr=[1e-4, 1e-3, 1e-2, 1e-1], gcv_evals=[3, 4, 5, 6], replay=[1, 2, 3, 4])
    with pytest.raises(SpaceError, match=r"training.epochs: .*epochs"):
        parse_space(doc)


def test_a_round_part_is_encoded_once_and_reused_after_a_kill(tmp_path: Path) -> None:
    """A resumed round finds its pending part whole and does not pay for the pass below the cut again;
    a part staged on another parent version is encoded again."""
    import evo.zoo
    from evo.learn import Learner
    from evo.search.latents import stage_round
    from evo.search.scenario import stream_for

    space = parse_space(json.loads(json.dumps(SPACE)))
    graph = evo.zoo.load("small_cnn")
    run = Run.create(tmp_path / "run", {"space": space.to_dict()})
    run.commit_version(graph, {"increment": None})
    train = stream_for(space)[0].train
    pre = Learner(graph, progress=False).preprocess
    first = stage_round(run.path, 0, 0, graph, train, space.latents, pre)
    stamp = (first.folder / "latents.npy").stat().st_mtime_ns
    again = stage_round(run.path, 0, 0, graph, train, space.latents, pre)
    assert again.folder == first.folder and (again.folder / "latents.npy").stat().st_mtime_ns == stamp
    assert again.flops == first.flops > 0
    (run.path / "latents" / ".evo-tmp-round-0.x").mkdir()  # a write cut by a kill
    with run.lock("test"):
        pass
    assert [p.name for p in (run.path / "latents").iterdir()] == ["round-0"]
    other = stage_round(run.path, 0, 1, graph, train, space.latents, pre)  # another parent: encoded again
    assert (other.folder / "latents.npy").stat().st_mtime_ns != stamp


def test_a_store_budget_evicts_class_balanced_and_the_version_reports_it(tmp_path: Path) -> None:
    doc = json.loads(json.dumps(SPACE))
    doc["training"] = {"strategy": ["evo"], "taps": "features"}
    doc["operators"], doc["max_ops"] = {}, 0
    # small_cnn's stride-1 cut: 16×32×32 fp16 = 32 KiB per image; room for 40 of the 3 × 26 training images
    doc["latents"] = {"cut": 1, "codec": "fp16", "budget_mb": 40 * (16 * 32 * 32 * 2 + 8) / 2**20}
    run, _, lines = _drive(tmp_path, doc)
    meta = run.version_meta(3)["latents"]
    assert meta["live_rows"] == 40 and meta["live_bytes"] <= meta["budget_bytes"]
    kept = meta["eviction"]["kept"]
    assert meta["eviction"]["evicted"] and max(kept.values()) - min(kept.values()) <= 1  # class-balanced
    assert any("evicted" in line for line in lines)
    store = open_store(run.path, 3, StoreConfig(codec="fp16"))
    assert store.n_live() == 40 and len(store.parts) == 3


def test_enqueued_spare_taps_name_their_tap_in_the_list_the_search_samples() -> None:
    """With a cut, sites below it leave the list `suggest_candidate` indexes, so an enqueued `add_tap`
    onto a spare tap must be a position in that filtered list (it once landed on another tap)."""
    import evo.zoo
    from evo.learn.latent import cut_node
    from evo.learn.strategies import make_strategy
    from evo.search.candidate import candidate_sites
    from evo.search.driver import _spare_tap_params

    doc = json.loads(json.dumps(SPACE))
    doc.update(model={"name": "efficientnet_lite0", "input_size": 64}, operators={"add_tap": {"grid": [1, 2]}},
               training={"strategy": "evo", "spare": "auto"}, latents={"cut": 4, "codec": "fp16"})
    space = parse_space(doc)
    base = make_strategy("evo", spare="auto").prepare(evo.zoo.load("efficientnet_lite0", pretrained=True,
                                                                    input_size=64))
    cut = cut_node(base, 4)
    sites = candidate_sites(base, "add_tap", cut)
    assert len(sites) < len(evo.ops.sites(base, "add_tap"))  # the cut removed some
    enqueued = _spare_tap_params(space, base, cut)
    assert enqueued
    for label, params in enqueued:
        site = sites[int(params["site_0"] * len(sites))]
        assert label == f"spare tap {site['node']} (exact statistics)"


def test_every_round_tries_all_groups_above_the_cut_wider_at_the_smallest_factor(tmp_path: Path) -> None:
    """Where the space offers `scale_width`, each round enqueues it at the lowest site the search may grow
    (everything above the cut wider at once), by the smallest factor, trained by `evo_latent`."""
    from evo.learn.latent import cut_node
    from evo.search.candidate import candidate_sites

    doc = json.loads(json.dumps(SPACE))
    doc["scenario"]["increments"] = 2
    doc["operators"] = {"scale_width": {"factor": [3.0, 2.0], "noise": 0.1}, "widen": {"factor": 1.5}}
    run, results, lines = _drive(tmp_path, doc)
    for r in results:
        base, _, _ = run.load_version(r.version - 1)
        if r.increment == 0:
            from evo.search.candidate import growth_base

            base = growth_base(base, {"increment": None}, parse_space(json.loads(json.dumps(doc))))
        lowest = candidate_sites(base, "scale_width", cut_node(base, 1))[0]
        tried = [t for t in r.trials if "scale_width after" in str(t.get("enqueued"))]
        assert len(tried) == 1 and tried[0]["state"] == "COMPLETE", r.trials
        cand = tried[0]["candidate"]
        assert cand["growth"] == [{"op": "scale_width", "site": lowest, "params": {"factor": 2.0, "noise": 0.1}}]
        assert cand["training"]["strategy"] == "evo_latent"


def test_an_enqueued_candidate_priced_out_is_retried_at_its_cheapest_training(tmp_path: Path) -> None:
    """A standard candidate whose sampled training does not fit the round's budget runs again with the
    knobs that price lowest (epochs 1 here), instead of being lost to the round."""
    from evo.search.driver import CHEAPEST, Driver
    from evo.search.launch import check_space

    class EightEpochs(Driver):  # the sampled knobs of the enqueued growth, fixed at the expensive end
        def _enqueued(self, base, policy):
            return [(label, {**p, "train_epochs": 8} if label.startswith("scale_width") else p)
                    for label, p in super()._enqueued(base, policy)]

    doc = json.loads(json.dumps(SPACE))
    doc["scenario"]["increments"] = 1
    doc.update(operators={"scale_width": {"factor": [2.0], "noise": 0.1}}, latents={"cut": "input", "codec": "fp16"},
               training={"strategy": "evo_latent", "epochs": [1, 8], "lr": {"low": 0.001, "high": 0.01}},
               budget={"fraction_of_joint": 10.0})
    space = parse_space(doc)
    graph = check_space(space)
    run = Run.create(tmp_path / "run", {"space": space.to_dict()})
    run.commit_version(graph, {"increment": None, "ops": [], "classes": graph.classes})
    result = EightEpochs(run, space, progress=lambda s: None, executor=InProcessExecutor()).run()[0]
    scaled = [t for t in result.trials if str(t.get("enqueued")).startswith("scale_width")]
    assert [t["state"] for t in scaled] == ["PRUNED", "COMPLETE"], scaled
    first, retry = (t["candidate"]["training"] for t in scaled)
    assert first["epochs"] == 8 and retry["epochs"] == 1 and retry["lr"] == first["lr"]  # lr costs nothing
    assert scaled[1]["enqueued"].endswith(CHEAPEST) and scaled[1]["price_flops"] < scaled[0]["price_flops"]
    assert "over budget" in scaled[0]["fail_reason"]


def test_the_standard_candidates_hold_no_duplicate_of_the_fast_path() -> None:
    """Where evo_latent is the only strategy, the fast path already trains above the cut: a second
    no-growth candidate would only spend the budget growth needs. With `evo` as well, both are tried."""
    import evo.zoo
    from evo.search.driver import Driver

    base = evo.zoo.load("small_cnn", input_size=32)
    labels = {}
    for strategies in (["evo", "evo_latent"], "evo_latent"):
        doc = json.loads(json.dumps(SPACE))
        doc["training"] = {"strategy": strategies, "epochs": 1}
        driver = Driver.__new__(Driver)  # only the space and the round's staged part are read
        driver.space, driver._staged = parse_space(doc), None
        labels[str(strategies)] = [label for label, _ in driver._enqueued(base, "search")]
    assert labels["['evo', 'evo_latent']"] == ["no-growth fast path", "train above the latent cut"]
    assert labels["evo_latent"] == ["no-growth fast path"]


def test_training_nothing_above_the_cut_is_run_as_the_fast_path(tmp_path: Path) -> None:
    """`evo_latent` with `trainable: head` (or 0) changes no feature: the statistics it recomputes from the
    store are the fast path's, so the training would be paid for nothing. The search reads it as `evo`
    (what the committed version records) and never runs or prices it beside the fast path."""
    from evo.learn.strategies import canonical_training

    for trainable in ("head", 0):
        same = canonical_training({"strategy": "evo_latent", "trainable": trainable, "epochs": 2, "taps": "features"})
        assert same == {"strategy": "evo", "taps": "features"}
    for training in ({"strategy": "evo_latent", "trainable": 1}, {"strategy": "evo_latent"}):
        assert canonical_training(training) == training
    # after growth the store's recompute stays exact where evo would rebuild from the memory (review)
    grown = {"strategy": "evo_latent", "trainable": "head"}
    assert canonical_training(grown, grown=True) == grown
    assert canonical_training({"strategy": "evo_tune", "trainable": 0}, grown=True) == {"strategy": "evo"}
    doc = {**json.loads(json.dumps(SPACE)), "operators": {}, "max_ops": 0, "trials": 3,
           "training": {"strategy": ["evo", "evo_latent"], "epochs": 1, "taps": "features", "trainable": ["head", 0]}}
    run, results, _ = _drive(tmp_path, doc)
    for r in results:
        ran = [t for t in r.trials if t["state"] == "COMPLETE"]
        assert [t["candidate"]["training"]["strategy"] for t in ran] == ["evo"], r.trials
        assert all("duplicate of trial" in t["fail_reason"] for t in r.trials if t["state"] == "PRUNED")
    assert {run.version_meta(v)["training"]["strategy"] for v in run.versions()[1:]} == {"evo"}


@pytest.mark.parametrize(("cut", "named"), [("no_such_node", "not a block output"), (1000, "no block output at stride")])
def test_a_cut_the_model_lacks_is_refused_before_the_run_folder_exists(tmp_path: Path, cut, named) -> None:
    """The cut is resolved in the model when the space is checked: before, the run folder and version 0
    were written and round 0 then failed on it."""
    from evo.search.launch import launch

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({**json.loads(json.dumps(SPACE)), "latents": {"cut": cut, "codec": "fp16"}}))
    with pytest.raises(EvoError, match=named):
        launch(space, run_dir=tmp_path / "run", say=lambda s: None)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("training", "named"), [
    ({"taps": "bogus"}, "training.taps: taps must be"),
    ({"taps": [["nosuch", 1]]}, "training.taps: tap node 'nosuch' is not in the graph"),
    ({"taps": [["stem_2", 2]]}, "training.taps: each tap must be a node name or a \\(node, grid\\) pair"),
    # in a space a list is a choice: one value, one tap; the tapped model then ends before the cut
    ({"taps": [[["stem_2", 2]]]}, "latents.cut 'relu': the head's taps read only layers below it"),
    ({"taps": [[["stem_2", 2], ["cat", 1]]]}, "a head tap below the cut, bypasses it"),
])
def test_taps_the_model_or_the_cut_cannot_serve_are_refused_before_the_run_folder_exists(
        tmp_path: Path, training, named) -> None:
    """Taps are resolved in the model when the space is checked (before: the run folder and version 0
    were written, then round 0 failed), and evo_latent's taps must lie at or above the cut."""
    from evo.search.launch import launch

    doc = {**json.loads(json.dumps(SPACE)), "latents": {"cut": "relu", "codec": "fp16"}}
    doc["training"] = {**doc["training"], **training}
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(doc))
    with pytest.raises(EvoError, match=named):
        launch(space, run_dir=tmp_path / "run", say=lambda s: None)
    assert not (tmp_path / "run").exists()


def test_the_cut_is_found_where_the_driver_finds_it() -> None:
    """At version 0 the driver resolves the cut on the model as the strategies tap it (the network past
    the deepest tap dropped), so on Lite0 `cut: 8` with a tap on the stride-8 stage's last block is that
    block: valid, and not refused because the untapped model's stride-8 output lies above the tap."""
    from evo.learn.latent import cut_node
    from evo.search.candidate import growth_base
    from evo.search.launch import check_space

    root = Path(__file__).resolve().parents[1]
    doc = yaml.safe_load((root / "search_spaces" / "fashion_latent.yaml").read_text())
    doc["scenario"].update(per_class_train=4, per_class_test=2)
    doc["training"]["taps"] = [[["blocks_3_project_bn", 4]]]
    space = parse_space(doc)
    graph = check_space(space)
    assert cut_node(graph, 8) != "blocks_3_project_bn"  # the untapped model's stride-8 output lies above the tap
    assert cut_node(growth_base(graph, {"increment": None}, space), 8) == "blocks_3_project_bn"


def test_a_store_budget_below_one_latent_per_class_is_refused_when_the_space_is_checked() -> None:
    """Such a budget evicts every latent (found by a bad-input sweep: accepted, and accuracy fell)."""
    from evo.search.launch import check_space

    doc = {**json.loads(json.dumps(SPACE)), "latents": {"cut": 1, "codec": "fp16", "budget_mb": 1e-6}}
    with pytest.raises(SpaceError, match="fewer than one latent per class"):
        check_space(parse_space(doc))
    doc["latents"]["budget_mb"] = 1.0
    check_space(parse_space(doc))
