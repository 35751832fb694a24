"""Corrections on a real run: each fix holds, equals the batch solve, undoes exactly, survives a restart
and a kill -9, guards earlier fixes, reports conflicts, adds classes; query strategies rank the pool."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from active_helpers import CLASSES, copy_run, fashion, make_run, write_folder

from evo.active import CorrectionError, Corrections, local
from evo.active.log import CorrectionLog
from evo.learn.strategies.base import sub_state
from evo.learn.tracked import apply_map, from_meta, head_map, head_taps
from evo.runs import Run


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("active"))


@pytest.fixture
def run(base_run, tmp_path) -> Path:
    return copy_run(base_run, tmp_path / "run")


@pytest.fixture(scope="module")
def pool():
    images, labels = fashion("test")
    return images[:400], labels[:400]


def _wrong(eng: Corrections, images, labels, n: int) -> list[int]:
    preds = [p.label for p in eng.predict(images)]
    wrong = [i for i, p in enumerate(preds) if p != CLASSES[labels[i]]]
    # few errors on 3 easy classes: flag other images as if they were another class too
    extra = [i for i in range(len(images)) if i not in wrong]
    return (wrong + extra)[:n]


def test_corrections_hold_and_equal_the_batch_solve(run, pool):
    images, labels = pool
    with Corrections.open(run) as eng:
        w0 = eng.head_weight.clone()
        picks = _wrong(eng, images, labels, 12)
        for n, i in enumerate(picks):
            label = CLASSES[(labels[i] + (n % 2)) % 3]  # some true labels, some deliberately different
            r = eng.correct(images[i], label)
            assert r.predicted == label and r.holds, r
            assert r.weight >= 1.0 and r.seconds > 0
        recs = {c.id: c for c in eng.list()}
        assert all(c.holds for c in recs.values())
        # reference: G + λD + Σ w φφᵀ solved from scratch equals the rank-one-updated head. The features
        # are the logged ones: a batched forward differs from a single image's by float32 rounding,
        # which this ill-conditioned system (cond ~1e10) would amplify past 1e-6
        # Each correction also has its local feature ψ (evo.active.local): the reference system is
        # [[G + λD, 0], [0, λ_ψ I]] + Σ w z zᵀ over z = [φ, 1, ψ(x)], with no ψ in the base statistics.
        graph, _, state = Run(run).load_version()
        st = sub_state("strategy", state)
        logged = CorrectionLog(run, write=False).features(1)
        ids = sorted(recs)
        assert eng._state.protos == tuple(ids)  # noqa: SLF001  (one local feature per correction, in order)
        feats = torch.from_numpy(np.stack([logged[c] for c in ids])).double()
        ln = local.normalised(feats)
        z = torch.cat([feats, torch.ones(len(ids), 1, dtype=torch.float64),
                       local.psi(ln, ln, eng.options.locality)], 1)
        w = torch.tensor([recs[c].weight for c in ids], dtype=torch.float64)
        y = torch.zeros(len(ids), len(eng.classes), dtype=torch.float64)
        y[torch.arange(len(ids)), [eng.classes.index(recs[c].label) for c in ids]] = 1.0
        d1 = st["head.gram"].shape[0]
        a = torch.zeros(len(z.T), len(z.T), dtype=torch.float64)
        a[:d1, :d1] = st["head.gram"] + torch.diag(torch.tensor([float(st["ridge"][0])] * (d1 - 1) + [0.0],
                                                                dtype=torch.float64))
        a[d1:, d1:] = eng.options.local_ridge * torch.eye(len(ids), dtype=torch.float64)
        b = torch.cat([st["head.xty"], torch.zeros(len(ids), len(eng.classes), dtype=torch.float64)])
        ref = torch.linalg.solve(a + z.T @ (w[:, None] * z), b + z.T @ (w[:, None] * y))
        assert (ref - eng.head_weight).abs().max() < 1e-6
        assert max(c.weight for c in recs.values()) < 5  # local features fix each image at a small weight
        # undo every correction in random order: back to the original head
        ids = list(recs)
        random.Random(0).shuffle(ids)
        for cid in ids:
            eng.undo(cid)
        assert (eng.head_weight - w0).abs().max() < 1e-6
        assert all(c.undone for c in eng.list())
        with pytest.raises(CorrectionError, match="already undone"):
            eng.undo(ids[0])
        with pytest.raises(CorrectionError, match="no correction 999"):
            eng.undo(999)


def test_restart_replays_the_log_exactly(run, pool):
    images, labels = pool
    with Corrections.open(run) as eng:
        for n, i in enumerate(_wrong(eng, images, labels, 6)):
            eng.correct(images[i], CLASSES[(labels[i] + 1) % 3], external_id=f"ann-{n}")
        eng.undo(2)
        before, version = eng.head_weight.clone(), eng.model_version
        records = eng.list()
    with Corrections.open(run, write=False) as eng:
        assert (eng.head_weight - before).abs().max() < 1e-9 and eng.model_version == version  # one solve vs steps
        assert [(c.id, c.weight, c.holds, c.undone) for c in eng.list()] == \
               [(c.id, c.weight, c.holds, c.undone) for c in records]
        assert eng.find("ann-3") == 4 and eng.find("ann-1") is None  # ann-1 is correction 2, undone
        with pytest.raises(CorrectionError, match="read-only"):
            eng.correct(images[0], "top")


def test_same_image_two_labels_is_a_named_conflict(run, pool):
    images, _ = pool
    with Corrections.open(run) as eng:
        a = eng.correct(images[0], "trouser")
        b = eng.correct(images[0], "pullover")  # the newest label wins; the earlier one is reported
        assert b.holds and b.predicted == "pullover"
        assert (b.id, a.id) in b.conflicts or (a.id, b.id) in b.conflicts
        assert a.id in b.broken
        held = {c.id: c.holds for c in eng.list()}
        assert held == {a.id: False, b.id: True}


def test_guard_reweights_a_flipped_correction(run, pool):
    """Near, not identical, images with different labels: the guard keeps both holding where it can."""
    images, labels = pool
    with Corrections.open(run) as eng:
        feats = eng.features(images[:200]).double()
        unit = feats / feats.norm(dim=1, keepdim=True)
        cos = unit @ unit.T
        cos.fill_diagonal_(-1)
        i, j = divmod(int(cos.argmax()), len(feats))  # the two most similar images, under the 0.99 duplicate line
        first = eng.correct(images[i], "trouser")
        second = eng.correct(images[j], "pullover")
        state = {c.id: c for c in eng.list()}
        assert second.holds
        # each earlier correction holds (re-weighted if it flipped) or is reported as a conflict naming the other
        assert state[first.id].holds or (first.id, second.id) in second.conflicts
        if state[first.id].weight > first.weight:
            assert state[first.id].holds


def test_new_label_adds_a_class_and_undo_restores_predictions(run, pool):
    images, _ = pool
    with Corrections.open(run) as eng:
        before, classes = [p.label for p in eng.predict(images[:50])], eng.classes
        r = eng.correct(images[0], "sneaker")
        assert eng.classes == [*classes, "sneaker"] and r.predicted == "sneaker" and r.holds
        assert eng.graph.classes == eng.classes and eng.graph.attrs(eng.graph.head)["out_features"] == 4
        eng.undo(r.id)
        assert [p.label for p in eng.predict(images[:50])] == before
    with Corrections.open(run, write=False) as eng:  # the class survives a restart
        assert eng.classes[-1] == "sneaker"


def test_graph_export_predicts_like_the_engine(run, pool):
    images, labels = pool
    with Corrections.open(run) as eng:
        for i in _wrong(eng, images, labels, 4):
            eng.correct(images[i], CLASSES[(labels[i] + 2) % 3])
        net = eng.graph.to_module().eval()
        x = torch.cat([eng.preprocess(im[None]) for im in images[:64]])
        with torch.inference_mode():
            got = net(x).argmax(1).tolist()
        assert got == [eng.classes.index(p.label) for p in eng.predict(images[:64])]


def test_bad_inputs_change_nothing(run, pool, tmp_path):
    images, _ = pool
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    (tmp_path / "nothing").mkdir()
    with Corrections.open(run) as eng:
        eng.correct(images[0], "trouser")
        w, version = eng.head_weight.clone(), eng.model_version
        for image, label, match in [(bad, "top", "unreadable"), (tmp_path / "none.png", "top", "does not exist"),
                                    (images[0].astype(np.float32), "top", "uint8"), (images[0], "", "empty"),
                                    (images[0], "a\nb", "control"), (images[0], "x" * 201, "201 characters"),
                                    (images[0], 5, "string")]:
            with pytest.raises(CorrectionError, match=match):
                eng.correct(image, label)
        with pytest.raises(CorrectionError, match="holds no images"):
            eng.suggest(tmp_path / "nothing", k=3)
        assert torch.equal(eng.head_weight, w) and eng.model_version == version and len(eng.list()) == 1


def test_suggest_strategies(run, pool):
    images, _ = pool
    with Corrections.open(run, write=False) as eng:
        proba = torch.softmax(eng.logits(eng.features(images)), 1)
        top2 = proba.topk(2, 1).values
        margin = (top2[:, 0] - top2[:, 1]).numpy()
        for strategy in ("margin", "entropy", "diverse", "random"):
            got = eng.suggest(images, k=10, strategy=strategy)
            idx = [s.index for s in got]
            assert len(set(idx)) == 10 and all(0 <= i < len(images) for i in idx)
        chosen = [s.index for s in eng.suggest(images, k=10, strategy="margin")]
        assert sorted(margin[chosen]) == pytest.approx(sorted(np.sort(margin)[:10]))
        diverse = [s.index for s in eng.suggest(images, k=10, strategy="diverse")]
        assert diverse[0] == chosen[0] and (margin[diverse] <= np.sort(margin)[49] + 1e-12).all()
        with pytest.raises(Exception, match="valid names"):
            eng.suggest(images, k=3, strategy="nope")


def test_from_learner_in_memory():
    import evo
    import evo.data

    stream = evo.data.class_incremental("fashion-mnist", increments=2, per_class_train=30, per_class_test=10, seed=0)
    learner = evo.Learner(evo.zoo.load("efficientnet_lite0", pretrained=True, input_size=32), progress=False)
    learner.learn(stream[0])
    eng = Corrections.from_learner(learner)
    img = stream[0].test.images[0]
    names = [c for c in learner.classes_ if c != eng.predict(img[None])[0].label]
    r = eng.correct(img, names[0])
    assert r.holds and r.id == 1 and eng.predict(img[None])[0].label == names[0]
    eng.undo(1)
    with pytest.raises(CorrectionError, match="already undone"):
        eng.undo(1)


_CHILD = """
import sys, numpy as np, torch
torch.set_num_threads(1)
from evo.active import Corrections
from active_helpers import fashion, CLASSES
images, labels = fashion("test")
eng = Corrections.open(sys.argv[1])
out = sys.argv[2]
for n in range(200):
    r = eng.correct(images[n], CLASSES[(labels[n] + 1) % 3])
    np.save(f"{out}/w_{r.id}.npy", eng.head_weight.numpy())
    print("ACK", r.id, flush=True)
"""


def test_kill_9_mid_correction_loses_no_acknowledged_correction(run, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent),
                                                        str(Path(__file__).parent)])}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(run), str(tmp_path)], stdout=subprocess.PIPE,
                             text=True, env=env)
    acked = []
    deadline = time.time() + 240
    while len(acked) < 8 and time.time() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        acked.append(int(line.split()[1]))
    time.sleep(random.Random(1).uniform(0.0, 0.03))  # land inside the next correction
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert len(acked) == 8, "the child did not acknowledge 8 corrections"
    with Corrections.open(run) as eng:
        live = [c.id for c in eng.list() if not c.undone]
        assert set(acked) <= set(live) and max(live) <= max(acked) + 1
        saved = tmp_path / f"w_{max(live)}.npy"
        if saved.exists():  # else the kill fell between the commit and the child's own save
            assert (eng.head_weight - torch.from_numpy(np.load(saved))).abs().max() < 1e-6
        # and the run still takes corrections after the kill
        assert eng.correct(fashion("test")[0][300], "top").holds


def test_live_corrections_follow_a_new_committed_version(run, pool):
    images, labels = pool
    with Corrections.open(run) as eng:
        ids = [eng.correct(images[i], CLASSES[(labels[i] + 1) % 3]).id for i in range(3)]
        eng.undo(ids[1])
        before = [p.label for p in eng.predict(images[:40])]
    r = Run(run)
    graph, meta, state = r.load_version()
    meta = {k: v for k, v in meta.items() if k not in ("version", "parent", "created")}
    r.commit_version(graph, {**meta, "chosen": "same model, next round"}, state=state)  # a search round commits
    with Corrections.open(run) as eng:
        assert eng.model_version.startswith("v2+c")
        live = {c.id: c for c in eng.list() if not c.undone}
        assert set(live) == {ids[0], ids[2]} and all(c.holds for c in live.values())
        assert [p.label for p in eng.predict(images[:40])] == before
        eng.undo(ids[2])  # undo works on the re-applied correction
    with Corrections.open(run, write=False, version=1) as eng:  # version 1 as it was
        assert {c.id for c in eng.list() if not c.undone} == {ids[0]}


def test_dependencies_point_one_way():
    """evo.active imports evo.learn, never the reverse; and never evo.search or evo.serve."""
    import re

    root = Path(__file__).resolve().parents[1] / "evo"

    def imports(f: Path) -> set[str]:
        return set(re.findall(r"^\s*(?:from|import)\s+(evo\.\w+)", f.read_text(), flags=re.M))

    for f in (root / "learn").rglob("*.py"):
        assert "evo.active" not in imports(f), f
    for f in (root / "active").rglob("*.py"):
        assert not imports(f) & {"evo.search", "evo.serve", "evo.cli"}, f


def _more_data(tmp_path: Path, offset: int, n: int = 30) -> Path:
    images, labels = fashion("train")
    idx = np.concatenate([np.nonzero(labels == c)[0][offset:offset + n] for c in range(3)])
    return write_folder(tmp_path / f"more{offset}", images[idx], labels[idx])


def test_next_version_learns_the_corrections_and_forgets_undone_ones(run, pool, tmp_path):
    """`evo learn RUN` learns the live corrections with its data: the version lists their ids, the memory
    keeps them first, the engine on it counts each as a weight-1 sample already in the statistics
    (topped up until it holds), and an undo there is the exact downdate of the version's own solve.
    The next round forgets an undone one: out of the memory and out of the statistics."""
    from evo.learn_run import learn_from_data

    images, labels = pool
    with Corrections.open(run) as eng:
        ids = [eng.correct(images[i], CLASSES[(labels[i] + 1) % 3]).id for i in _wrong(eng, images, labels, 3)]
    learn_from_data(str(run), _more_data(tmp_path, 1000), progress=False, say=lambda _: None)
    r = Run(run)
    meta = r.version_meta(2)
    assert meta["corrections"] == ids and meta["corrections_size"] == [32, 32]
    _, _, state = r.load_version(2)
    mem_keys = state["memory.keys"].numpy()
    assert (mem_keys < 0).sum() == 3  # the three corrections, kept first in memory
    with Corrections.open(run) as eng:
        live = {c.id: c for c in eng.list() if not c.undone}
        assert set(live) == set(ids) and all(c.holds for c in live.values())
        assert all(c.weight >= 1.0 for c in live.values())  # learned at weight 1, topped up by the guard
        victim = eng._state.live[ids[0]]  # noqa: SLF001  (its features and label index, as the head sees them)
        eng.undo(ids[0])
        w_after = eng.head_weight.clone()
        others = {i: eng._state.live[i] for i in ids[1:]}  # noqa: SLF001
    # the exact reference: the version's statistics less the three learned samples, then the two live
    # ones at their full weight over z = [φ, 1, ψ] (their local features; evo.active.local)
    graph, _, state = r.load_version(2)
    st = sub_state("strategy", state)
    head = head_taps(graph)
    gram, xty = apply_map(head_map(graph, head, from_meta(graph) or head), st["head.gram"].double(),
                          st["head.xty"].double())
    d1, m, c = gram.shape[0], len(others), xty.shape[1]
    a = torch.zeros(d1 + m, d1 + m, dtype=torch.float64)
    a[:d1, :d1] = gram + torch.diag(torch.tensor([float(st["ridge"][0])] * (d1 - 1) + [0.0], dtype=torch.float64))
    a[d1:, d1:] = torch.eye(m, dtype=torch.float64)  # local_ridge 1
    b = torch.cat([xty, torch.zeros(m, c, dtype=torch.float64)])
    lns = torch.stack([e.ln for e in others.values()])
    for e in [victim, *others.values()]:  # out of the base statistics: the learned weight-1 samples
        y = torch.zeros(c, dtype=torch.float64)
        y[e.label] = 1.0
        a[:d1, :d1] -= torch.outer(e.phi, e.phi)
        b[:d1] -= torch.outer(e.phi, y)
    for e in others.values():
        z = torch.cat([e.phi, local.psi(e.ln[None], lns, 0.9)[0]])
        y = torch.zeros(c, dtype=torch.float64)
        y[e.label] = 1.0
        a, b = a + e.weight * torch.outer(z, z), b + e.weight * torch.outer(z, y)
    ref = torch.linalg.solve(a, b)
    assert float((ref - w_after).abs().max()) <= 1e-6 * max(1.0, float(ref.abs().max()))
    # the next round forgets the undone correction and keeps the others
    learn_from_data(str(run), _more_data(tmp_path, 2000), progress=False, say=lambda _: None)
    assert r.version_meta(3)["corrections"] == ids[1:]
    _, _, state3 = r.load_version(3)
    assert (state3["memory.keys"].numpy() < 0).sum() == 2
    n2, n3 = sub_state("strategy", state)["head.n_samples"], sub_state("strategy", state3)["head.n_samples"]
    assert int(n3) == int(n2) - 1 + 72  # minus the undone sample, plus the new data (90 less 20 % held out)
    with Corrections.open(run) as eng:
        assert {c.id for c in eng.list() if not c.undone} == set(ids[1:])
        assert all(c.holds for c in eng.list() if not c.undone)
