"""Run tables, figures, `evo report` and the notebooks, on real run folders written by `evo launch` and `evo learn`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_cli import _digit_folder
from test_search import ROOT, TINY

from evo import analysis
from evo.cli import main
from evo.report import REPORT_MARKER, ReportError, write_report
from evo.runs import RunError

FIGURES = {"lineage.png", "architecture.png", "accuracy_matrix.png", "forgetting.png", "candidates.png", "spend.png",
           "confusion.png"}


@pytest.fixture(scope="module")
def run_dir(ray_cluster, tmp_path_factory):
    from evo.search.launch import launch

    tmp = tmp_path_factory.mktemp("analysis")
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump(TINY))
    launch(space, run_dir=tmp / "run", say=lambda s: None)
    return tmp / "run"


@pytest.fixture(scope="module")
def preds(run_dir):
    return analysis.predictions(run_dir)


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")}


def test_tables_describe_versions_lineage_and_architecture(run_dir):
    data = analysis.load_run(run_dir)
    assert isinstance(data.versions, pd.DataFrame) and list(data.versions["version"]) == [0, 1, 2]
    assert (data.versions["depth"] >= 3).all() and data.versions["params"].notna().all()
    assert list(zip(data.lineage["parent"], data.lineage["child"], strict=True)) == [(0, 1), (1, 2)]
    v = data.versions.set_index("version")
    assert (data.lineage["params_added"] == [v.loc[1, "params"] - v.loc[0, "params"],
                                             v.loc[2, "params"] - v.loc[1, "params"]]).all()
    arch = data.architecture
    head = arch[arch["layer"] == arch.loc[arch["position"].idxmax(), "layer"]].set_index("version")["width"]
    assert list(head) == [10, 5, 10]  # v0's placeholder head, then the classes of each increment
    assert arch.groupby("version")["position"].apply(lambda p: p.is_monotonic_increasing).all()


def test_candidates_mark_chosen_feasible_front_and_failures(run_dir):
    trials, rounds = analysis.trials(run_dir), analysis.rounds(run_dir)
    assert list(rounds["round"]) == [0, 1] and (rounds["spent_flops"] <= rounds["budget_flops"]).all()
    assert (trials.groupby("round")["chosen"].sum() == 1).all()
    assert trials.loc[trials["chosen"], "feasible"].all()
    for _, part in trials[trials["feasible"]].groupby("round"):
        front = part[part["front"]]
        assert len(front) >= 1
        for _, r in front.iterrows():  # nothing dominates a front point
            assert not ((part["val_accuracy"] > r["val_accuracy"]) & (part["flops"] <= r["flops"])).any()
        best = part["val_accuracy"].max()
        assert front["val_accuracy"].max() == best
    failed = analysis.failed(trials)
    assert len(failed) == (trials["state"] != "COMPLETE").sum() and failed["fail_reason"].notna().all()


def test_predictions_reproduce_the_runs_recorded_accuracies(run_dir, preds):
    """The rebuilt test split and the per-version predictions agree with what the run recorded."""
    p, how = preds
    assert "rebuilt from config.json" in how
    matrix = analysis.accuracy_matrix(run_dir)
    assert matrix.shape == (2, 2) and np.isnan(matrix.loc[0, 1])
    run = analysis.open_run(run_dir)
    for n in (1, 2):
        meta = run.version_meta(n)
        mine = p[p["version"] == n]
        known = mine[mine["truth"].isin(meta["classes"])]
        assert (known["truth"] == known["predicted"]).mean() == pytest.approx(meta["metrics"]["accuracy"])
    conf = analysis.confusion(p)
    assert conf.to_numpy().sum() == (p["version"] == 2).sum()
    assert np.trace(conf.to_numpy()) / conf.to_numpy().sum() == pytest.approx(run.version_meta(2)["metrics"]["accuracy"])
    acc = analysis.per_class_accuracy(run_dir, p)
    first = run.version_meta(1)["classes"]
    assert acc.loc[1, first].mean() == pytest.approx(matrix.loc[0, 0])  # equal test images per class
    assert acc.loc[2, first].mean() == pytest.approx(matrix.loc[1, 0])
    assert acc.loc[1].isna().sum() == 5
    forget = analysis.forgetting_per_class(acc)
    assert set(forget["class"]) == set(first)
    assert np.allclose(forget["forgetting"], forget["best"] - forget["final"])


def test_reading_a_run_writes_nothing(run_dir, preds):
    before = _tree(run_dir)
    analysis.load_run(run_dir)
    analysis.predictions(run_dir, [2])
    analysis.corrections(run_dir)
    assert _tree(run_dir) == before


def test_load_run_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(RunError, match="not an evo run folder"):
        analysis.load_run(tmp_path)


def test_report_writes_page_pngs_and_summary_elsewhere_without_touching_the_run(run_dir, tmp_path):
    before = _tree(run_dir)
    out = write_report(run_dir, out=tmp_path / "rep", say=lambda s: None)
    assert _tree(run_dir) == before
    files = {p.name for p in out.iterdir()}
    assert files == FIGURES | {"index.html", "summary.md", REPORT_MARKER}  # the marker lists what evo wrote
    assert set(json.loads((out / REPORT_MARKER).read_text())["files"]) == files - {REPORT_MARKER}
    page = (out / "index.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(FIGURES) and "http" not in page.replace(
        "http-equiv", "")
    assert "duplicate of trial" in page  # the failed candidates are listed with their reason
    summary = (out / "summary.md").read_text()
    assert "latest v2: test accuracy" in summary
    assert "rebuilt from config.json" in summary and "TFLOPs spent" in summary
    from PIL import Image

    for name in FIGURES:
        with Image.open(out / name) as im:
            assert im.size[0] > 300 and im.size[1] > 200


def _make_corrections(run: Path) -> None:
    """Four corrections, one undone: through the corrections engine where it is installed, else as
    rows in the log's SQLite schema (evo/active/log.py)."""
    try:
        from evo.active import Corrections
    except ImportError:
        with contextlib.closing(sqlite3.connect(run / "corrections.sqlite")) as db, db:
            db.execute("CREATE TABLE corrections (id INTEGER PRIMARY KEY AUTOINCREMENT, created TEXT NOT NULL, "
                       "image_sha256 TEXT NOT NULL, image_png BLOB NOT NULL, previous TEXT NOT NULL, label TEXT "
                       "NOT NULL, source TEXT NOT NULL, external_id TEXT, version INTEGER NOT NULL, undone TEXT)")
            db.executemany("INSERT INTO corrections VALUES (?,?,?,?,?,?,?,?,?,?)",
                           [(i, f"2026-12-01T10:0{i}:00", "ab" * 32, b"", "digit-1", "digit-7", "python", None, 2,
                             "2026-12-01T11:00:00" if i == 3 else None) for i in range(1, 5)])
        return
    test, _ = analysis.test_split(run)
    with Corrections.open(run) as eng:
        ids = [eng.correct(test.images[i], test.classes[(test.labels[i] + 1) % len(test.classes)]).id
               for i in range(4)]
        eng.undo(ids[2])


def test_cli_report_default_folder_replace_and_refusals(run_dir, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(run_dir, run)
    _make_corrections(run)
    log = analysis.corrections(run)
    assert len(log) == 4 and log["undone"].sum() == 1 and log["created"].is_monotonic_increasing
    assert main(["report", str(run), "--no-predict"]) == 0
    files = {p.name for p in (run / "report").iterdir()}
    assert "corrections.png" in files and "confusion.png" not in files
    assert "per increment" in (run / "report" / "index.html").read_text()  # no per-class data: says so
    assert main(["report", str(run)]) == 0  # replaces its own earlier report
    assert {"confusion.png", "corrections.png"} <= {p.name for p in (run / "report").iterdir()}
    assert not [p for p in run.iterdir() if p.name.startswith(".report")]  # no temp folder left
    capsys.readouterr()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ReportError):
        write_report(run, out=tmp_path / "mine", say=lambda s: None)
    assert main(["report", str(run), "--out", str(tmp_path / "mine")]) == 2
    err = capsys.readouterr().err
    assert "not an evo report folder" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert main(["report", str(tmp_path / "mine")]) == 2


def test_report_replaces_only_a_folder_evo_wrote_and_names_an_unwritable_one(run_dir, tmp_path, capsys):
    """A folder that merely looks like a report (index.html, summary.md, other .png/.md files) is a user's:
    replacing it deleted their files (sweep, 2026-12-04). Evo's marker must list exactly what is there."""
    site = tmp_path / "mysite"
    site.mkdir()
    for name, text in {"index.html": "<h1>home</h1>", "summary.md": "notes", "thesis.md": "important",
                       "family_photo.png": "png"}.items():
        (site / name).write_text(text)
    assert main(["report", str(run_dir), "--no-predict", "--out", str(site)]) == 2
    assert "not an evo report folder" in capsys.readouterr().err
    assert {p.name for p in site.iterdir()} == {"index.html", "summary.md", "thesis.md", "family_photo.png"}
    out = tmp_path / "rep"
    assert main(["report", str(run_dir), "--no-predict", "--out", str(out)]) == 0
    assert main(["report", str(run_dir), "--no-predict", "--out", str(out)]) == 0  # its own: replaced
    (out / "notes.md").write_text("added by the user")
    assert main(["report", str(run_dir), "--no-predict", "--out", str(out)]) == 2
    assert (out / "notes.md").read_text() == "added by the user"
    (tmp_path / "afile").write_text("x")
    capsys.readouterr()
    for bad in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        assert main(["report", str(run_dir), "--no-predict", "--out", str(bad)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and str(bad) in err
    assert (tmp_path / "afile").read_text() == "x"


def test_a_file_saved_into_the_report_folder_while_it_is_built_is_kept(run_dir, tmp_path, monkeypatch):
    """The build runs for minutes between the marker's check and the swap: a file saved meanwhile is not
    evo's, so the old folder is checked again once moved aside, and put back (review of the marker)."""
    import evo.report

    out = tmp_path / "rep"
    write_report(run_dir, out=out, predict=False, say=lambda s: None)
    build = evo.report._build

    def build_and_save(*args, **kwargs):
        (out / "my-notes.txt").write_text("written during the build")
        return build(*args, **kwargs)

    monkeypatch.setattr(evo.report, "_build", build_and_save)
    with pytest.raises(ReportError, match="not an evo report folder"):
        write_report(run_dir, out=out, predict=False, say=lambda s: None)
    assert (out / "my-notes.txt").read_text() == "written during the build" and (out / "index.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]  # no staging or moved-aside folder left


def test_report_on_an_evo_learn_run(tmp_path):
    """A run made by `evo learn` from folders: no scenario, so the held-out split of its latest data is used."""
    first = _digit_folder(tmp_path / "a", [0, 1, 2])
    second = _digit_folder(tmp_path / "b", [3, 4])
    run = tmp_path / "run"
    assert main(["learn", "small_cnn", "--data", str(first), "--run-dir", str(run), "--no-progress"]) == 0
    assert main(["learn", str(run), "--data", str(second), "--no-progress"]) == 0
    p, how = analysis.predictions(run)
    assert "held-out split" in how and set(p["truth"]) == {"d3", "d4"}
    latest = p[p["version"] == 2]
    meta = analysis.open_run(run).version_meta(2)
    assert (latest["truth"] == latest["predicted"]).mean() == pytest.approx(meta["metrics"]["accuracy"])
    out = write_report(run, say=lambda s: None)
    assert {"lineage.png", "architecture.png", "confusion.png", "index.html", "summary.md"} <= {
        x.name for x in out.iterdir()}


def _execute(name: str, env: dict[str, str]):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(ROOT / "analysis" / name, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                                resources={"metadata": {"path": str(ROOT / "analysis")}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs)
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    return text, images


def test_run_report_notebook_executes_and_draws(run_dir):
    before = _tree(run_dir)
    text, images = _execute("run_report.ipynb", {"EVO_RUN": str(run_dir)})
    assert "3 versions" in text and "rebuilt from config.json" in text and images >= 7
    assert _tree(run_dir) == before


def test_compare_notebook_executes_and_draws():
    measured = ROOT / "benchmarks" / "peers" / "results" / "peers.json"
    text, images = _execute("compare.ipynb", {})
    assert images == 1
    if not measured.is_file():
        assert "EXAMPLE" in text and "peers_example.json" in text


def test_report_page_renders_in_headless_chromium(run_dir, tmp_path):
    """The page opens in a real browser with no console errors, and every image decodes."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path("/usr/bin/chromium").is_file():
        pytest.skip("Debian's chromium is not installed (.ci/setup installs it)")
    out = write_report(run_dir, out=tmp_path / "rep", say=lambda s: None)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((out / "index.html").as_uri())
            page.wait_for_load_state("load")
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
            assert page.title().startswith("evo report")
        finally:
            browser.close()
    assert errors == []
    assert len(images) == len(FIGURES) and all(done and width > 0 for done, width in images)


def test_report_on_a_run_that_has_learned_nothing_yet(run_dir, tmp_path):
    run = tmp_path / "new"
    (run / "versions").mkdir(parents=True)
    shutil.copy(run_dir / "config.json", run)
    shutil.copytree(run_dir / "versions" / "0", run / "versions" / "0")
    out = write_report(run, say=lambda s: None)
    assert {p.name for p in out.iterdir()} == {"lineage.png", "architecture.png", "index.html", "summary.md",
                                               REPORT_MARKER}
    assert "has not learned an increment yet" in (out / "summary.md").read_text()
