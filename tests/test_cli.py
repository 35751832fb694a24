"""The `evo` command: output a person can read, and exit code 2 with one line for bad input."""

from __future__ import annotations

import subprocess
import sys

import evo
import evo.graph as eg
from evo.cli import main


def test_inspect_zoo_model_lists_summary_and_sites(capsys):
    assert main(["inspect", "small_cnn", "--no-layers"]) == 0
    out = capsys.readouterr().out
    assert "17,786 parameters" in out
    for op in evo.ops.list_ops():
        assert op in out
    assert "group=" in out


def test_inspect_saved_folder_prints_layers(tmp_path, capsys):
    eg.save(evo.zoo.load("small_cnn"), tmp_path / "m")
    assert main(["inspect", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "classifier" in out and "linear" in out and "MFLOPs" in out


def test_bad_model_exits_2_with_one_line():
    proc = subprocess.run([sys.executable, "-m", "evo.cli", "inspect", "no_such_model"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no_such_model" in lines[0] and "efficientnet_lite0" in lines[0]
    assert "Traceback" not in proc.stderr


def test_corrupt_folder_exits_2(tmp_path, capsys):
    eg.save(evo.zoo.load("small_cnn"), tmp_path / "m")
    (tmp_path / "m" / "weights.safetensors").write_bytes(b"garbage")
    assert main(["inspect", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "weights.safetensors" in err and len(err.strip().splitlines()) == 1


def _digit_folder(root, labels, corrupt=False):
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for i, (img, lab) in enumerate(zip(d.images[:400], d.target[:400], strict=True)):
        if lab in labels:
            (root / f"d{lab}").mkdir(parents=True, exist_ok=True)
            Image.fromarray((img * 15).astype(np.uint8)).resize((32, 32)).save(root / f"d{lab}" / f"{i}.png")
    if corrupt:
        (root / f"d{labels[0]}" / "broken.png").write_bytes(b"not a png")
    return root


def test_learn_commits_versions_from_user_folders(tmp_path, capsys):
    from evo.runs import Run

    first = _digit_folder(tmp_path / "a", [0, 1, 2], corrupt=True)
    second = _digit_folder(tmp_path / "b", [3, 4])
    assert main(["learn", "small_cnn", "--data", str(first), "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 0
    assert "skipped 1 file(s)" in capsys.readouterr().out
    assert main(["learn", str(tmp_path / "run"), "--data", str(second), "--no-progress"]) == 0
    run = Run.open(tmp_path / "run")
    assert run.versions() == [0, 1, 2]
    meta = run.version_meta(2)
    assert meta["classes"] == ["d0", "d1", "d2", "d3", "d4"] and meta["parent"] == 1
    assert meta["metrics"]["accuracy"] > 0.5 and meta["cost"]["flops"] > 0
    assert main(["learn", str(tmp_path / "run"), "--data", str(tmp_path / "missing")]) == 2
    assert run.versions() == [0, 1, 2]  # bad input commits nothing


def test_status_and_help_answer_without_importing_torch(tmp_path):
    """Reading a run's status (and the help) is JSON work: importing torch would cost it seconds."""
    from evo.runs import Run

    run = Run.create(tmp_path / "r", {})
    run.commit_version(evo.zoo.load("small_cnn"), {"ops": [], "increment": None, "chosen": "initial model"})
    code = ("import sys\nfrom evo.cli import main\n"
            "for argv in (['status', sys.argv[1]], ['--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(run.path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False", proc.stdout
    assert "v0 ← start: initial model" in proc.stdout


def test_learn_refuses_bad_input_without_importing_torch(tmp_path):
    """A typo'd --data, a bad --memory or an unknown --strategy: one line, exit code 2, no seconds spent importing
    torch; the strategy names it checks against are the registered ones."""
    data = _digit_folder(tmp_path / "d", [0, 1])
    bad = [["--data", str(tmp_path / "missing")], ["--data", str(data), "--memory", "0"],
           ["--data", str(data), "--strategy", "magic"]]
    code = ("import sys\nfrom evo.cli import main\n"
            f"codes = [main(['learn', 'small_cnn', '--run-dir', sys.argv[1], *args]) for args in {bad!r}]\n"
            "print(codes, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.strip() == "[2, 2, 2] False", proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 3 and "Traceback" not in proc.stderr, proc.stderr
    for line, needle in zip(lines, ["missing", "memory (exemplar images) must be an integer >= 1", "valid names: evo, "], strict=True):
        assert line.startswith("evo learn: error: ") and needle in line, line
    assert not (tmp_path / "run").exists()
    from evo.learn import STRATEGIES
    from evo.learn_run import BUILTIN_STRATEGIES

    assert list(BUILTIN_STRATEGIES) == STRATEGIES.names()
