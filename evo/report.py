"""`evo report RUN`: a run's pictures as one self-contained HTML page, its PNGs and a short summary.md.

The folder (default RUN/report/) is built in a temp folder beside it and renamed into place, so a
reader never sees half a report; an older report there is replaced only if evo wrote it (its marker,
`.evo-report.json`, lists exactly the files it holds). Nothing else in the run is written.
"""

from __future__ import annotations

import base64
import html
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from evo import analysis
from evo.errors import EvoError
from evo.fsutil import mark_folder, marked_folder

try:
    from evo import plots
except ImportError as e:  # matplotlib is in the `analysis` extra
    plots = None
    _PLOTS_ERROR = str(e)


class ReportError(EvoError):
    """The report's output folder cannot be written or replaced."""


@dataclass
class Section:
    title: str
    png: str | None = None
    caption: str = ""
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)


def write_report(run: str | os.PathLike, out: str | os.PathLike | None = None, predict: bool = True,
                 say: Callable[[str], None] = print, videos: list[str] | None = None, max_videos: int = 3) -> Path:
    """Write the report of the run at `run` into `out` (default RUN/report) and return that folder.

    `predict=False` skips everything that runs the model: the confusion matrix and per-class
    forgetting (every learned version on the run's test split, see `evo.analysis.predictions`) and
    the video strips. Those show, per shot, a keyframe and the latest model's prediction (corrections
    included) for each file in `videos` and, for a run learnt from videos, up to `max_videos` of
    its held-out clips (`evo.analysis.test_videos`).
    """
    if plots is None:
        raise ReportError(f"evo report needs matplotlib ({_PLOTS_ERROR}); install it with "
                          "`pip install 'evo[analysis]'`")
    r = analysis.open_run(run)
    out = Path(out) if out is not None else r.path / "report"
    legacy_ok = out.resolve() == (r.path / "report").resolve()
    _check_replaceable(out, legacy_ok)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise _unwritable(out, e) from None
    staging.chmod(0o755)  # mkdtemp makes it private; a report is for reading
    try:
        sections, summary = _build(r, staging, predict, say, videos or [], max_videos)
        try:
            (staging / "index.html").write_text(_html(r.path.name, sections, summary, staging))
            (staging / "summary.md").write_text(_markdown(r.path.name, summary, sections))
            mark_folder(staging, REPORT_MARKER, "evo report")
            _swap(staging, out, legacy_ok)
        except OSError as e:
            raise _unwritable(out, e) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(f"report: {out / 'index.html'} ({len(sections)} sections)")
    return out


# ---- content ------------------------------------------------------------------------------------------


def _build(run, folder: Path, predict: bool, say: Callable[[str], None], videos: list[str],
           max_videos: int) -> tuple[list[Section], list[str]]:
    data = analysis.load_run(run)
    v, sections = data.versions, []
    latest = v.iloc[-1]

    def save(fig, name: str) -> str:
        fig.savefig(folder / name, dpi=110)
        return name

    summary = [f"{len(v)} versions (v0 … v{int(latest['version'])}), {len(data.rounds)} growth rounds, "
               f"{len(data.trials)} candidates proposed"]
    if pd.notna(latest["accuracy"]):
        summary.append(f"latest v{int(latest['version'])}: test accuracy {latest['accuracy']:.4f}"
                       + (f", forgetting {latest['forgetting']:.4f}" if pd.notna(latest["forgetting"]) else "")
                       + f", {int(latest['params']):,} parameters, depth {latest['depth']}")
    if data.rounds["spent_flops"].notna().any():
        spent, joint = data.rounds["spent_flops"].sum(), data.rounds["joint_flops"].sum()
        summary.append(f"compute: {spent / plots.T:.4g} TFLOPs spent over all rounds, "
                       f"{spent / joint:.3f}× joint retraining at every round ({joint / plots.T:.4g} TFLOPs)")
    sections.append(Section("Lineage", save(plots.lineage(data.lineage, v), "lineage.png"),
                            "Each arrow is one committed version: the growth operators it applied, the parameters "
                            "it added, its test accuracy and the marginal compute of its round.",
                            [("versions", v.drop(columns=["budget_flops", "joint_flops"]))]))
    sections.append(Section("Architecture growth", save(plots.architecture(data.architecture, v), "architecture.png"),
                            "Width of every conv2d/linear layer per version (log scale), and depth (weight layers on "
                            "the longest input-to-output path) with parameter count."))
    if not data.accuracy_matrix.empty:
        sections.append(Section("Accuracy matrix", save(plots.accuracy_matrix(data.accuracy_matrix),
                                                        "accuracy_matrix.png"),
                                "Row i: test accuracy on each increment's classes after learning increment i."))
    preds, how = (analysis.predictions(run) if predict else
                  (pd.DataFrame(), "skipped (--no-predict): the report did not run the model"))
    per_class = analysis.forgetting_per_class(analysis.per_class_accuracy(run, preds)) if not preds.empty \
        else pd.DataFrame()
    if not per_class.empty:
        sections.append(Section("Forgetting per class", save(plots.forgetting(per_class, "class"), "forgetting.png"),
                                "Per class: its best test accuracy in any earlier version, its accuracy in the latest "
                                f"version, and the drop. Computed by predicting every version on the {how}."))
    else:
        per_inc = analysis.forgetting_per_increment(data.accuracy_matrix)
        if not per_inc.empty:
            sections.append(Section("Forgetting per increment", save(plots.forgetting(per_inc, "increment"),
                                                                     "forgetting.png"),
                                    "Per-class data is absent (" + how + "), so forgetting is shown per increment, "
                                    "from the accuracy matrix."))
    if not data.rounds.empty:
        failed = analysis.failed(data.trials)
        sections.append(Section("Candidates per round", save(plots.candidates(data.trials, data.rounds),
                                                             "candidates.png"),
                                "Every candidate that ran, at its measured marginal FLOPs; dashed: the round's budget; "
                                "squares: the feasible Pareto front; star: the committed candidate.",
                                [(f"candidates that failed or never started, with the reason: {_reasons(failed)}",
                                  failed)]
                                if not failed.empty else []))
        sections.append(Section("Compute per round", save(plots.spend(data.rounds), "spend.png"),
                                "Marginal compute each round spent, its budget, and what retraining jointly on all "
                                "data seen so far would have cost.", [("rounds", data.rounds)]))
    if not preds.empty:
        version = int(preds["version"].max())
        sections.append(Section("Confusion matrix", save(plots.confusion(analysis.confusion(preds), version),
                                                         "confusion.png"),
                                f"v{version} predicting the {how}. Cells: image counts; colour: share of the true "
                                "class."))
        summary.append(f"confusion matrix and per-class forgetting: {how}")
    else:
        summary.append(f"confusion matrix: {how}")
    log = analysis.corrections(run)
    if log is not None and len(log):
        sections.append(Section("Corrections over time", save(plots.corrections(log), "corrections.png"),
                                f"{len(log)} corrections from corrections.sqlite, cumulative."))
    if predict:
        sections += _video_sections(run, folder, videos, max_videos, summary, say)
    elif videos:
        raise ReportError("--video needs the model to run; drop --no-predict")
    say(f"report: {len(sections)} figures from {run.path}")
    return sections, summary


def _video_sections(run, folder: Path, videos: list[str], limit: int, summary: list[str],
                    say: Callable[[str], None]) -> list[Section]:
    """One keyframe strip per video: each shot's middle frame with the latest model's label."""
    from evo.active import Corrections
    from evo.active.video import predict_video
    from evo.data.video.strip import shot_strip

    for v in videos:
        if not Path(v).is_file():
            raise ReportError(f"--video {v}: no such file")
    held, how = analysis.test_videos(run, limit) if limit > 0 else (pd.DataFrame(), "")
    wanted = [(v, None) for v in videos] + [(p, t) for p, t in zip(held["path"], held["truth"], strict=True)
                                            if p not in videos]
    if not wanted:
        return []
    out = []
    with Corrections.open(run.path, write=False) as eng:
        for i, (path, truth) in enumerate(wanted):
            say(f"report: predicting the shots of {path}")
            pred = predict_video(eng, path)
            name = f"video_{i}.png"
            shot_strip(pred).save(folder / name)
            shots = pd.DataFrame([s.to_dict() for s in pred.shots]).drop(columns=["top"])
            clip = f"whole clip: {pred.label} (p={pred.probability:.2f})" + (f"; true class {truth}" if truth else "")
            out.append(Section(f"Video shots: {Path(path).name}", name,
                               f"{path}: the middle keyframe of each of its {len(pred.shots)} shots, captioned "
                               f"'shot: predicted class, probability' and its time span, predicted by "
                               f"{eng.model_version} at 2 frames/s. {clip}.", [("shots", shots)]))
    summary.append(f"video strips: {len(out)} video(s)" + (f"; {how}" if len(held) else ""))
    return out


def _reasons(failed: pd.DataFrame) -> str:
    """'55 over budget, 18 duplicate of trial' from the fail reasons (their text before a colon or number)."""
    kinds = failed["fail_reason"].fillna("no reason recorded").str.replace(r"[:\d].*$", "", regex=True).str.strip()
    return ", ".join(f"{n} {k}" for k, n in kinds.value_counts().items())


# ---- writers ------------------------------------------------------------------------------------------

_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1180px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:2em}img{max-width:100%;height:auto;display:block;margin:.6em 0;border:1px solid #eee}
table{border-collapse:collapse;font-size:.8em;margin:.6em 0;display:block;overflow-x:auto}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}th{background:#f4f6fb}.caption{color:#555}
ul.summary li{margin:.2em 0}nav a{margin-right:1em}details{margin:.8em 0}summary{cursor:pointer}"""


def _html(name: str, sections: list[Section], summary: list[str], folder: Path) -> str:
    esc = html.escape
    nav = " ".join(f'<a href="#s{i}">{esc(s.title)}</a>' for i, s in enumerate(sections))
    body = []
    for i, s in enumerate(sections):
        body.append(f'<h2 id="s{i}">{esc(s.title)}</h2>')
        if s.png:
            data = base64.b64encode((folder / s.png).read_bytes()).decode()
            body.append(f'<img alt="{esc(s.title)}" src="data:image/png;base64,{data}">')
        body.append(f'<p class="caption">{esc(s.caption)}</p>')
        for title, df in s.tables:
            table = df.map(_cell).to_html(index=False, border=0, escape=True)
            if len(df) > 12:  # long lists fold away; the summary line still says what is in them
                body.append(f"<details><summary><b>{esc(title)}</b> ({len(df)} rows; click to show)</summary>"
                            f"{table}</details>")
            else:
                body.append(f"<h3>{esc(title)}</h3>{table}")
    items = "".join(f"<li>{esc(x)}</li>" for x in summary)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>evo report: {esc(name)}</title>'
            f'<link rel="icon" href="data:,"><style>{_CSS}</style></head><body><h1>evo report: {esc(name)}</h1>'
            f'<p class="caption">generated {time.strftime("%Y-%m-%d %H:%M:%S")} by <code>evo report</code></p>'
            f'<ul class="summary">{items}</ul><nav>{nav}</nav>{"".join(body)}</body></html>\n')


def _markdown(name: str, summary: list[str], sections: list[Section]) -> str:
    lines = [f"# evo report: {name}", ""] + [f"- {x}" for x in summary] + ["", "Figures (open index.html):", ""]
    lines += [f"- {s.title}: `{s.png}`" for s in sections if s.png]
    return "\n".join(lines) + "\n"


def _cell(x: object) -> str:
    """Table cells: missing as '-', FLOPs and other large or fractional numbers in 4 significant digits."""
    if x is None or (not isinstance(x, str) and pd.isna(x)):
        return "-"
    if isinstance(x, bool | np.bool_):
        return str(bool(x))
    if isinstance(x, float | np.floating) or (isinstance(x, int | np.integer) and abs(x) >= 10**7):
        return f"{x:.4g}"
    return str(x)


# ---- atomic replace -----------------------------------------------------------------------------------

_OURS = {".png", ".html", ".md"}
REPORT_MARKER = ".evo-report.json"  # names the files evo wrote into a report folder: all it will replace


def _unwritable(out: Path, e: OSError) -> ReportError:
    return ReportError(f"cannot write the report folder {out} ({e.strerror or e}); pass --out to a folder you can write")


def _check_replaceable(out: Path, legacy_ok: bool = False, shown: Path | None = None) -> None:
    """An existing `out` is replaced only if evo wrote it: its marker lists exactly the files it holds
    (a user's file added since, or a folder that merely looks like a report, is never deleted). Reports
    written before the marker existed are recognised only as a run's own `report/` folder, which is
    evo's (index.html, summary.md, nothing but .png/.html/.md files)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ReportError(f"{shown or out} is a file; pass --out to a new folder")
    ours = marked_folder(out, REPORT_MARKER)
    if ours is None:
        ours = legacy_ok and {"index.html", "summary.md"} <= {p.name for p in out.iterdir()} \
            and all(p.is_file() and not p.is_symlink() and p.suffix in _OURS for p in out.iterdir())
    if not ours:
        raise ReportError(f"{shown or out} exists and is not an evo report folder (or holds files evo did not write there); "
                          "pass --out to a new folder, or move it away")


def _swap(staging: Path, out: Path, legacy_ok: bool) -> None:
    """Rename the finished report into place; an older report is moved aside first, checked again (the
    build took minutes, and a file saved into it meanwhile is not evo's), then deleted."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / "report")
    try:
        if old is not None:
            _check_replaceable(old / "report", legacy_ok, shown=out)
        os.replace(staging, out)
    except (OSError, ReportError):
        if old is not None:
            os.replace(old / "report", out)
            old.rmdir()
            old = None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
