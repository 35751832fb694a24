"""`evo predict / correct / undo / corrections / suggest` on a real run: readable output, and for every
bad input of issue 10 one line with exit code 2 and nothing changed (log and model)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from active_helpers import CLASSES, LiveImages, copy_run, fashion, make_run, write_folder

from evo.cli import main


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("active_cli")
    make_run(root)
    images, labels = fashion("test")
    write_folder(root / "pool", images[:30], None)
    return root


@pytest.fixture
def run(base, tmp_path) -> Path:
    return copy_run(base / "run", tmp_path / "run")


def _digest(run: Path, pool: Path, capsys) -> str:
    """The run's corrections and model as `evo corrections` and `evo predict --json` show them."""
    capsys.readouterr()
    assert main(["corrections", str(run)]) == 0
    assert main(["predict", str(run), str(pool), "--json"]) == 0
    return hashlib.sha256(capsys.readouterr().out.encode()).hexdigest()


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def test_predict_correct_list_undo(run, base, capsys):
    img = sorted((base / "pool").glob("*.png"))[0]
    assert main(["predict", str(run), str(img), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (pred,) = doc["predictions"]
    assert doc["model_version"] == "v1" and len(pred["top"]) == 3 and pred["label"] in CLASSES
    target = next(c for c in CLASSES if c != pred["label"])
    assert main(["correct", str(run), str(img), "--label", target]) == 0
    out = capsys.readouterr().out
    assert f"correction 1: {img} {pred['label']} -> {target}, now predicted {target}" in out and " ms " in out
    assert "earlier corrections: 0/0 hold" in out
    assert main(["predict", str(run), str(base / "pool")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 30 and lines[0].split("\t")[1] == target
    assert main(["corrections", str(run)]) == 0
    out = capsys.readouterr().out
    assert "1 correction(s) [v1+c1]" in out and f"{pred['label']} -> {target}" in out and "holds" in out
    assert main(["undo", str(run), "1"]) == 0
    assert "undid correction 1" in capsys.readouterr().out
    assert main(["predict", str(run), str(img), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["label"] == pred["label"]
    assert main(["suggest", str(run), "--pool", str(base / "pool"), "-k", "5", "--strategy", "diverse"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 5


def test_every_bad_input_is_one_line_exit_2_and_changes_nothing(run, base, tmp_path, capsys):
    img = str(sorted((base / "pool").glob("*.png"))[0])
    assert main(["correct", str(run), img, "--label", CLASSES[0]]) == 0
    assert main(["undo", str(run), "1"]) == 0
    capsys.readouterr()
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "empty").mkdir()
    before = _digest(run, base / "pool", capsys)
    cases = [
        (["correct", str(run), str(corrupt), "--label", "top"], "unreadable or corrupt"),
        (["correct", str(run), str(tmp_path / "missing.png"), "--label", "top"], "does not exist"),
        (["correct", str(run), img, "--label", ""], "label is empty"),
        (["correct", str(run), img, "--label", "  "], "label is empty"),
        (["correct", str(run), img, "--label", "a\x1bb"], "control characters"),
        (["correct", str(run), img, "--label", "x" * 201], "at most 200"),
        (["undo", str(run), "42"], "no correction 42"),
        (["undo", str(run), "1"], "already undone"),
        (["correct", str(tmp_path), img, "--label", "top"], "not an evo run folder"),
        (["predict", str(tmp_path), img], "not an evo run folder"),
        (["suggest", str(run), "--pool", str(tmp_path / "empty")], "holds no images"),
        # the 2026-12-04 sweep of this surface: each was a traceback
        (["undo", str(run), "99999999999999999999999"], "no correction 99999999999999999999999"),
        (["undo", str(run), "-3"], "positive integer"),
        (["suggest", str(run), "--pool", str(base / "pool"), "--seed", "-1"], "--seed"),
        (["predict", str(run), img, "--strip", str(tmp_path / "no" / "such" / "s.png")], "does not exist"),
    ]
    for argv, message in cases:
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own refusals exit from inside main
            code = e.code
        assert code == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
    assert _digest(run, base / "pool", capsys) == before


_HOLDER = """
import sys, time
from evo.runs import Run
with Run(sys.argv[1]).lock("launch"):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_correct_during_a_search_round_is_refused(run, base, capsys):
    img = str(sorted((base / "pool").glob("*.png"))[0])
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run)], stdout=subprocess.PIPE, text=True,
                              env=_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _digest(run, base / "pool", capsys)
        proc = subprocess.run([sys.executable, "-m", "evo.cli", "correct", str(run), img, "--label", "top"],
                              capture_output=True, text=True, env=_env())
        assert proc.returncode == 2 and f"pid {holder.pid}" in proc.stderr and "launch" in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1
        assert _digest(run, base / "pool", capsys) == before
    finally:
        holder.kill()
        holder.wait()
    proc = subprocess.run([sys.executable, "-m", "evo.cli", "correct", str(run), img, "--label", "top"],
                          capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, proc.stderr  # the lock of a dead holder is free again


def test_a_damaged_corrections_log_is_one_line_and_left_alone(run, base, tmp_path, capsys):
    """A corrections.sqlite that is not ours (garbage, or another program's database) stops every command
    that reads it with one line, exit 2, and stays byte for byte as it was."""
    import sqlite3

    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE notes (text)")
    for content in (b"not a database at all", foreign.read_bytes()):
        (run / "corrections.sqlite").write_bytes(content)
        for argv in (["corrections", str(run)], ["predict", str(run), str(base / "pool")],
                     ["learn", str(run), "--data", str(base / "data"), "--allow-duplicates", "--no-progress"]):
            capsys.readouterr()
            assert main(argv) == 2, argv
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "corrections.sqlite is not a readable corrections log" in err[0], err
        assert (run / "corrections.sqlite").read_bytes() == content


def test_learn_from_a_builtin_dataset_resizes_to_the_model(tmp_path, capsys):
    """`evo learn MODEL --data builtin:digits`: a built-in source that cannot resize is resized after reading."""
    assert main(["learn", "small_cnn", "--data", "builtin:digits", "--run-dir", str(tmp_path / "r"),
                 "--no-progress"]) == 0
    assert "held-out accuracy" in capsys.readouterr().out


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_reading_commands_write_nothing_and_a_refused_correction_leaves_no_file(run, base, tmp_path, capsys):
    """`corrections`, `predict`, `suggest` and `report` elsewhere read the run; they used to leave SQLite's
    -wal/-shm files beside a log kept in WAL mode (and failed on a read-only folder). A refused `correct`
    used to create the log and its settings before the image was checked."""
    img = str(sorted((base / "pool").glob("*.png"))[0])
    (tmp_path / "zero.png").write_bytes(b"")
    before = _tree(run)
    assert main(["correct", str(run), str(tmp_path / "zero.png"), "--label", CLASSES[0]]) == 2
    assert main(["undo", str(run), "7"]) == 2  # opens the log for writing, then finds no correction 7
    assert _tree(run) == before and not (run / "corrections.sqlite").exists()
    assert main(["correct", str(run), img, "--label", CLASSES[1]]) == 0
    before = _tree(run)
    assert not [n for n in before if n.startswith("corrections.sqlite-")]  # the writer left it at rest
    for argv in (["corrections", str(run)], ["predict", str(run), img], ["status", str(run)],
                 ["suggest", str(run), "--pool", str(base / "pool"), "-k", "3"],
                 ["report", str(run), "--no-predict", "--out", str(tmp_path / "rep")]):
        assert main(argv) == 0, argv
        assert _tree(run) == before, argv


@pytest.mark.parametrize("damage", ["truncated meta", "meta list", "meta classes 5", "truncated state",
                                    "truncated graph"])
def test_a_damaged_version_file_is_one_line_for_every_reader(run, base, tmp_path, capsys, damage):
    img = str(sorted((base / "pool").glob("*.png"))[0])
    v = run / "versions" / "1"
    target, content = {"truncated meta": ("meta.json", (v / "meta.json").read_bytes()[:40]),
                       "meta list": ("meta.json", b"[]"),
                       "meta classes 5": ("meta.json", b'{"classes": 5}'),
                       "truncated state": ("state.safetensors", (v / "state.safetensors").read_bytes()[:100]),
                       "truncated graph": ("graph.json", (v / "graph.json").read_bytes()[:100])}[damage]
    (v / target).write_bytes(content)
    before = _tree(run)
    for argv in (["status", str(run)], ["corrections", str(run)], ["predict", str(run), img],
                 ["correct", str(run), img, "--label", CLASSES[0]],
                 ["report", str(run), "--no-predict", "--out", str(tmp_path / "rep")]):
        if (damage == "truncated state" and argv[0] in ("status", "report")) or (damage == "truncated graph"
                                                                                and argv[0] == "status"):
            continue  # status reads neither file, and report --no-predict runs no model
        capsys.readouterr()
        assert main(argv) == 2, (damage, argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Traceback" not in err[0] and target in err[0], (damage, argv, err)
    assert _tree(run) == before


def test_the_initial_version_and_an_unwritable_run_are_named(run, base, capsys):
    img = str(sorted((base / "pool").glob("*.png"))[0])
    assert main(["predict", str(run), img, "--version", "0"]) == 2
    assert "before any learning" in capsys.readouterr().err
    (run / ".evo-lock").unlink(missing_ok=True)
    (run / ".evo-lock").mkdir()  # cannot be opened for writing, as in a read-only folder (tests run as root)
    try:
        assert main(["correct", str(run), img, "--label", CLASSES[0]]) == 2
        err = capsys.readouterr().err
        assert "cannot be written" in err and err.count("\n") == 1, err
    finally:
        (run / ".evo-lock").rmdir()


def test_a_busy_log_is_named_busy_not_damaged(run, base, monkeypatch):
    """At rest the log is in rollback mode, so a writer's switch to WAL waits for readers; past the wait it
    is 'busy, run it again', never the damaged-log advice to move it away (which would drop corrections)."""
    import sqlite3

    import evo.active.log as log_module
    from evo.active.errors import CorrectionError
    from evo.active.log import CorrectionLog

    img = str(sorted((base / "pool").glob("*.png"))[0])
    assert main(["correct", str(run), img, "--label", CLASSES[1]]) == 0
    monkeypatch.setattr(log_module, "BUSY_MS", 200)
    reader = sqlite3.connect(run / "corrections.sqlite", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM corrections").fetchone()  # a read transaction holds its shared lock
    try:
        with pytest.raises(CorrectionError, match="is busy") as e:
            CorrectionLog(run, write=True)
        assert "move it away" not in str(e.value)
    finally:
        reader.execute("COMMIT")
        reader.close()
    CorrectionLog(run, write=True).close()  # free again


def test_predict_and_suggest_on_a_folder_hold_one_decoded_image_at_a_time(run, base, capsys, monkeypatch):
    """A folder of large photos must not be decoded into memory all at once (it was: 30 here, thousands
    in a real pool); each image is shrunk to the model's input before the next is read."""
    import evo.active.engine as engine
    import evo.active.images as images

    live = LiveImages(images.as_image)
    monkeypatch.setattr(engine, "as_image", live)
    monkeypatch.setattr(images, "as_image", live)
    assert main(["predict", str(run), str(base / "pool"), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["predictions"]) == 30
    assert main(["suggest", str(run), "--pool", str(base / "pool"), "-k", "5"]) == 0
    assert len(live.refs) == 60 and live.most == 0
