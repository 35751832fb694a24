"""Run folders: immutable versions, derived lineage, refusal to overwrite, recovery after a crash."""

from __future__ import annotations

import json
import os

import pytest
import torch

import evo
from evo.runs import Run, RunError


def test_commit_versions_and_lineage(tmp_path):
    run = Run.create(tmp_path / "r", {"space": "x"})
    g = evo.zoo.load("small_cnn")
    v0 = run.commit_version(g, {"increment": None, "ops": [], "metrics": {"accuracy": 0.5}})
    child = evo.ops.apply(g, "add_classes", k=1)
    v1 = run.commit_version(child, {"increment": 0, "ops": child.meta["history"], "metrics": {"accuracy": 0.7},
                                    "cost": {"flops": 123, "seconds": 1.5}}, state={"memory.labels": torch.arange(3)})
    assert (v0, v1) == (0, 1)
    lineage = json.loads((run.path / "lineage.json").read_text())
    assert [e["source"] for e in lineage["edges"]] == [0] and lineage["edges"][0]["ops"][0]["op"] == "add_classes"
    graph, meta, state = run.load_version()
    assert meta["version"] == 1 and meta["parent"] == 0 and torch.equal(state["memory.labels"], torch.arange(3))
    assert graph.classes == child.classes
    rows = run.rounds_table()
    assert [r["version"] for r in rows] == [0, 1] and rows[1]["flops"] == 123
    assert (run.path / "metrics" / "rounds.csv").read_text().splitlines()[2].startswith("1,0,0,")


def test_existing_run_folder_is_refused_with_resume_hint(tmp_path):
    Run.create(tmp_path / "r", {})
    with pytest.raises(RunError, match="evo resume"):
        Run.create(tmp_path / "r", {})


def test_open_requires_a_run_folder(tmp_path):
    with pytest.raises(RunError, match="not an evo run folder"):
        Run.open(tmp_path)
    (tmp_path / "config.json").write_text("{}")  # a config.json alone does not make a run
    with pytest.raises(RunError, match="run.json"):
        Run.open(tmp_path)


def test_crash_leftovers_are_cleaned_by_the_next_writer(tmp_path):
    run = Run.create(tmp_path / "r", {})
    run.commit_version(evo.zoo.load("small_cnn"), {"ops": []})
    # a killed commit leaves a staging folder; a killed lineage write leaves a temp file and a stale lineage
    (run.path / "versions" / ".evo-tmp-1.abc" / "model").mkdir(parents=True)
    (run.path / ".evo-tmp-lineage.json.x").write_text("{")
    os.remove(run.path / "lineage.json")
    reopened = Run.open(run.path)
    assert reopened.versions() == [0] and (run.path / ".evo-tmp-lineage.json.x").exists()  # reading changes nothing
    reopened.commit_version(evo.zoo.load("small_cnn"), {"ops": []})
    assert not (run.path / "versions" / ".evo-tmp-1.abc").exists() and not (run.path / ".evo-tmp-lineage.json.x").exists()
    assert [n["id"] for n in json.loads((run.path / "lineage.json").read_text())["nodes"]] == [0, 1]
