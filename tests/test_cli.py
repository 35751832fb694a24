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
