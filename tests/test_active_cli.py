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
from active_helpers import CLASSES, copy_run, fashion, make_run, write_folder

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
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
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
