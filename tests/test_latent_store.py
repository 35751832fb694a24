"""The latent store (issue 14): exact statistics after training above the cut, crash safety, eviction,
and refusing growth below the cut."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import evo.ops
import evo.zoo
from evo.data.dataset import ImageSet
from evo.errors import EvoError
from evo.learn import Learner
from evo.learn.head import RidgeHead
from evo.learn.latent import (
    LatentError,
    LatentStore,
    Part,
    StoreConfig,
    check_growth,
    cut_node,
    decode,
    encode,
    open_store,
    pending_dir,
    read_part,
    write_part,
    write_pending,
)
from evo.learn.latent.store import committed_parts
from evo.runs import Run

ROOT = Path(__file__).resolve().parents[1]


def _data(n_per_class: int, classes: list[str], seed: int) -> ImageSet:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for k in range(len(classes)):
        base = rng.integers(0, 255, (1, 32, 32, 3))
        images.append(np.clip(base + rng.normal(0, 40, (n_per_class, 32, 32, 3)), 0, 255).astype(np.uint8))
        labels += [k] * n_per_class
    return ImageSet.from_arrays(np.concatenate(images), labels, classes)


def _part(increment: int, labels: list[int], classes: list[str], codec: str = "fp16", dim: int = 4) -> Part:
    z = torch.randn(len(labels), dim, 2, 2)
    codes, scales = encode(z, codec)
    return Part(increment, classes, np.array(labels), codes, scales, codec, "cut")


# -- codecs ---------------------------------------------------------------------------------------


def _fresh_pass_gram_matches(learner: Learner, incs: list[ImageSet]) -> int:
    """Assert the learner's head Gram equals a fresh pass of its graph over `incs` (1e-5); return the width."""
    net = learner.graph_.to_module().eval()
    fresh = RidgeHead(1.0)
    for inc in incs:
        with torch.inference_mode():
            feats = net.forward_features(learner.preprocess(inc.images))
        fresh.partial_fit(feats, torch.tensor([learner.classes_.index(inc.classes[i]) for i in inc.labels]), 4)
    head = learner.strategy.head_
    assert float((head.gram_ - fresh.gram_).abs().max()) <= 1e-5 * float(fresh.gram_.abs().max())
    return feats.shape[1]


@pytest.mark.parametrize("codec, tol", [("fp32", 0.0), ("fp16", 1e-3), ("int8", 1 / 127)])
def test_codecs_round_trip_within_their_precision(codec: str, tol: float) -> None:
    z = torch.randn(16, 8, 4, 4) * torch.logspace(-2, 2, 8).view(1, 8, 1, 1)  # channels of very different scale
    back = decode(*encode(z, codec), codec)
    per_channel_max = z.abs().amax(dim=(2, 3), keepdim=True)
    assert ((back - z).abs() <= tol * per_channel_max + 1e-12).all()


# -- exact statistics -------------------------------------------------------------------------------


@pytest.mark.parametrize("head_init", ["ridge", "fresh"])
def test_statistics_recomputed_from_fp32_store_equal_a_fresh_pass(head_init: str) -> None:
    """After training above the cut, the head's G and B from stored latents == a fresh pass over the images,
    whatever the head started training from."""
    g = evo.zoo.load("small_cnn")
    classes = ["a", "b", "c", "d"]
    incs = [_data(12, classes[:2], 0), _data(12, classes[2:], 1)]
    learner = Learner(g, memory=8, strategy="evo_latent", progress=False, taps="features", epochs=1, lr=1e-3,
                      latents=StoreConfig(cut=1, codec="fp32"), head_init=head_init)
    for inc in incs:
        report = learner.learn(inc)
    assert report.info["train_steps"] > 0 and report.info["recomputed_from"] == 48
    graph = learner.graph_
    # the trained layers above the cut changed the features: a fresh pass over every image seen
    before = evo.zoo.load("small_cnn")
    net = graph.to_module().eval()
    fresh = RidgeHead(1.0)
    for inc in incs:
        names = [inc.classes[i] for i in inc.labels]
        with torch.inference_mode():
            feats = net.forward_features(learner.preprocess(inc.images))
        fresh.partial_fit(feats, torch.tensor([learner.classes_.index(c) for c in names]), 4)
    head = learner.strategy.head_
    scale = float(fresh.gram_.abs().max())
    assert float((head.gram_ - fresh.gram_).abs().max()) <= 1e-5 * scale
    assert float((head.xty_ - fresh.xty_).abs().max()) <= 1e-5 * float(fresh.xty_.abs().max())
    trained = [n for n in graph.nodes() if graph.params(n) and n in before
               and not all(torch.equal(graph.params(n)[k], before.params(n)[k]) for k in graph.params(n))]
    cut = learner.latents_.cut
    import networkx as nx
    below = nx.ancestors(graph.g, cut)
    assert trained and not set(trained) & below  # layers above the cut trained; nothing below changed


def test_a_fresh_head_trains_the_layers_below_it_differently_and_a_bad_init_is_named() -> None:
    """`head_init: fresh` starts training from a random head (seeded), not the provisional ridge head, so the
    trained layers differ; the committed head is the ridge solve either way. A typo is a ConfigError."""
    from evo.errors import ConfigError
    from evo.learn.strategies import make_strategy

    classes = ["a", "b"]
    weights = {}
    for run, init in enumerate(("ridge", "fresh", "fresh")):
        model = evo.zoo.load("small_cnn")
        torch.manual_seed(100 + run)  # torch's global generator differs per run: the head must not draw from it
        learner = Learner(model, memory=8, strategy="evo_latent", progress=False, taps="features",
                          epochs=2, lr=1e-2, latents=StoreConfig(cut=1, codec="fp32"), head_init=init)
        report = learner.learn(_data(12, classes, 0))
        assert report.info["statistics_recomputed"] and report.info["exact_head"]  # committed: the ridge solve
        g = learner.graph_
        last_conv = [n for n in g.nodes() if g.params(n) and n != g.head][-1]
        weights.setdefault(init, []).append(g.params(last_conv)["weight"].clone())
    assert not torch.allclose(weights["ridge"][0], weights["fresh"][0])
    assert torch.equal(weights["fresh"][0], weights["fresh"][1])  # seeded: the same run twice
    with pytest.raises(ConfigError, match="head_init"):
        make_strategy("evo_latent", head_init="random")


def test_balanced_replay_gives_every_old_class_what_the_increment_has_per_class() -> None:
    """`replay: balanced`: each old class is replayed as often as the increment has images per class (all of
    a class that has fewer), so the third increment of 2 new classes x 6 replays 6 of each of 4 old
    classes; the price bounds it; a bad value is named."""
    from evo.learn.strategies import Workload, make_strategy

    g = evo.zoo.load("small_cnn")
    classes = ["a", "b", "c", "d", "e", "f"]
    learner = Learner(g, memory=8, strategy="evo_latent", progress=False, taps="features", epochs=1,
                      replay="balanced", latents=StoreConfig(cut=1, codec="fp16"))
    sizes = [10, 4, 6]
    replayed = []
    for k, n in enumerate(sizes):
        replayed.append(learner.learn(_data(n, classes[2 * k: 2 * k + 2], k)).info["replayed"])
    # increment 1: 4 per class, old classes have 10 each -> 2 x 4; increment 2: 6 per class: a, b (10 each)
    # give 6 each, c, d (4 each) give all 4
    assert replayed == [0, 8, 6 + 6 + 4 + 4]
    price = make_strategy("evo_latent", replay="balanced", taps="features")
    work = Workload(n_train=12, n_classes=6, n_seen=28, cut=learner.latents_.cut)
    assert price.price(learner.graph_, work) >= make_strategy("evo_latent", replay=20 / 12, taps="features").price(
        learner.graph_, work)
    with pytest.raises(EvoError, match="replay must be a finite number >= 0 or 'balanced'"):
        make_strategy("evo_latent", replay="lots")


def test_a_fresh_head_pays_no_provisional_pass_and_subsample_trains_on_a_stratified_fraction() -> None:
    """`head_init: fresh` skips the provisional ridge pass (nothing of it would survive); `subsample` trains
    on that fraction of every class (increment and replay alike, rounded up) while the statistics still
    cover everything stored. Each costs less than without it, the price bounds what is measured, and a
    bad fraction is named."""
    from evo.errors import ConfigError
    from evo.learn.latent.below import encode_flops
    from evo.learn.strategies import Workload, make_strategy

    classes = ["a", "b", "c", "d"]
    incs = [_data(10, classes[:2], 0), _data(7, classes[2:], 1)]
    spent = {}
    for init, frac in (("ridge", 1.0), ("fresh", 1.0), ("fresh", 0.5)):
        options = dict(taps="features", epochs=1, replay="balanced", head_init=init, subsample=frac)
        learner = Learner(evo.zoo.load("small_cnn"), memory=8, strategy="evo_latent", progress=False,
                          latents=StoreConfig(cut=1, codec="fp32"), **options)
        learner.learn(incs[0])
        grown = learner.graph_
        report = learner.learn(incs[1])
        cut = learner.latents_.cut
        # increment 1: 7 per new class, 7 replayed of each old class (balanced) -> 28 rows; half of each
        # class rounded up -> 4 x 4
        assert report.info["replayed"] == 14 and report.info["recomputed_from"] == 34
        assert report.info["trained_on"] == (28 if frac == 1 else 16)
        spent[init, frac] = report.cost.flops - encode_flops(grown, cut, 14)
        work = Workload(n_train=14, n_classes=4, n_memory=8, n_seen=20, cut=cut)
        assert 0 < spent[init, frac] <= make_strategy("evo_latent", **options).price(learner.graph_, work)
    assert spent["ridge", 1.0] > spent["fresh", 1.0] > spent["fresh", 0.5]
    for bad in (0, 1.5, "half", True):
        with pytest.raises(ConfigError, match="subsample must be a fraction in"):
            make_strategy("evo_latent", subsample=bad)


def test_train_taps_deepest_trains_through_the_top_and_commits_the_exact_multi_tap_head() -> None:
    """`train_taps: deepest`: training's own fresh head reads only the deepest tap, so the trained layers
    differ from training through every tap; the committed head still reads every tap, and its statistics
    equal a fresh pass over the images. Its price bounds what it spends; it needs a fresh head."""
    from evo.errors import ConfigError
    from evo.learn.latent.below import encode_flops
    from evo.learn.strategies import Workload, make_strategy
    from evo.learn.tracked import head_taps

    classes = ["a", "b", "c", "d"]
    incs = [_data(12, classes[:2], 0), _data(12, classes[2:], 1)]
    taps = [("down_2", 2), ("drop", 1)]
    weights, runs = {}, [("head", 0), ("deepest", 0), ("deepest", 1)]
    for train_taps, run in runs:
        options = dict(taps=taps, epochs=2, lr=1e-2, head_init="fresh", train_taps=train_taps)
        learner = Learner(evo.zoo.load("small_cnn"), memory=8, strategy="evo_latent", progress=False,
                          latents=StoreConfig(cut=1, codec="fp32"), **options)
        learner.learn(incs[0])
        grown = learner.graph_
        report = learner.learn(incs[1])
        g = learner.graph_
        assert [(t.node, t.grid) for t in head_taps(g)] == taps  # the committed head reads both
        assert report.info["trained_through"] == (["drop"] if train_taps == "deepest" else ["down_2", "drop"])
        weights[train_taps, run] = g.params("down_0")["weight"].clone()
        spent = report.cost.flops - encode_flops(grown, learner.latents_.cut, 24)
        work = Workload(n_train=24, n_classes=4, n_memory=8, n_seen=24, cut=learner.latents_.cut)
        assert 0 < spent <= make_strategy("evo_latent", **options).price(g, work)
    assert not torch.allclose(weights["head", 0], weights["deepest", 0])
    assert torch.equal(weights["deepest", 0], weights["deepest", 1])  # seeded
    # the committed head: the joint ridge solve over both taps of the trained layers, exactly
    assert _fresh_pass_gram_matches(learner, incs) == 32 * 4 + 64  # both taps' columns
    with pytest.raises(ConfigError, match="train_taps: deepest trains a head of its own; it needs head_init: fresh"):
        make_strategy("evo_latent", train_taps="deepest")
    with pytest.raises(ConfigError, match=r"train_taps must be one of \['head', 'deepest'\]"):
        make_strategy("evo_latent", train_taps="top", head_init="fresh")


def test_evo_latent_without_a_store_is_refused() -> None:
    learner = Learner(evo.zoo.load("small_cnn"), strategy="evo_latent", progress=False, taps="features")
    with pytest.raises(EvoError, match="latent store"):
        learner.learn(_data(4, ["a", "b"], 0))
    assert learner.graph_ is None


# -- eviction ---------------------------------------------------------------------------------------


def test_full_store_evicts_class_balanced_and_reports_it() -> None:
    per_row = _part(0, [0], ["a"]).codes.nbytes + 8  # fp16 4×2×2 + the label
    store = LatentStore(StoreConfig(codec="fp16", budget_mb=60 * per_row / 2**20), cut="cut")
    store = store.with_part(_part(0, [0] * 50 + [1] * 10, ["a", "b"]))  # 60 rows: fits
    assert store.n_live() == 60 and store.last_eviction["evicted"] == {}
    store = store.with_part(_part(1, [0] * 30, ["c"]))  # 90 rows, room for 60
    ev = store.last_eviction
    assert store.n_live() == 60 and store.live_bytes() <= store.config.budget_bytes
    assert ev["kept"] == {"a": 25, "b": 10, "c": 25}  # b keeps all it has; a and c share the rest
    assert ev["evicted"] == {"a": 25, "c": 5}
    summary = store.summary()
    assert summary["live_per_class"] == {"a": 25, "b": 10, "c": 25} and summary["eviction"] == ev
    assert sorted(store.rows().label_names().tolist()).count("a") == 25


# -- growth below the cut -----------------------------------------------------------------------------


def test_growth_below_the_cut_without_readable_images_is_refused() -> None:
    g = evo.zoo.load("small_cnn")
    cut = cut_node(g, 1)
    assert cut_node(g, 2) != cut
    below_sites = [s for s in evo.ops.sites(g, "widen") if s.get("group") in ("stem_0", "res_a_0")]
    grown = evo.ops.apply(g, "widen", site=below_sites[0], factor=1.5)
    with pytest.raises(LatentError, match="cannot give them back.*grow above the cut"):
        check_growth(g, grown, cut, "fashion-mnist")
    above_sites = [s for s in evo.ops.sites(g, "widen") if s.get("group") == "down_0"]
    check_growth(g, evo.ops.apply(g, "widen", site=above_sites[0], factor=1.5), cut, "fashion-mnist")


# -- crash safety ---------------------------------------------------------------------------------


WRITER = textwrap.dedent("""
    import shutil, sys, numpy as np, torch
    from pathlib import Path
    from evo.learn.latent import LatentStore, Part, StoreConfig, encode, write_pending, open_store, pending_dir
    from evo.runs import Run
    run = Run.open(sys.argv[1])
    v = run.latest()
    store = open_store(run.path, v, StoreConfig(codec="fp16"))
    i = 0 if not store.parts else max(store.parts) + 1
    ROWS = 16000
    while True:
        z = torch.randn(ROWS, 16, 8, 8)
        codes, _ = encode(z, "fp16")
        part = Part(i, ["a", "b"], np.arange(ROWS) % 2, codes, None, "fp16", "cut")
        s = store.with_part(part)
        shutil.rmtree(pending_dir(run.path, i), ignore_errors=True)  # a round cut short: encoded again
        print("writing", i, flush=True)
        folder = write_pending(run.path, i, s, {"parent_version": v})
        graph, meta, state = run.load_version(v)
        print("committing", i, flush=True)
        v = run.commit_version(graph, {"increment": i, "parent": v}, state, extra_dirs={"latents": folder})
        print("committed", i, flush=True)
        store, i = s, i + 1
""")


def test_kill9_during_store_writes_leaves_only_whole_committed_parts(tmp_path: Path) -> None:
    run = Run.create(tmp_path / "run", {"test": True})
    run.commit_version(evo.zoo.load("small_cnn"), {"increment": None})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # kill while a part is written, while a version commits, and just after a commit
    for wait_for, delay in (("writing", 0.05), ("committing", 0.0), ("committed", 0.0)):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(run.path)], env=env, stdout=subprocess.PIPE)
        while not proc.stdout.readline().startswith(wait_for.encode()):
            assert proc.poll() is None, "the writer stopped by itself"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with run.lock("test"):  # what a resume does first: remove evo's own temporary names
            pass
        latest = run.latest()
        store = open_store(run.path, latest, StoreConfig(codec="fp16"))
        committed = {run.version_meta(v).get("increment") for v in run.versions()} - {None}
        assert set(store.parts) == committed  # no latent of an uncommitted version
        for _inc, part in store.parts.items():
            assert len(part) == 16000 and np.asarray(part.codes[-1]).shape == (16, 8, 8)
        for folder in committed_parts(run.path).values():
            read_part(folder)  # every part on disk is whole
        leftovers = [p.name for p in (run.path / "latents").iterdir()] if (run.path / "latents").is_dir() else []
        assert all(n.startswith("round-") for n in leftovers)  # no torn temp: only whole pending parts
        for n in leftovers:  # a pending part is whole too (it is only ever renamed into place complete)
            read_part(run.path / "latents" / n)
    assert len(committed) >= 1


def test_a_damaged_part_is_refused(tmp_path: Path) -> None:
    folder = write_part(tmp_path / "p", _part(0, [0, 1, 1], ["a", "b"]))
    info = json.loads((folder / "part.json").read_text())
    (folder / "part.json").write_text(json.dumps({**info, "rows": 5}))
    with pytest.raises(LatentError, match="damaged"):
        read_part(folder)
    assert pending_dir(tmp_path, 3).name == "round-3"
    assert write_pending  # noqa: B018 - the pending writer is exercised by the kill test


def test_grown_and_trained_above_the_cut_keeps_exact_statistics() -> None:
    """A block widened above the cut, then trained on increment + stored latents: G and B again equal a
    fresh pass of the grown, trained network over every image seen."""
    g = evo.zoo.load("small_cnn")
    incs = [_data(10, ["a", "b"], 0), _data(10, ["c", "d"], 1)]
    learner = Learner(g, memory=8, strategy="evo_latent", progress=False, taps="features", epochs=1,
                      latents=StoreConfig(cut=1, codec="fp32"))
    learner.learn(incs[0])
    site = next(s for s in evo.ops.sites(learner.graph_, "widen") if s.get("group") == "down_0")
    grown = evo.ops.apply(learner.graph_, "widen", site=site, factor=1.5)
    child = learner.with_graph(grown)
    child.learn(incs[1])
    assert child.graph_.shape("down_0")[0] > g.shape("down_0")[0]
    _fresh_pass_gram_matches(child, incs)


def test_a_cut_at_the_input_stores_the_images_and_trains_every_layer() -> None:
    """A net trained from scratch has nothing worth freezing: `cut: input` keeps the preprocessed images and
    evo_latent trains every layer on them; growth anywhere passes `check_growth`."""
    g = evo.zoo.load("small_cnn", width=4)
    classes = ["a", "b", "c", "d"]
    learner = Learner(g, memory=8, strategy="evo_latent", progress=False, epochs=1, lr=1e-3,
                      latents=StoreConfig(cut="input", codec="fp32"))
    incs = [_data(12, classes[:2], 0), _data(12, classes[2:], 1)]
    for inc in incs:
        report = learner.learn(inc)
    assert learner.latents_.cut == g.input and report.info["recomputed_from"] == 48
    stored = learner.latents_.rows(exclude=None)
    assert stored[np.arange(24)].shape == (24, 3, 32, 32)
    first = torch.as_tensor(learner.preprocess(incs[0].images))
    assert torch.allclose(stored[np.arange(24)].float(), first.float(), atol=1e-6)
    assert all(not torch.equal(learner.graph_.params(n)["weight"], g.params(n)["weight"])
               for n in ("stem_0", "classifier"))
    grown = evo.ops.apply(g, "scale_width", site={"after": "input"}, factor=2.0)
    check_growth(g, grown, g.input, "fashion-mnist")


@pytest.mark.slow  # 27 s of a 10-minute suite for a smoke run of a benchmark script; the store itself is tested above
def test_the_store_scale_benchmark_runs_and_compression_costs_the_head_little(tmp_path):
    """`benchmarks/store_scale.py` on a few images per class: real part files on disk, sized as
    `bytes_per_row` says (plus each file's header), and every codec's head within one test image of fp32's."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "store_scale.py"
    spec = importlib.util.spec_from_file_location("store_scale", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--per-class-train", "6", "--per-class-test", "6", "--threads", "1", "--dir", str(tmp_path)])
    assert out["n_train"] == 60
    for codec, row in out["codecs"].items():
        assert 60 * row["bytes_per_image"] <= row["bytes_on_disk"] <= 60 * row["bytes_per_image"] + 5 * 4096, codec
        assert abs(row["accuracy_vs_fp32_points"]) <= 100 / 60 + 1e-9  # at most one test image of 60
    assert out["codecs"]["int8"]["bytes_on_disk"] < out["codecs"]["fp16"]["bytes_on_disk"] < out["codecs"]["fp32"]["bytes_on_disk"]
    assert (tmp_path / "int8" / "part-4").is_dir()  # the store was kept where --dir said


@pytest.mark.parametrize(("doc", "named"), [
    ({"cut": -1}, "latents.cut"), ({"cut": ""}, "latents.cut"), ({"codec": "fp8"}, "codec"),
    ({"budget_mb": 0}, "latents.budget_mb"), ({"budget_mb": float("nan")}, "latents.budget_mb"),
    ({"seed": "x"}, "latents.seed"), ({"seed": -1}, "latents.seed"), ({"seed": 1.5}, "latents.seed"),
    ({"size": 3}, "unknown key"), ("yes", "'none' or a mapping"),
])
def test_a_bad_store_config_is_named_before_anything_is_written(doc, named) -> None:
    """Every field is checked when the space loads; a bad eviction seed used to pass and crash mid-run,
    at the first eviction, with a TypeError from numpy."""
    with pytest.raises(EvoError, match=named):
        StoreConfig.parse(doc)
