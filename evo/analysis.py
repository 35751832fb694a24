"""Read a run folder's metrics for study: versions, every candidate of every round, and a summary figure.

What the notebooks in `analysis/` call. Only the files `evo launch` writes are read (rounds.csv,
round_<n>.json, lineage.json), so a run copied from another machine can be studied without Ray.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evo.runs import Run

TRIAL_FIELDS = ("round", "number", "state", "name", "val_accuracy", "accuracy", "flops", "price_flops",
                "seconds", "params", "fail_reason")


@dataclass
class RunData:
    path: Path
    versions: list[dict[str, Any]]  # one per committed version: rounds.csv, numbers parsed
    trials: list[dict[str, Any]]  # every candidate of every round (TRIAL_FIELDS)
    rounds: list[dict[str, Any]]  # per round: budget, spent, joint, chosen trial
    lineage: dict[str, Any]

    def table(self, rows: list[dict[str, Any]], fields: tuple[str, ...] | None = None) -> str:
        """A plain-text table of `rows` (e.g. `data.table(data.versions)`)."""
        fields = fields or (tuple(rows[0]) if rows else ())
        cells = [[_fmt(r.get(f)) for f in fields] for r in rows]
        widths = [max([len(f)] + [len(c[i]) for c in cells]) for i, f in enumerate(fields)]
        line = "  ".join(f.ljust(w) for f, w in zip(fields, widths, strict=True))
        return "\n".join([line] + ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells])


def load_run(path: str | os.PathLike) -> RunData:
    """Versions, candidates and per-round budgets of the run at `path`."""
    run = Run.open(path)
    versions = [{k: _number(v) for k, v in row.items()} for row in run.rounds_table()]
    trials, rounds = [], []
    for f in sorted((run.path / "metrics").glob("round_*.json"), key=lambda p: int(p.stem.split("_")[1])):
        doc = json.loads(f.read_text())
        index = doc.get("increment")
        for t in doc.get("trials", []):
            cand = t.get("candidate") or {}
            row = {k: t.get(k) for k in TRIAL_FIELDS}
            row.update(round=index, name=_name(cand))
            trials.append(row)
        rounds.append({"round": index, "version": doc.get("version"), "budget_flops": doc.get("budget_flops"),
                       "spent_flops": doc.get("spent_flops"), "joint_flops": doc.get("joint_flops")})
    lineage = json.loads((run.path / "lineage.json").read_text()) if (run.path / "lineage.json").is_file() else {}
    return RunData(run.path, versions, trials, rounds, lineage)


def plot_run(data: RunData):
    """Three panels: accuracy per version, spent vs budget per round, candidates (val accuracy vs FLOPs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4))
    grown = [v for v in data.versions if v.get("chosen") not in (None, "", "initial model")]
    a.plot([v["version"] for v in grown], [v["accuracy"] for v in grown], marker="o")
    for v in grown:
        if not str(v.get("chosen", "")).startswith("no-growth"):
            a.annotate(str(v["chosen"])[:24], (v["version"], v["accuracy"]), fontsize=7, rotation=20)
    a.set(xlabel="version", ylabel="test accuracy (classes so far)", title="accuracy per version")
    r = [x for x in data.rounds if x["budget_flops"]]
    a_x = [x["round"] for x in r]
    b.bar([x - 0.2 for x in a_x], [x["budget_flops"] / 1e12 for x in r], width=0.4, label="budget")
    b.bar([x + 0.2 for x in a_x], [x["spent_flops"] / 1e12 for x in r], width=0.4, label="spent")
    b.set(xlabel="round", ylabel="TFLOPs", title="marginal compute per round")
    b.legend()
    done = [t for t in data.trials if t["state"] == "COMPLETE"]
    for i in sorted({t["round"] for t in done}):
        pts = [t for t in done if t["round"] == i]
        c.scatter([t["flops"] / 1e9 for t in pts], [t["val_accuracy"] for t in pts], label=f"round {i}", s=18)
    c.set(xlabel="GFLOPs (measured)", ylabel="validation accuracy", title="candidates")
    if done:
        c.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _name(cand: dict[str, Any]) -> str:
    if not cand:
        return ""
    from evo.search.candidate import Candidate

    return Candidate(**cand).name


def _number(v: str) -> Any:
    if v in ("", None):
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) or (isinstance(v, int) and abs(v) >= 10**7):  # FLOPs and params stay readable
        return f"{v:.4g}"
    return str(v)
