"""The analysis notebook and its module, run on a real run folder written by `evo launch`."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from test_search import ROOT, TINY

from evo.analysis import load_run, plot_run
from evo.runs import RunError


@pytest.fixture(scope="module")
def run_dir(ray_cluster, tmp_path_factory):
    from evo.search.launch import launch

    tmp = tmp_path_factory.mktemp("analysis")
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump(TINY))
    launch(space, run_dir=tmp / "run", say=lambda s: None)
    return tmp / "run"


def test_load_run_reads_versions_candidates_and_budgets(run_dir):
    data = load_run(run_dir)
    assert [v["version"] for v in data.versions] == [0, 1, 2]
    assert [r["round"] for r in data.rounds] == [0, 1]
    assert all(r["spent_flops"] <= r["budget_flops"] for r in data.rounds)
    done = [t for t in data.trials if t["state"] == "COMPLETE"]
    assert done and all(0 <= t["val_accuracy"] <= 1 and t["flops"] > 0 for t in done)
    assert any(t["name"].startswith("no-growth") for t in done)
    text = data.table(data.versions)
    assert text.splitlines()[0].split()[:3] == ["version", "parent", "increment"] and len(text.splitlines()) == 4
    fig = plot_run(data)
    assert len(fig.axes) == 3 and fig.axes[0].lines


def test_load_run_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(RunError):
        load_run(tmp_path)


def test_notebook_executes_on_the_run(run_dir):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(ROOT / "analysis" / "run_report.ipynb", as_version=4)
    os.environ["EVO_RUN"] = str(run_dir)
    try:
        nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    finally:
        del os.environ["EVO_RUN"]
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "3 versions" in printed and "no-growth" in printed
    assert (run_dir / "report.png").stat().st_size > 10_000
    assert json.loads((run_dir / "lineage.json").read_text())["nodes"]
