"""A network that runs out of capacity: the growth search against the same pipeline without growth.

`search_spaces/capacity_small_cnn.yaml`: a narrow small_cnn (width 4, random init) learns Split
Fashion-MNIST class by class, every round training the whole net on the increment plus stored images of
everything seen (a latent store cut at the input), under the same flat per-round budget. The growth
arm may `scale_width`, `widen` or `deepen`; the baseline is the same file with `max_ops: 0, min_ops: 0`.
For each seed (class order, subsets, the net's initial weights) both arms run; the table gives final accuracy, the
difference, what each round chose, and how the architecture grew (weight layers, widths, parameters).

    .venv/bin/python benchmarks/capacity.py --seeds 0 1 2 3 4 --out benchmarks/capacity_results.json
    .venv/bin/python benchmarks/capacity.py --budget-flops 8e12 --out ...               # another budget
    .venv/bin/python benchmarks/capacity.py --per-class-train 6000 --per-class-test 1000 --budget-flops 2.4e13 \
        --out benchmarks/capacity_full.json                                             # all the data, 6x the budget
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_vs_baselines import run_one  # noqa: E402  the one way a benchmark runs a space

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"growth": {}, "no growth": {"max_ops": 0, "min_ops": 0},
        # a reference, not a baseline: the same pipeline on a net born 4x wider (what capacity is worth)
        "no growth, width 16": {"max_ops": 0, "min_ops": 0, "width": 16}}


def architecture_by_version(run_dir: Path) -> list[dict]:
    """Per version: weight layers (depth), every conv's width in order, and the parameter count."""
    import evo.analysis as ea
    from evo.runs import Run

    arch = ea.architecture(run_dir)
    run = Run.open(run_dir)
    out = []
    for v in run.versions()[1:]:
        rows = arch[arch.version == v].sort_values("position")
        convs = rows[rows.op == "conv2d"]
        out.append({"version": v, "weight_layers": len(rows), "conv_widths": [int(w) for w in convs.width],
                    "params": run.version_meta(v).get("params")})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", type=Path, default=ROOT / "search_spaces" / "capacity_small_cnn.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=None, help="write every run's results as JSON")
    ap.add_argument("--keep", type=Path, default=None, help="keep the run folders here (default: a temp folder)")
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), default=["growth", "no growth"])
    ap.add_argument("--budget-flops", type=float, default=None,
                    help="every arm's flat per-round budget in FLOPs (default: the space's)")
    ap.add_argument("--per-class-train", type=int, default=None,
                    help="training images per class (default: the space's; Fashion-MNIST has 6,000)")
    ap.add_argument("--per-class-test", type=int, default=None,
                    help="test images per class (default: the space's; Fashion-MNIST has 1,000)")
    args = ap.parse_args(argv)

    from evo.search.cluster import connect

    info = connect(num_cpus=2)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    print(f"Ray: {info.cpus:g} CPUs, {info.gpus:g} GPUs; space {args.space.name}; seeds {args.seeds}; {stamp}",
          flush=True)
    base = yaml.safe_load(args.space.read_text())
    results: dict[str, dict[int, dict]] = {arm: {} for arm in args.arms}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            for arm in args.arms:
                change = dict(ARMS[arm])
                doc = json.loads(json.dumps(base))
                doc["scenario"]["seed"] = seed
                for key in ("per_class_train", "per_class_test"):
                    if getattr(args, key) is not None:
                        doc["scenario"][key] = getattr(args, key)
                doc["model"].setdefault("options", {}).update(seed=seed, **({"width": change.pop("width")}
                                                                            if "width" in change else {}))
                doc.update(change)
                if args.budget_flops:
                    doc["budget"] = {**doc["budget"], "flops": args.budget_flops}
                run_dir = root / (re.sub(r"\W+", "_", arm) + f"-{seed}")
                print(f"seed {seed}: {arm}", flush=True)
                r = run_one(doc, run_dir)
                r["architecture"] = architecture_by_version(run_dir)
                results[arm][seed] = r
                last = r["architecture"][-1]
                print(f"  final {100 * r['final_accuracy']:.2f}%  chosen {r['chosen']}  "
                      f"{sum(r['flops']) / 1e12:.2f} TFLOPs  {r['seconds']:.0f}s  params {last['params']}  "
                      f"convs {last['conv_widths']}", flush=True)
                if args.out:
                    args.out.write_text(json.dumps({"date": stamp, "space": base, "results": results}, indent=1))
    print()
    for arm, per_seed in results.items():
        accs = [per_seed[s]["final_accuracy"] for s in args.seeds]
        print(f"{arm:<20} " + " ".join(f"{100 * a:7.2f}%" for a in accs) + f"  mean {100 * statistics.mean(accs):.2f}%")
    if not {"growth", "no growth"} <= set(results):
        return 0
    diffs = [results["growth"][s]["final_accuracy"] - results["no growth"][s]["final_accuracy"] for s in args.seeds]
    print("growth - no growth: " + " ".join(f"{100 * d:+.2f}" for d in diffs)
          + f" points; growth ahead by >= 3 points on {sum(d >= 0.03 for d in diffs)}/{len(diffs)} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
