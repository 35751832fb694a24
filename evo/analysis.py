"""A run folder as pandas tables: versions, lineage, architecture, candidates, budgets, accuracies, corrections.

What `evo report` and the notebooks in `analysis/` call; `evo.plots` draws these tables. Only files are
read (versions/<n>/meta.json and graph.json, metrics/round_<n>.json, corrections.sqlite), never
written: a run that is still being written, or one copied from another machine, can be studied
without Ray. The one exception to "files only" is `predictions`, which rebuilds the run's test split
from its config and runs each version on it (a few seconds for the small runs; CPU is enough).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import pandas as pd

from evo.runs import RESTORE, Run, RunError, read_json_object

WEIGHT_OPS = ("conv2d", "linear")


@dataclass
class RunData:
    """The tables of one run, for a notebook: `data = load_run(path); data.versions`."""

    path: Path
    versions: pd.DataFrame
    lineage: pd.DataFrame
    trials: pd.DataFrame
    rounds: pd.DataFrame
    architecture: pd.DataFrame
    accuracy_matrix: pd.DataFrame


def load_run(path: str | os.PathLike) -> RunData:
    """Every file-only table of the run at `path` (no prediction; see `predictions` for that)."""
    run = open_run(path)
    return RunData(run.path, versions(run), lineage(run), trials(run), rounds(run), architecture(run),
                   accuracy_matrix(run))


def open_run(path: str | os.PathLike | Run) -> Run:
    """A run folder for reading. Unlike `Run.open` it cleans and rebuilds nothing, so a live run is safe."""
    if isinstance(path, Run):
        return path
    run = Run(path)
    if not (run.path / "config.json").is_file():
        raise RunError(f"{run.path} is not an evo run folder (no config.json); pass a folder written by "
                       "`evo launch` or `evo learn`, e.g. runs/fashion_quick")
    if not run.versions():
        raise RunError(f"run {run.path} has no committed version yet; wait for its first commit")
    return run


# ---- versions and lineage ---------------------------------------------------------------------------


def versions(run: str | os.PathLike | Run) -> pd.DataFrame:
    """One row per committed version: what it learned, how it grew, its accuracy, size and cost."""
    run = open_run(run)
    rows = []
    for n in run.versions():
        meta = run.version_meta(n)
        metrics, cost = meta.get("metrics") or {}, meta.get("cost") or {}
        rows.append({"version": n, "parent": meta.get("parent"), "increment": meta.get("increment"),
                     "chosen": meta.get("chosen"), "trial": meta.get("trial"), "ops": ops_text(meta.get("ops")),
                     "classes": len(meta.get("classes") or []), "params": meta.get("params"),
                     "accuracy": metrics.get("accuracy"), "forgetting": metrics.get("forgetting"),
                     "average_incremental_accuracy": metrics.get("average_incremental_accuracy"),
                     "flops": cost.get("flops"), "seconds": cost.get("seconds"),
                     "budget_flops": cost.get("budget_flops"), "joint_flops": cost.get("joint_flops"),
                     "joint_ratio": cost.get("joint_ratio"), "depth": _depth(_graph_doc(run, n)),
                     "corrections": _ids_text(meta.get("corrections"))})
    df = pd.DataFrame(rows)
    for col in ("parent", "increment", "trial", "params"):
        df[col] = df[col].astype("Int64")
    return df


def lineage(run: str | os.PathLike | Run) -> pd.DataFrame:
    """One row per lineage edge parent → child: the operators applied, parameters added, accuracy, cost."""
    v = versions(run).set_index("version")
    rows = []
    for child, row in v.iterrows():
        if pd.isna(row["parent"]):
            continue
        parent = int(row["parent"])
        added = row["params"] - v.loc[parent, "params"] if parent in v.index else pd.NA
        rows.append({"parent": parent, "child": int(child), "ops": row["ops"], "chosen": row["chosen"],
                     "params_added": added, "accuracy": row["accuracy"], "flops": row["flops"],
                     "seconds": row["seconds"], "corrections": row["corrections"]})
    return pd.DataFrame(rows, columns=["parent", "child", "ops", "chosen", "params_added", "accuracy", "flops",
                                       "seconds", "corrections"])


def _ids_text(ids: list[int] | None) -> str:
    """The correction ids a version learned, as '3: 1, 2, 5' ('' for none)."""
    return f"{len(ids)}: " + ", ".join(map(str, ids)) if ids else ""


def ops_text(ops: list[dict[str, Any]] | None) -> str:
    """Growth operators as one short line, e.g. 'widen(res_a_0, ×1.5) + add_classes(+5)'."""
    parts = []
    for op in ops or []:
        params = op.get("params") or {}
        if op.get("op") == "add_classes":
            parts.append(f"add_classes(+{len(params.get('names', []))})")
            continue
        site = ",".join(str(s) for s in (op.get("site") or {}).values())
        extra = ",".join(f"{k}={v}" for k, v in params.items())
        parts.append(f"{op.get('op')}({', '.join(p for p in (site, extra) if p)})")
    return " + ".join(parts) or "none"


# ---- architecture -----------------------------------------------------------------------------------


def architecture(run: str | os.PathLike | Run) -> pd.DataFrame:
    """Long table of every weight layer (conv2d, linear) per version: its width and position.

    `position` orders layers the same way in every version (topological order of the latest graph,
    then any layer only older versions had), so a widened layer keeps its place and a deepened one
    appears between its neighbours.
    """
    run = open_run(run)
    docs = {n: _graph_doc(run, n) for n in run.versions()}
    order: list[str] = []
    for n in sorted(docs, reverse=True):
        order += [name for name in _weight_layers(docs[n]) if name not in order]
    rows = []
    for n, doc in docs.items():
        for name, node in _weight_layers(doc).items():
            a = node["attrs"]
            rows.append({"version": n, "layer": name, "op": node["op"], "position": order.index(name),
                         "width": a.get("out_channels", a.get("out_features")),
                         "kernel": "x".join(str(k) for k in a.get("kernel_size", [])) or "-"})
    return pd.DataFrame(rows, columns=["version", "layer", "op", "position", "width", "kernel"])


def _graph_doc(run: Run, n: int) -> dict[str, Any]:
    """Version n's graph.json without its weights (the tables read names, ops, attrs and edges), checked
    for the shape they read: a damaged file is a RunError, not a traceback."""
    path = run.version_dir(n) / "graph.json"
    doc = read_json_object(path, "an evo graph", RESTORE)
    ok = isinstance(doc.get("nodes"), list) and isinstance(doc.get("edges"), list) \
        and all(isinstance(nd, dict) and isinstance(nd.get("name"), str) and isinstance(nd.get("op"), str)
                for nd in doc["nodes"]) \
        and all(isinstance(ed, dict) and {"src", "dst"} <= set(ed) for ed in doc["edges"])
    if not ok:
        raise RunError(f"{path} is not an evo graph (nodes with a name and an op, edges with src and dst); {RESTORE}")
    return doc


def _weight_layers(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    g = _nx(doc)
    nodes = {node["name"]: node for node in doc["nodes"]}
    return {name: nodes[name] for name in nx.topological_sort(g) if nodes[name]["op"] in WEIGHT_OPS}


def _nx(doc: dict[str, Any]) -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_nodes_from(node["name"] for node in doc["nodes"])
    g.add_edges_from((e["src"], e["dst"]) for e in doc["edges"])
    return g


def _depth(doc: dict[str, Any]) -> int:
    """Weight layers (conv2d, linear) on the longest input → output path."""
    g = _nx(doc)
    weighted = {node["name"] for node in doc["nodes"] if node["op"] in WEIGHT_OPS}
    best: dict[str, int] = {}
    for n in nx.topological_sort(g):
        best[n] = max((best[p] for p in g.predecessors(n)), default=0) + (n in weighted)
    return max(best.values(), default=0)


# ---- growth rounds ----------------------------------------------------------------------------------


def _round_docs(run: Run) -> list[dict[str, Any]]:
    files = sorted((run.path / "metrics").glob("round_*.json"), key=lambda p: int(p.stem.split("_")[1]))
    return [json.loads(f.read_text()) for f in files]


def trials(run: str | os.PathLike | Run) -> pd.DataFrame:
    """Every candidate of every round, marked: `chosen`, `feasible` (ran within the round's budget) and
    `front` (on the feasible Pareto front of higher validation accuracy for fewer marginal FLOPs)."""
    run = open_run(run)
    chosen = {(m.get("increment"), m.get("trial")) for m in map(run.version_meta, run.versions())}
    rows = []
    for doc in _round_docs(run):
        index, budget = doc.get("increment"), doc.get("budget_flops")
        for t in doc.get("trials", []):
            rows.append({"round": index, "number": t.get("number"), "state": t.get("state"),
                         "name": _name(t.get("candidate") or {}), "val_accuracy": t.get("val_accuracy"),
                         "accuracy": t.get("accuracy"), "flops": t.get("flops"), "price_flops": t.get("price_flops"),
                         "seconds": t.get("seconds"), "params": t.get("params"), "budget_flops": budget,
                         "fail_reason": t.get("fail_reason"),
                         "chosen": (index, t.get("number")) in chosen and t.get("state") == "COMPLETE"})
    cols = ["round", "number", "state", "name", "val_accuracy", "accuracy", "flops", "price_flops", "seconds",
            "params", "budget_flops", "fail_reason", "chosen"]
    df = pd.DataFrame(rows, columns=cols)
    for col in ("val_accuracy", "accuracy", "flops", "price_flops", "seconds", "budget_flops"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    done = (df["state"] == "COMPLETE") & df["flops"].notna() & df["val_accuracy"].notna()
    df["feasible"] = done & (df["budget_flops"].isna() | (df["flops"] <= df["budget_flops"]))
    df["front"] = False
    for _, part in df[df["feasible"]].groupby("round"):
        df.loc[_pareto(part), "front"] = True
    return df


def _pareto(part: pd.DataFrame) -> list[int]:
    """Rows no other row beats: at least as accurate for no more FLOPs, and better in one."""
    keep = []
    for i, r in part.iterrows():
        beaten = ((part["val_accuracy"] >= r["val_accuracy"]) & (part["flops"] <= r["flops"])
                  & ((part["val_accuracy"] > r["val_accuracy"]) | (part["flops"] < r["flops"]))).any()
        if not beaten:
            keep.append(i)
    return keep


def failed(trials_df: pd.DataFrame) -> pd.DataFrame:
    """Candidates that did not finish (failed, or never started: over budget, duplicates), with the reason."""
    out = trials_df[trials_df["state"] != "COMPLETE"]
    return out[["round", "number", "state", "name", "price_flops", "fail_reason"]].reset_index(drop=True)


def rounds(run: str | os.PathLike | Run) -> pd.DataFrame:
    """Per round: the budget, what it spent, joint retraining's cost, and how many candidates ran or failed."""
    run = open_run(run)
    rows = []
    for doc in _round_docs(run):
        states = [t.get("state") for t in doc.get("trials", [])]
        rows.append({"round": doc.get("increment"), "version": doc.get("version"),
                     "budget_flops": doc.get("budget_flops"), "spent_flops": doc.get("spent_flops"),
                     "joint_flops": doc.get("joint_flops"), "seconds": (doc.get("timing") or {}).get("seconds"),
                     "completed": states.count("COMPLETE"), "failed": states.count("FAIL"),
                     "not_started": states.count("PRUNED")})
    return pd.DataFrame(rows, columns=["round", "version", "budget_flops", "spent_flops", "joint_flops", "seconds",
                                       "completed", "failed", "not_started"])


def _name(cand: dict[str, Any]) -> str:
    if not cand:
        return ""
    from evo.search.candidate import Candidate

    return Candidate(**cand).name


# ---- accuracy -----------------------------------------------------------------------------------------


def accuracy_matrix(run: str | os.PathLike | Run) -> pd.DataFrame:
    """R[i, j]: test accuracy on increment j's classes after learning increment i (rows: increments
    learned; NaN above the diagonal). Empty when the run records no per-increment rows (`evo learn`)."""
    run = open_run(run)
    rows = {}
    for n in run.versions():
        meta = run.version_meta(n)
        row = (meta.get("metrics") or {}).get("row")
        if meta.get("increment") is not None and row:
            rows[int(meta["increment"])] = row
    if not rows:
        return pd.DataFrame()
    size = max(len(r) for r in rows.values())
    data = [list(r) + [np.nan] * (size - len(r)) for r in rows.values()]
    df = pd.DataFrame(data, index=pd.Index(list(rows), name="after increment"),
                      columns=pd.Index(range(size), name="increment"))
    return df.astype(float)


def forgetting_per_increment(matrix: pd.DataFrame) -> pd.DataFrame:
    """Per earlier increment j: its best accuracy before the last, its final accuracy, and the drop."""
    if matrix.empty or len(matrix) < 2:
        return pd.DataFrame(columns=["increment", "best", "final", "forgetting"])
    last = matrix.index[-1]
    rows = []
    for j in matrix.columns[:-1]:
        before = matrix.loc[matrix.index[:-1], j].dropna()
        if before.empty or pd.isna(matrix.loc[last, j]):
            continue
        rows.append({"increment": j, "best": before.max(), "final": matrix.loc[last, j],
                     "forgetting": before.max() - matrix.loc[last, j]})
    return pd.DataFrame(rows, columns=["increment", "best", "final", "forgetting"])


# ---- predictions on the run's test split ---------------------------------------------------------------


def test_split(run: str | os.PathLike | Run):
    """(ImageSet, how) for the latest version's test data, or (None, why not).

    A search run (`evo launch`) rebuilds its seeded scenario from config.json with
    `evo.search.scenario.stream_for`, exactly as its workers did, and takes the test split of the
    latest version's increment (every class seen so far). An `evo learn` run reloads the held-out
    split of the data its latest version learned.
    """
    run = open_run(run)
    latest = run.version_meta(run.latest())
    config = run.config
    if "space" in config and latest.get("increment") is not None:
        from evo.search.scenario import stream_for

        scenario = config["space"]["scenario"]
        stream = stream_for(scenario)
        inc = stream[int(latest["increment"])]
        how = (f"test split of increment {inc.index} ({len(inc.test)} images, {len(inc.classes_so_far)} classes) "
               f"rebuilt from config.json's scenario ({scenario.get('kind', 'class_incremental')} on "
               f"{scenario.get('source')}, seed {scenario.get('seed', 0)}) with evo.search.scenario.stream_for")
        return inc.test, how
    if latest.get("data") and Path(latest["data"]).exists():
        from evo.data import load_source

        _, test = load_source(latest["data"])
        if len(test):
            return test, f"held-out split of {latest['data']} ({len(test)} images), the data version " \
                         f"{run.latest()} learned, reloaded with evo.data.load_source"
    if latest.get("increment") is None:
        return None, "no test split: the run has not learned an increment yet"
    return None, "no test split: the run has no scenario in config.json and its latest data is not readable"


def video_source(run: str | os.PathLike | Run) -> tuple[str, dict[str, Any]] | None:
    """(source, options) when the run learns from a video folder or video CSV manifest, else None: a
    search run's scenario source with its `source_opts`, or the data an `evo learn` run last read."""
    run = open_run(run)
    scenario = run.config.get("space", {}).get("scenario")
    if scenario and isinstance(scenario.get("source"), str):
        source, opts = scenario["source"], dict(scenario.get("source_opts") or {})
    else:
        source, opts = run.version_meta(run.latest()).get("data"), {}
    if not source or not Path(source).exists():
        return None
    return (str(source), opts) if _is_video_source(Path(source)) else None


def _is_video_source(path: Path) -> bool:
    """A folder with video files in its class subfolders, or a CSV whose first rows name video files."""
    from evo.data.video import VIDEO_EXTENSIONS

    if path.is_dir():
        return any(p.suffix.lower() in VIDEO_EXTENSIONS for d in path.iterdir() if d.is_dir()
                   for p in d.rglob("*") if p.is_file())
    if path.suffix.lower() != ".csv":
        return False
    try:
        rows = path.read_text().splitlines()[:3]
    except (OSError, UnicodeDecodeError):
        return False
    return any(Path(r.split(",")[0].strip()).suffix.lower() in VIDEO_EXTENSIONS for r in rows)


def test_videos(run: str | os.PathLike | Run, limit: int = 3) -> tuple[pd.DataFrame, str]:
    """Up to `limit` held-out clips of a video run (one per class first): path, start, end, truth; and
    the sentence saying where they came from. The split is the source's own, by clip, so these clips
    were never learned from; only one frame per clip is decoded to rebuild it."""
    cols = ["path", "start", "end", "truth"]
    found = video_source(run)
    if found is None:
        return pd.DataFrame(columns=cols), "the run's data is not a video folder or video manifest"
    from evo.data.video import load_videos

    source, opts = found
    keep = {k: v for k, v in opts.items() if k in ("test_fraction", "seed")}
    _, test = load_videos(source, sampling="uniform", frames=1, detector=None, size=16, **keep)
    rows, seen_paths = [], set()
    clips = [test.clips[i] for i in dict.fromkeys(test.clip.tolist())]
    first = {}
    for c in clips:
        first.setdefault(c.label, c)
    for c in [*first.values(), *clips]:
        if len(rows) >= limit:
            break
        if c.path not in seen_paths:
            seen_paths.add(c.path)
            rows.append({"path": c.path, "start": c.start, "end": c.end, "truth": c.label})
    how = f"{len(rows)} of the {len(clips)} held-out clips of {source} (the source's split by clip)"
    return pd.DataFrame(rows, columns=cols), how


def predictions(run: str | os.PathLike | Run, versions_: list[int] | None = None, batch_size: int = 256
                ) -> tuple[pd.DataFrame, str]:
    """Each learned version's prediction for every image of `test_split` (long table: version, image,
    truth, predicted), and the sentence saying where the images came from. Empty if there is no split."""
    import torch

    from evo.data.transforms import Preprocess
    from evo.learn.device import feature_batch

    run = open_run(run)
    test, how = test_split(run)
    cols = ["version", "image", "truth", "predicted"]
    if test is None:
        return pd.DataFrame(columns=cols), how
    truth = np.asarray(test.classes)[test.labels]
    learned = [n for n in run.versions() if run.version_meta(n).get("increment") is not None]
    frames = []
    for n in versions_ if versions_ is not None else learned:
        graph, meta, _ = run.load_version(n)
        classes = np.asarray(meta.get("classes") or graph.classes)
        pre = meta.get("preprocess") or graph.meta.get("preprocess")
        preprocess = Preprocess.from_dict(pre) if pre else Preprocess(int(graph.input_shape[1]), (0.5,) * 3,
                                                                      (0.5,) * 3)
        net = graph.to_module().eval()
        step = feature_batch(net, batch_size, torch.device("cpu"))
        out = []
        with torch.no_grad():
            for i in range(0, len(test), step):
                out.append(net(preprocess(test.images[i:i + step])).argmax(dim=1).numpy())
        pred = classes[np.concatenate(out)] if out else np.empty(0, dtype=str)
        frames.append(pd.DataFrame({"version": n, "image": np.arange(len(test)), "truth": truth, "predicted": pred}))
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)), how


def confusion(preds: pd.DataFrame, version: int | None = None) -> pd.DataFrame:
    """Counts of true class (rows) × predicted class (columns) for `version` (default: the latest)."""
    if preds.empty:
        return pd.DataFrame()
    version = preds["version"].max() if version is None else version
    p = preds[preds["version"] == version]
    labels = list(dict.fromkeys(list(p["truth"]) + list(p["predicted"])))
    table = pd.crosstab(pd.Categorical(p["truth"], labels), pd.Categorical(p["predicted"], labels), dropna=False)
    table.index.name, table.columns.name = "true class", "predicted class"
    return table.loc[[c for c in labels if c in set(p["truth"])]]


def per_class_accuracy(run: str | os.PathLike | Run, preds: pd.DataFrame) -> pd.DataFrame:
    """Accuracy of each version (rows) on each class (columns); NaN where the version did not know the class."""
    if preds.empty:
        return pd.DataFrame()
    run = open_run(run)
    acc = preds.assign(correct=preds["truth"] == preds["predicted"]).pivot_table(
        index="version", columns="truth", values="correct", aggfunc="mean")
    for n in acc.index:
        known = set(run.version_meta(int(n)).get("classes") or [])
        acc.loc[n, [c for c in acc.columns if c not in known]] = np.nan
    acc.columns.name = "class"
    return acc[list(dict.fromkeys(preds["truth"]))].astype(float)


def forgetting_per_class(acc: pd.DataFrame) -> pd.DataFrame:
    """Per class known before the last version: best earlier accuracy, final accuracy, and the drop."""
    if acc.empty or len(acc) < 2:
        return pd.DataFrame(columns=["class", "best", "final", "forgetting"])
    earlier, final = acc.iloc[:-1], acc.iloc[-1]
    rows = [{"class": c, "best": earlier[c].max(), "final": final[c], "forgetting": earlier[c].max() - final[c]}
            for c in acc.columns if earlier[c].notna().any() and pd.notna(final[c])]
    return pd.DataFrame(rows, columns=["class", "best", "final", "forgetting"])


# ---- corrections --------------------------------------------------------------------------------------


def corrections(run: str | os.PathLike | Run) -> pd.DataFrame | None:
    """The corrections log (RUN/corrections.sqlite) sorted by time, or None when the run has none.

    With `evo.active` installed, the engine opens the log read-only and replays it, so `holds` says
    whether each live correction still holds on the latest version. Without it the SQLite file is
    read directly (`mode=ro`) and `holds` is unknown (NA) unless the table stores it.
    """
    run = open_run(run)
    path = run.path / "corrections.sqlite"
    if not path.is_file():
        return None
    try:
        from evo.active import Corrections
    except ImportError:
        df = _corrections_table(path)
    else:
        eng = Corrections.open(run.path, write=False)
        try:
            df = pd.DataFrame([dataclasses.asdict(r) for r in eng.list()])
        finally:
            eng.close()
    if df is None or df.empty:
        return None
    created = df["created"]
    df["created"] = (pd.to_datetime(created, unit="s", utc=True) if pd.api.types.is_numeric_dtype(created)
                     else pd.to_datetime(created, utc=True, format="mixed"))
    if "undone" not in df:
        df["undone"] = False
    elif not pd.api.types.is_bool_dtype(df["undone"]):  # the log stores when it was undone, else NULL
        df["undone"] = df["undone"].notna() & ~df["undone"].isin([0, "0", "", "false"])
    df["holds"] = df["holds"].astype("boolean") if "holds" in df else pd.array([pd.NA] * len(df), "boolean")
    return df.sort_values("created").reset_index(drop=True)


def _corrections_table(path: Path) -> pd.DataFrame | None:
    """The table with `created` and `label` columns (image blobs left out), read-only."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
            cols = [r[1] for r in db.execute(f'PRAGMA table_info("{table}")')]
            if {"created", "label"} <= set(cols):
                keep = ", ".join(f'"{c}"' for c in cols if c != "image_png")
                return pd.read_sql_query(f'SELECT {keep} FROM "{table}"', db)
    return None


# ---- the peer benchmark (benchmarks/peers/results/peers.json) -------------------------------------------

PEER_FIELDS = ["method", "family", "seed", "final_accuracy", "average_incremental_accuracy", "forgetting",
               "tflops", "wall_seconds", "peak_mem_bytes", "error"]


def peer_results(path: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The peer benchmark's rows (one per method and seed) and its header (command, date, machine, setting)."""
    from evo.errors import EvoError

    p = Path(path)
    try:
        doc = json.loads(p.read_text())
        rows = doc["rows"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EvoError(f"{p} is not a peer benchmark result ({e}); expected JSON with a 'rows' list, as "
                       "written by benchmarks/peers/") from None
    df = pd.DataFrame(rows).reindex(columns=PEER_FIELDS)
    for col in PEER_FIELDS[3:9]:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    return df, {k: v for k, v in doc.items() if k != "rows"}


def peer_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per method over its seeds: mean and std of final accuracy, forgetting and TFLOPs; failed seeds counted."""
    ok = rows[rows["error"].isna()]
    g = ok.groupby(["method", "family"], dropna=False)
    out = g.agg(seeds=("seed", "count"), final_accuracy=("final_accuracy", "mean"),
                final_accuracy_std=("final_accuracy", "std"), forgetting=("forgetting", "mean"),
                tflops=("tflops", "mean"), tflops_std=("tflops", "std"),
                wall_seconds=("wall_seconds", "mean")).reset_index()
    errors = rows[rows["error"].notna()].groupby("method")["error"].agg(lambda e: "; ".join(sorted(set(e))))
    failed = rows[~rows["method"].isin(out["method"])][["method", "family"]].drop_duplicates()
    out = pd.concat([out, failed], ignore_index=True)
    out["seeds"] = out["seeds"].fillna(0).astype(int)
    out["errors"] = out["method"].map(errors)
    return out.sort_values("final_accuracy", ascending=False, na_position="last").reset_index(drop=True)
