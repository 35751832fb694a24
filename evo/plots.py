"""Figures of a run, drawn from `evo.analysis` tables; `evo report` and the notebooks share them.

Every function takes DataFrames and returns a matplotlib Figure with units on both axes and a title
that says what is compared. Figures are made without pyplot (no global backend or figure list),
so they work headless, in threads and inline in Jupyter (`%matplotlib inline` shows a returned Figure).
"""

from __future__ import annotations

import textwrap

import matplotlib.dates
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

G, T = 1e9, 1e12


def _subplots(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (8, 4), **kw):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


def lineage(edges: pd.DataFrame, versions: pd.DataFrame) -> Figure:
    """The version tree, root at the top; each edge carries its operators, parameters added,
    the child's accuracy and the round's marginal cost."""
    children: dict[int, list[int]] = {}
    for _, e in edges.iterrows():
        children.setdefault(int(e["parent"]), []).append(int(e["child"]))
    roots = [int(v) for v, p in zip(versions["version"], versions["parent"], strict=True) if pd.isna(p)]
    pos: dict[int, tuple[float, float]] = {}
    next_x = [0.0]

    def place(n: int, depth: int) -> float:  # leaves side by side, a parent above its children's middle
        xs = [place(k, depth + 1) for k in children.get(n, [])]
        x = float(np.mean(xs)) if xs else next_x[0]
        if not xs:
            next_x[0] += 1
        pos[n] = (x, -depth)
        return x

    for r in roots:
        place(r, 0)
    depth = -min((y for _, y in pos.values()), default=0) + 1
    branches = max(next_x[0], 1)
    fig, ax = _subplots(figsize=(max(9.0, 4.5 * branches), max(2.5, 1.25 * depth + 1)))
    for _, e in edges.iterrows():
        (x0, y0), (x1, y1) = pos[int(e["parent"])], pos[int(e["child"])]
        ax.annotate("", (x1, y1), (x0, y0), arrowprops={"arrowstyle": "-|>", "color": "0.45", "shrinkA": 13,
                                                          "shrinkB": 13})
        added = "?" if pd.isna(e["params_added"]) else f"{int(e['params_added']):+,}"
        acc = "-" if pd.isna(e["accuracy"]) else f"{e['accuracy']:.3f}"
        cost = "-" if pd.isna(e["flops"]) else f"{e['flops'] / T:.3g} TFLOPs"
        ops = "no growth" if e["ops"] == "none" else str(e["ops"])
        strategy = str(e["chosen"]).rpartition(" [")[2].rstrip("]") if " [" in str(e["chosen"]) else ""
        ops += f" [{strategy}]" if strategy else ""
        label = f"{textwrap.shorten(ops, 60)}  |  params {added}  |  test acc {acc}  |  {cost}"
        fixes = str(e.get("corrections") or "")
        label += f"  |  corrections {fixes.partition(':')[0]}" if fixes else ""
        ax.text((x0 + x1) / 2 + 0.06, (y0 + y1) / 2, label, ha="left", va="center", fontsize=8,
                bbox={"boxstyle": "round", "fc": "#f4f6fb", "ec": "0.8"})
    for n, (x, y) in pos.items():
        ax.scatter([x], [y], s=500, c="#4c72b0", zorder=3)
        ax.text(x, y, f"v{n}", ha="center", va="center", color="white", fontsize=8, weight="bold", zorder=4)
    ax.set(xlim=(-0.3, branches + 0.7), ylim=(-depth + 0.5, 0.5), yticks=range(0, -int(depth), -1),
           yticklabels=range(int(depth)), xticks=[], xlabel="branch (versions grown from the same parent)",
           ylabel="lineage depth (versions)",
           title="Lineage: operators, parameters added, test accuracy and marginal cost per edge")
    fig.tight_layout()
    return fig


def architecture(arch: pd.DataFrame, versions: pd.DataFrame) -> Figure:
    """Width of every weight layer per version (left) and depth and parameters per version (right)."""
    fig, (a, b) = _subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [2.2, 1]})
    n_versions = arch["version"].nunique()
    for i, (v, part) in enumerate(arch.groupby("version")):
        part = part.sort_values("position")
        a.step(part["position"], part["width"], where="mid", marker="o", ms=3, lw=1.4,
               label=f"v{v}", alpha=0.55 + 0.45 * (i + 1) / n_versions)
    a.set(xlabel="weight layer (conv2d / linear, input → output)", ylabel="width (output channels / features)",
          title="Layer widths per version")
    a.set_yscale("log", base=2)
    a.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    a.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    names = arch.drop_duplicates("position").sort_values("position")
    step = max(1, len(names) // 40)
    a.set_xticks(names["position"][::step], names["layer"][::step], rotation=60, ha="right", fontsize=7)
    a.legend(fontsize=7, ncol=2, loc="upper left")
    b.bar(versions["version"], versions["depth"], color="#55a868", label="depth")
    b.set(xlabel="version", ylabel="depth (weight layers on longest path)",
          title="Depth and parameters per version", xticks=versions["version"])
    c = b.twinx()
    params = versions["params"].astype(float)
    scale, unit = (1e6, "millions") if params.max() >= 1e6 else (1e3, "thousands")
    c.plot(versions["version"], params / scale, color="#c44e52", marker="o", label="parameters")
    c.set_ylabel(f"parameters ({unit})")
    c.yaxis.get_major_formatter().set_useOffset(False)
    b.legend(*[sum(x, []) for x in zip(b.get_legend_handles_labels(), c.get_legend_handles_labels(),
                                       strict=True)], loc="lower right", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    return fig


def accuracy_matrix(matrix: pd.DataFrame) -> Figure:
    """Heatmap of R[i, j]: accuracy on increment j's test classes after learning increment i."""
    fig, ax = _subplots(figsize=(1.1 * len(matrix.columns) + 3, 0.8 * len(matrix) + 2))
    im = ax.imshow(matrix.to_numpy() * 100, cmap="viridis", vmin=0, vmax=100)
    for (i, j), v in np.ndenumerate(matrix.to_numpy()):
        if not np.isnan(v):
            ax.text(j, i, f"{100 * v:.1f}", ha="center", va="center", color="white" if v < 0.6 else "black",
                    fontsize=9)
    ax.set(xticks=range(len(matrix.columns)), xticklabels=matrix.columns, yticks=range(len(matrix)),
           yticklabels=matrix.index, xlabel="evaluated on increment j's classes (increment index)",
           ylabel="after learning increment i (increment index)",
           title="Accuracy matrix: test accuracy (%) per increment over time")
    fig.colorbar(im, ax=ax, label="test accuracy (%)")
    fig.tight_layout()
    return fig


def forgetting(table: pd.DataFrame, per: str) -> Figure:
    """Best earlier vs final accuracy and the drop, per class or per increment (`per` names the key column)."""
    fig, ax = _subplots(figsize=(max(6.0, 0.7 * len(table) + 3), 4))
    x = np.arange(len(table))
    ax.bar(x - 0.27, table["best"] * 100, 0.27, label="best before the last version", color="#8172b2")
    ax.bar(x, table["final"] * 100, 0.27, label="final", color="#4c72b0")
    ax.bar(x + 0.27, table["forgetting"] * 100, 0.27, label="forgetting (best − final)", color="#c44e52")
    ax.set_xticks(x, [str(k) for k in table[per]], rotation=30 if per == "class" else 0, ha="right"
                  if per == "class" else "center")
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set(xlabel=per, ylabel="test accuracy (percentage points)",
           title=f"Forgetting per {per}: best earlier vs final test accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def candidates(trials: pd.DataFrame, rounds: pd.DataFrame) -> Figure:
    """One panel per round: validation accuracy vs marginal GFLOPs of each candidate that ran, with the
    round's budget, its feasible front and the chosen candidate."""
    ids = sorted(rounds["round"].dropna().astype(int))
    cols = min(len(ids), 3) or 1
    rows = max(1, -(-len(ids) // cols))
    fig, axes = _subplots(rows, cols, figsize=(5.2 * cols, 4 * rows), squeeze=False)
    for ax, r in zip(axes.flat, ids, strict=False):
        part = trials[(trials["round"] == r) & trials["flops"].notna() & trials["val_accuracy"].notna()]
        ax.scatter(part["flops"] / G, part["val_accuracy"] * 100, s=28, c="#4c72b0", label="candidate (#trial)")
        for _, t in part.iterrows():
            ax.annotate(f"#{t['number']}", (t["flops"] / G, t["val_accuracy"] * 100), xytext=(4, 3),
                        textcoords="offset points", fontsize=7, color="0.3")
        front = part[part["front"]].sort_values("flops")
        ax.plot(front["flops"] / G, front["val_accuracy"] * 100, color="#55a868", marker="s", mfc="none", ms=9,
                label="feasible front")
        chosen = part[part["chosen"]]
        ax.scatter(chosen["flops"] / G, chosen["val_accuracy"] * 100, marker="*", s=260, c="#dd8452",
                   edgecolor="k", zorder=4, label="chosen")
        budget = rounds.loc[rounds["round"] == r, "budget_flops"].iloc[0]
        if pd.notna(budget):
            ax.axvline(budget / G, color="#c44e52", ls="--", label="round budget")
        acc = part["val_accuracy"] * 100
        lo, hi = (acc.min(), acc.max()) if len(acc) else (0, 100)
        ax.set_ylim(max(0, lo - 5), min(102, hi + 3))
        ax.set_xlim(left=0)
        ax.set(xlabel="marginal compute (GFLOPs, measured)", ylabel="validation accuracy (%)",
               title=f"Round {r}: candidates, accuracy vs compute")
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(ids):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def spend(rounds: pd.DataFrame) -> Figure:
    """Per round: marginal compute spent vs the round's budget vs retraining jointly on all data."""
    fig, ax = _subplots(figsize=(max(6.0, 1.4 * len(rounds) + 3), 4))
    x = np.arange(len(rounds))
    for k, (col, label, colour) in enumerate((("spent_flops", "spent", "#4c72b0"),
                                              ("budget_flops", "budget", "#dd8452"),
                                              ("joint_flops", "joint retraining", "#c44e52"))):
        vals = pd.to_numeric(rounds[col], errors="coerce") / T
        bars = ax.bar(x + (k - 1) * 0.27, vals, 0.27, label=label, color=colour)
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
    ax.set_xticks(x, [str(r) for r in rounds["round"]])
    ax.set(xlabel="round (increment index)", ylabel="compute (TFLOPs)",
           title="Compute per round: spent vs budget vs joint retraining")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def confusion(table: pd.DataFrame, version: int) -> Figure:
    """Row-normalised confusion matrix (% of each true class), counts written in the cells."""
    counts = table.to_numpy()
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) * 100
    n = max(len(table.columns), len(table))
    fig, ax = _subplots(figsize=(min(4 + 0.55 * n, 18), min(3 + 0.5 * n, 16)))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=100)
    if n <= 30:
        for (i, j), c in np.ndenumerate(counts):
            if c:
                ax.text(j, i, str(c), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 60 else "black")
    ax.set_xticks(range(len(table.columns)), table.columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(table)), table.index, fontsize=8)
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"Confusion matrix of v{version}: true vs predicted class (test images)")
    fig.colorbar(im, ax=ax, label="share of the true class (%)")
    fig.tight_layout()
    return fig


def corrections(log: pd.DataFrame) -> Figure:
    """Cumulative corrections over time: those that still hold, those that no longer hold, those undone."""
    fig, ax = _subplots(figsize=(8, 4))
    t = log["created"]
    live, holds = ~log["undone"], log["holds"]
    series = [(live & holds.fillna(False), "holding", "#55a868"),
              (live & ~holds.fillna(True), "not holding (conflicting)", "#c44e52"),
              (live & holds.isna(), "live (hold not recorded)", "#4c72b0"),
              (log["undone"], "undone", "0.5")]
    for mask, label, colour in series:
        if mask.any():
            ax.step(t, mask.astype(int).cumsum(), where="post", label=label, color=colour)
    locator = matplotlib.dates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(matplotlib.dates.ConciseDateFormatter(locator))
    ax.set(xlabel="time the correction was made (UTC)", ylabel="corrections made so far (count)",
           title="Corrections over time, by their state now: holding vs conflicting vs undone")
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def peers(summary: pd.DataFrame, setting: str = "") -> Figure:
    """Final accuracy vs total compute per method (mean ± std over seeds), coloured by family."""
    fig, ax = _subplots(figsize=(9, 5.5))
    ok = summary[summary["final_accuracy"].notna() & summary["tflops"].notna()]
    colours = {"evo": "#dd8452", "closed-form": "#4c72b0", "avalanche": "#8172b2", "joint": "#c44e52"}
    for family, part in ok.groupby("family", dropna=False):
        ax.errorbar(part["tflops"], part["final_accuracy"] * 100, xerr=part["tflops_std"].fillna(0),
                    yerr=part["final_accuracy_std"].fillna(0) * 100, fmt="*" if family == "evo" else "o",
                    ms=14 if family == "evo" else 7, capsize=3, color=colours.get(str(family), "0.4"),
                    label=str(family))
        for _, r in part.iterrows():
            ax.annotate(r["method"], (r["tflops"], r["final_accuracy"] * 100), xytext=(5, 4),
                        textcoords="offset points", fontsize=8)
    wide = len(ok) and (ok["tflops"] > 0).all() and ok["tflops"].max() / ok["tflops"].min() > 20
    if wide:
        ax.set_xscale("log")
    ax.set(xlabel="total compute (TFLOPs" + (", log scale)" if wide else ")"),
           ylabel="final accuracy (%, mean ± std over seeds)",
           title="Final accuracy vs compute: evo and its peers" + (f"\n{setting}" if setting else ""))
    ax.grid(alpha=0.3)
    ax.legend(title="family", fontsize=8)
    fig.tight_layout()
    return fig
