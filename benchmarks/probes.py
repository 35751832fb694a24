"""Reliability probes: bad inputs and faults against the `evo` CLI, tallied as a new user would meet them.

Each probe runs one `evo` command in a subprocess against small real inputs (digits images, small_cnn,
a real `evo learn` run) and is classified:
- ok: the command succeeded where it should;
- clean: exit code 2 with one readable line on stderr and no traceback;
- traceback: any Python traceback, or a crash exit code;
- corrupted: a committed version, a run's files or a folder that is not evo's changed when the
  command should not have changed it (checked by hashing every file before and after).

    .venv/bin/python benchmarks/probes.py            # prints the tally and a line per probe
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def evo(*args: str, cwd: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "evo.cli", *args], capture_output=True, text=True, timeout=600,
                          env=env, cwd=cwd, input=stdin)


def tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


def digits(root: Path, labels, n: int = 12, size: int = 32, offset: int = 0) -> Path:
    from sklearn.datasets import load_digits

    d = load_digits()
    count = {lab: 0 for lab in labels}
    for i, (img, lab) in enumerate(zip(d.images, d.target, strict=True)):
        if lab in count and i >= offset and count[lab] < n:
            (root / f"d{lab}").mkdir(parents=True, exist_ok=True)
            Image.fromarray((img * 15).astype(np.uint8)).resize((size, size)).save(root / f"d{lab}" / f"{i}.png")
            count[lab] += 1
    return root


@dataclass
class Probe:
    name: str
    args: Callable[[Path], list[str]]
    expect: str = "clean"  # "clean" (exit 2, one line) or "ok"
    watch: Callable[[Path], list[Path]] = lambda w: [w / "run"]  # folders that must not change
    cwd: Callable[[Path], Path] | None = None


def _space(w: Path, **edits) -> str:
    import yaml

    doc = {"name": "tiny", "scenario": {"kind": "class_incremental", "source": "digits", "increments": 2, "seed": 0,
                                        "per_class_train": 20, "per_class_test": 10},
           "model": {"name": "small_cnn", "input_size": 32}, "memory": 100,
           "training": {"strategy": ["evo"], "taps": "features"}, "budget": {"fraction_of_joint": 2.0},
           "trials": 2, "concurrency": 1}
    for key, value in edits.items():
        section, _, leaf = key.partition("__")
        if leaf:
            doc[section][leaf] = value
        else:
            doc[section] = value
    p = w / f"space-{abs(hash(json.dumps(edits, sort_keys=True))) % 10**8}.yaml"
    p.write_text(yaml.safe_dump(doc))
    return str(p)


def _file(w: Path, name: str, data: bytes | str) -> str:
    p = w / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(p)


def _not_a_run(w: Path) -> Path:
    p = w / "notarun"
    if not p.exists():
        p.mkdir()
        subprocess.run(["git", "init", "-q", str(p)], check=True)
        (p / "config.json").write_text("{}")
        (p / ".env").write_text("S=1\n")
    return p


def probes() -> list[Probe]:
    run = lambda w: str(w / "run")  # noqa: E731
    new = lambda w: str(w / "new-run")  # noqa: E731
    data = lambda w: str(w / "more")  # noqa: E731
    nar = lambda w: [_not_a_run(w), w / "run"]  # noqa: E731
    return [
        # run folders
        Probe("status of a folder that is not a run", lambda w: ["status", str(_not_a_run(w))], watch=nar),
        Probe("resume of a folder that is not a run", lambda w: ["resume", str(_not_a_run(w))], watch=nar),
        Probe("learn into a folder that is not a run", lambda w: ["learn", str(_not_a_run(w)), "--data", data(w)],
              watch=nar),
        Probe("status of a missing folder", lambda w: ["status", str(w / "missing")]),
        Probe("status of a file", lambda w: ["status", _file(w, "afile.txt", "x")]),
        Probe("status of a good run (read-only)", lambda w: ["status", run(w)], expect="ok"),
        Probe("resume of a learn run", lambda w: ["resume", run(w)]),
        Probe("run.json that is not JSON", lambda w: ["status", str(_bad_marker(w, "{"))]),
        Probe("run.json of another format version", lambda w: ["status", str(_bad_marker(w, '{"format": "evo-run", '
                                                                                          '"version": 99}'))]),
        # learn: options
        Probe("learn --memory -5", lambda w: ["learn", "small_cnn", "--data", data(w), "--run-dir", new(w),
                                              "--memory", "-5"]),
        Probe("learn --memory 0", lambda w: ["learn", "small_cnn", "--data", data(w), "--run-dir", new(w),
                                             "--memory", "0"]),
        Probe("learn --memory abc", lambda w: ["learn", "small_cnn", "--data", data(w), "--memory", "abc"]),
        Probe("learn --strategy magic", lambda w: ["learn", "small_cnn", "--data", data(w), "--run-dir", new(w),
                                                   "--strategy", "magic"]),
        Probe("learn --head sideways", lambda w: ["learn", "small_cnn", "--data", data(w), "--head", "sideways"]),
        Probe("learn --input-size 0", lambda w: ["learn", "small_cnn", "--data", data(w), "--input-size", "0"]),
        Probe("learn with no --data", lambda w: ["learn", "small_cnn"]),
        Probe("learn an unknown model", lambda w: ["learn", "no_such_model", "--data", data(w), "--run-dir", new(w)]),
        Probe("learn --run-dir naming a file", lambda w: ["learn", "small_cnn", "--data", data(w), "--run-dir",
                                                          _file(w, "afile.txt", "x")]),
        Probe("learn --run-dir naming a non-empty folder", lambda w: ["learn", "small_cnn", "--data", data(w),
                                                                      "--run-dir", str(_not_a_run(w))], watch=nar),
        # learn: data
        Probe("learn --data missing folder", lambda w: ["learn", run(w), "--data", str(w / "missing")]),
        Probe("learn --data folder (a source name)", lambda w: ["learn", run(w), "--data", "folder"]),
        Probe("learn --data digits with no such folder", lambda w: ["learn", run(w), "--data", "digits"]),
        Probe("learn --data builtin:nothing", lambda w: ["learn", run(w), "--data", "builtin:nothing"]),
        Probe("learn --data a non-CSV file", lambda w: ["learn", run(w), "--data", _file(w, "x.txt", "a,b")]),
        Probe("learn --data an empty CSV", lambda w: ["learn", run(w), "--data", _file(w, "empty.csv", "")]),
        Probe("learn --data CSV with a one-field row", lambda w: ["learn", run(w), "--data",
                                                                   _file(w, "bad.csv", "a.png\n")]),
        Probe("learn --data CSV naming a missing image", lambda w: ["learn", run(w), "--data",
                                                                     _file(w, "m.csv", "nope.png,a\nnope2.png,b\n")]),
        Probe("learn --data CSV escaping its root", lambda w: ["learn", run(w), "--data",
                                                                _file(w, "esc.csv", "../../etc/passwd,a\n")]),
        Probe("learn --data a file under two labels", lambda w: ["learn", run(w), "--data", _two_labels(w)]),
        Probe("learn --data an empty folder", lambda w: ["learn", run(w), "--data", str(_mkdir(w / "emptydir"))]),
        Probe("learn --data folder of non-images", lambda w: ["learn", run(w), "--data", _non_images(w)]),
        Probe("learn --data all images corrupt", lambda w: ["learn", run(w), "--data", _corrupt(w)]),
        Probe("learn the same images again", lambda w: ["learn", run(w), "--data", str(w / "first")]),
        Probe("learn one class only into a new run", lambda w: ["learn", "small_cnn", "--data", _one_class(w),
                                                                "--run-dir", new(w)]),
        Probe("learn a class name the model has", lambda w: ["learn", "small_cnn", "--data", _class4(w),
                                                             "--run-dir", new(w)]),
        Probe("learn into a search run", lambda w: ["learn", str(_search_run(w)), "--data", data(w)],
              watch=lambda w: [_search_run(w)]),
        # models
        Probe("inspect an unknown model", lambda w: ["inspect", "resnet999"]),
        Probe("inspect --input-size -3", lambda w: ["inspect", "small_cnn", "--input-size", "-3"]),
        Probe("inspect a folder without graph.json", lambda w: ["inspect", str(_mkdir(w / "emptymodel"))]),
        Probe("inspect a corrupt weights file", lambda w: ["inspect", _corrupt_model(w)]),
        Probe("inspect a model with an int64 weight", lambda w: ["inspect", _int_model(w)]),
        Probe("inspect graph.json that is not JSON", lambda w: ["inspect", _bad_graph_json(w)]),
        # launch / spaces
        Probe("launch a missing space file", lambda w: ["launch", str(w / "nospace.yaml")]),
        Probe("launch invalid YAML", lambda w: ["launch", _file(w, "bad.yaml", "a: [1, 2\n")]),
        Probe("launch per_class_train -5", lambda w: ["launch", _space(w, scenario__per_class_train=-5),
                                                      "--run-dir", new(w)]),
        Probe("launch a missing source path", lambda w: ["launch", _space(w, scenario__source="/no/such"),
                                                         "--run-dir", new(w)]),
        Probe("launch an unknown source name", lambda w: ["launch", _space(w, scenario__source="magic"),
                                                          "--run-dir", new(w)]),
        Probe("launch an unknown model", lambda w: ["launch", _space(w, model__name="nope"), "--run-dir", new(w)]),
        Probe("launch a negative lr", lambda w: ["launch", _space(w, training={"strategy": ["evo_tune"], "lr": -1.0}),
                                                 "--run-dir", new(w)]),
        Probe("launch memory 0", lambda w: ["launch", _space(w, memory=0), "--run-dir", new(w)]),
        Probe("launch an unknown operator", lambda w: ["launch", _space(w, operators={"shrink": {}}),
                                                       "--run-dir", new(w)]),
        Probe("launch --run-dir naming a file", lambda w: ["launch", _space(w), "--run-dir",
                                                           _file(w, "afile.txt", "x")]),
        Probe("launch into an existing run", lambda w: ["launch", _space(w), "--run-dir", run(w)]),
        Probe("launch a bad storage URL", lambda w: ["launch", _space(w), "--run-dir", new(w), "--storage",
                                                     "ftp://x"]),
        Probe("launch an unreachable Ray address", lambda w: ["launch", _space(w), "--run-dir", new(w),
                                                              "--ray-address", "127.0.0.1:1"]),
        Probe("launch --num-cpus 0", lambda w: ["launch", _space(w), "--num-cpus", "0"]),
        # found by the 2026-12-04 sweep of search-space options (each was a traceback, a run folder left
        # behind, or silently accepted)
        Probe("launch joint_epochs 'x'", lambda w: ["launch", _space(w, budget={"fraction_of_joint": 2.0,
                                                                              "joint_epochs": "x"}), "--run-dir", new(w)]),
        Probe("launch per_class_test 0", lambda w: ["launch", _space(w, scenario__per_class_test=0), "--run-dir", new(w)]),
        Probe("launch a range's log 'false'", lambda w: ["launch", _space(w, training={
            "strategy": ["evo_tune"], "lr": {"low": 0.001, "high": 0.01, "log": "false"}}), "--run-dir", new(w)]),
        Probe("launch a binary space file", lambda w: ["launch", _file(w, "binary.yaml", bytes(range(256)) * 4),
                                                       "--run-dir", new(w)]),
        Probe("launch a YAML alias bomb", lambda w: ["launch", _file(w, "laughs.yaml", _laughs()), "--run-dir", new(w)]),
        Probe("launch --run-dir under a file", lambda w: ["launch", _space(w), "--run-dir",
                                                          _file(w, "afile.txt", "x") + "/sub"]),
        Probe("launch a latent seed 'x'", lambda w: ["launch", _space(w, **_latent({"seed": "x"})), "--run-dir", new(w)]),
        Probe("launch a cut the model lacks", lambda w: ["launch", _space(w, **_latent({"cut": "nosuch"})),
                                                         "--run-dir", new(w)]),
        Probe("launch a store budget of 1 byte", lambda w: ["launch", _space(w, **_latent({"budget_mb": 1e-6})),
                                                            "--run-dir", new(w)]),
        Probe("launch taps naming a missing node", lambda w: ["launch", _space(w, training={
            "strategy": ["evo"], "taps": [[["nosuch", 1]]]}), "--run-dir", new(w)]),
        # found by the 2026-12-04 session-23 review of the sweep's open items
        Probe("launch trainable 40 on a 5-block net", lambda w: ["launch", _space(w, training={
            "strategy": ["evo_tune"], "trainable": [1, 40]}), "--run-dir", new(w)]),
        Probe("launch a budget round 0 cannot afford", lambda w: ["launch", _space(w, budget={"flops": 1000}),
                                                                  "--run-dir", new(w)]),
        Probe("learn --strategy evo_latent", lambda w: ["learn", "small_cnn", "--data", data(w), "--strategy",
                                                        "evo_latent", "--run-dir", new(w)]),
        Probe("report --videos -1", lambda w: ["report", run(w), "--videos", "-1"]),
        # found by the session-23 sweep of the corrections commands and evo serve (tracebacks, a user's files
        # deleted, files written by refused or read-only commands)
        Probe("report --out a user's folder that looks like a report", lambda w: [
            "report", run(w), "--no-predict", "--out", str(_lookalike(w))], watch=lambda w: [_lookalike(w), w / "run"]),
        Probe("report --out under a file", lambda w: ["report", run(w), "--no-predict", "--out",
                                                      _file(w, "afile.txt", "x") + "/sub"]),
        Probe("status with a truncated meta.json", lambda w: ["status", str(_damaged(w, "meta.json", b'{"incr'))],
              watch=lambda w: [_damaged(w, "meta.json", b'{"incr')]),
        Probe("predict with a truncated state.safetensors", lambda w: [
            "predict", str(_damaged(w, "state.safetensors", b"\x10\x00")), _an_image(w)],
            watch=lambda w: [_damaged(w, "state.safetensors", b"\x10\x00")]),
        Probe("correct a zero-byte image", lambda w: ["correct", run(w), _file(w, "zero.png", b""), "--label", "d0"]),
        Probe("undo a 23-digit id", lambda w: ["undo", run(w), "9" * 23]),
        Probe("suggest --seed -1", lambda w: ["suggest", run(w), "--pool", str(w / "more"), "--seed", "-1"]),
        Probe("predict --strip into a missing folder", lambda w: ["predict", run(w), _an_image(w), "--strip",
                                                                  str(w / "no" / "dir" / "s.png")]),
        Probe("predict with version 0 (before learning)", lambda w: ["predict", run(w), _an_image(w), "--version", "0"]),
        Probe("predict a 12000x12000 image", lambda w: ["predict", run(w), _huge(w)]),
        Probe("unknown command", lambda w: ["frobnicate"]),
    ]


def _latent(latents: dict) -> dict:
    """`_space` edits for a space with a latent store (evo_latent above the cut) with `latents` changed."""
    return {"latents": {"cut": 1, "codec": "fp16", **latents},
            "training": {"strategy": ["evo", "evo_latent"], "taps": "features", "epochs": 1}}


def _laughs() -> str:
    """700 bytes of YAML aliases of aliases that expand to a million values."""
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"{k}: &{k} [{', '.join([f'*{j}'] * 10)}]" for j, k in zip("abcde", "bcdef", strict=True)]
    return "\n".join(lines) + "\n"


def _lookalike(w: Path) -> Path:
    """A user's folder with an index.html and a summary.md beside their own files."""
    p = w / "mysite"
    if not p.exists():
        for name, text in (("index.html", "<h1>home</h1>"), ("summary.md", "notes"), ("thesis.md", "keep me")):
            _file(w, f"mysite/{name}", text)
    return p


def _damaged(w: Path, name: str, content: bytes) -> Path:
    """A copy of the reference run with versions/1/`name` replaced by `content`."""
    import shutil

    p = w / f"damaged-{name}"
    if not p.exists():
        shutil.copytree(w / "run", p)
        (p / "versions" / "1" / name).write_bytes(content)
    return p


def _an_image(w: Path) -> str:
    return str(sorted((w / "first" / "d0").iterdir())[0])


def _huge(w: Path) -> str:
    p = w / "huge.png"
    if not p.exists():
        Image.new("L", (12000, 12000)).save(p)
    return str(p)


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _bad_marker(w: Path, text: str) -> Path:
    p = _mkdir(w / f"badmarker{abs(hash(text)) % 1000}")
    (p / "run.json").write_text(text)
    return p


def _two_labels(w: Path) -> str:
    first = sorted((w / "first" / "d0").iterdir())[0]
    return _file(w, "two.csv", f"{first},a\n{first},b\n")


def _non_images(w: Path) -> str:
    _file(w, "nonimg/a/readme.txt", "hello")
    return str(w / "nonimg")


def _corrupt(w: Path) -> str:
    for c in ("a", "b"):
        _file(w, f"corrupt/{c}/x.png", b"not a png")
    return str(w / "corrupt")


def _one_class(w: Path) -> str:
    return str(digits(w / "oneclass", [7], n=8))


def _class4(w: Path) -> str:
    root = w / "class4"
    if not root.exists():
        for name, base in (("class_4", 0), ("other", 130)):
            for i in range(5):
                Image.fromarray(np.full((32, 32, 3), base + 20 * i, np.uint8)).save(_mkdir(root / name) / f"{i}.png")
    return str(root)


def _search_run(w: Path) -> Path:
    p = w / "searchrun"
    if not p.exists():
        from evo.runs import Run

        Run.create(p, {"space": {}}, kind="search")
    return p


def _corrupt_model(w: Path) -> str:
    import evo
    import evo.graph as eg

    p = w / "corruptmodel"
    if not p.exists():
        eg.save(evo.zoo.load("small_cnn"), p)
        (p / "weights.safetensors").write_bytes(b"garbage")
    return str(p)


def _int_model(w: Path) -> str:
    from safetensors.torch import load_file, save_file

    import evo
    import evo.graph as eg

    p = w / "intmodel"
    if not p.exists():
        eg.save(evo.zoo.load("small_cnn"), p)
        t = load_file(str(p / "weights.safetensors"))
        k = next(k for k in t if k.endswith("weight"))
        import torch

        t[k] = t[k].to(torch.int64)
        save_file(t, str(p / "weights.safetensors"))
    return str(p)


def _bad_graph_json(w: Path) -> str:
    import evo
    import evo.graph as eg

    p = w / "badjson"
    if not p.exists():
        eg.save(evo.zoo.load("small_cnn"), p)
        (p / "graph.json").write_text("{nope")
    return str(p)


def classify(probe: Probe, proc: subprocess.CompletedProcess) -> str:
    if "Traceback" in proc.stderr or proc.returncode not in (0, 2):
        return "traceback"
    if probe.expect == "ok":
        return "ok" if proc.returncode == 0 else "unexpected"
    lines = proc.stderr.strip().splitlines()
    return "clean" if proc.returncode == 2 and len(lines) == 1 else "unexpected"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None, help="also write the tally and rows to this file")
    args = ap.parse_args()
    rows, tally = [], {"probes": 0, "ok": 0, "clean": 0, "traceback": 0, "unexpected": 0, "corrupted": 0}
    with tempfile.TemporaryDirectory() as tmp:
        w = Path(tmp)
        first = digits(w / "first", [0, 1])
        digits(w / "more", [2, 3], offset=900)
        base = evo("learn", "small_cnn", "--data", str(first), "--run-dir", str(w / "run"), "--no-progress")
        if base.returncode != 0:
            sys.exit(f"could not make the reference run: {base.stderr}")
        for probe in probes():
            args_ = probe.args(w)
            watched = {p: tree_hash(p) for p in probe.watch(w) if p.exists()}
            proc = evo(*args_)
            outcome = classify(probe, proc)
            corrupted = any(tree_hash(p) != h for p, h in watched.items()) or (w / "new-run").exists()
            if (w / "new-run").exists():
                import shutil

                shutil.rmtree(w / "new-run")
            tally["probes"] += 1
            tally[outcome] += 1
            tally["corrupted"] += int(corrupted)
            line = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
            rows.append({"probe": probe.name, "exit": proc.returncode, "outcome": outcome, "corrupted": corrupted,
                         "message": line[:200]})
            print(f"{outcome:<10} {'CORRUPTED ' if corrupted else ''}{probe.name:<45} exit {proc.returncode}  "
                  f"{line[:110]}", flush=True)
    print(json.dumps(tally))
    if args.json:
        Path(args.json).write_text(json.dumps({"tally": tally, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
