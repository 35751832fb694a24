"""Issue 14's full-data search with a latent store, summarised per round: what each round chose, its test
accuracy, its spend against budget and joint retraining, and every trial.

Runs `evo launch SPACE --run-dir RUN` for each `--run` not yet in its folder (a folder that holds a run is
resumed, so a stopped benchmark goes on where it stopped), then reads the run folders (version meta and
`metrics/round_<i>.json`) into one JSON. `--baseline` adds the same space with `policy: fast_path`.

    .venv/bin/python benchmarks/latent_full.py --space search_spaces/fashion_latent_full.yaml \\
        --run-dir /tmp/latent_full --seeds 0 --baseline --out benchmarks/results/fashion_latent_full_balanced.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def summarize(run_dir: Path) -> list[dict]:
    """One row per committed round (version 1 onwards), from the run folder alone."""
    from evo.runs import Run

    run = Run.open(run_dir)
    rows = []
    for v in run.versions()[1:]:
        meta = run.version_meta(v)
        i = meta["increment"]
        metrics = json.loads((run_dir / "metrics" / f"round_{i}.json").read_text())
        rows.append({
            "round": i, "chosen": meta.get("chosen"), "accuracy": meta["metrics"]["accuracy"],
            "row": meta["metrics"].get("row"), "spent_flops": metrics["spent_flops"],
            "budget_flops": metrics["budget_flops"], "joint_flops": metrics["joint_flops"],
            "heldout_flops": (meta.get("heldout") or {}).get("flops"), "seconds": metrics["timing"]["seconds"],
            "latents": {k: meta.get("latents", {}).get(k) for k in ("live_rows", "live_bytes", "eviction")},
            "trials": [{"candidate": t.get("candidate"), "state": t.get("state"), "val_accuracy": t.get("val_accuracy"),
                        "accuracy": t.get("accuracy"), "flops": t.get("flops"), "price_flops": t.get("price_flops"),
                        "fail_reason": t.get("fail_reason")} for t in metrics["trials"]],
        })
    return rows


def _space_file(space: Path, seed: int, policy: str | None, folder: Path) -> Path:
    doc = yaml.safe_load(space.read_text())
    doc["scenario"]["seed"] = seed
    doc.setdefault("name", space.stem)
    if policy:
        doc["policy"] = policy
        doc["name"] = f"{doc['name']}_{policy}"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{doc['name']}_seed{seed}.yaml"
    out.write_text(yaml.safe_dump(doc))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--space", type=Path, default=ROOT / "search_spaces" / "fashion_latent_full.yaml")
    p.add_argument("--run-dir", type=Path, required=True, help="folder for the run folders (kept: resumable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--baseline", action="store_true", help="also the space with policy: fast_path")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    command = " ".join([Path(sys.executable).name, Path(__file__).name, *(sys.argv[1:] if argv is None else argv)])
    runs: dict[str, list[dict]] = {}
    for seed in args.seeds:
        for policy in [None] + (["fast_path"] if args.baseline else []):
            label = f"{'search' if policy is None else policy} ({args.space.name}), seed {seed}"
            space = _space_file(args.space, seed, policy, args.run_dir / "spaces")
            run = args.run_dir / space.stem
            cmd = [sys.executable, "-m", "evo.cli"] + (["resume", str(run)] if (run / "run.json").exists()
                                                      else ["launch", str(space), "--run-dir", str(run)])
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
            runs[label] = summarize(run)
            print(f"{label}: " + " ".join(f"{r['accuracy']:.4f}" for r in runs[label]), flush=True)
            _write(args.out, command, runs)  # after every run: a later failure keeps what finished
    print(f"wrote {args.out}")
    return 0


def _write(path: Path, command: str, runs: dict[str, list[dict]]) -> None:
    from evo.fsutil import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.node()} ({platform.platform()}, {len(os.sched_getaffinity(0))} CPUs)"
    write_json_atomic(path, {"date": datetime.date.today().isoformat(), "machine": machine, "command": command,
                             "runs": runs})


if __name__ == "__main__":
    raise SystemExit(main())
