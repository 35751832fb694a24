"""The growth search against its two baselines on the same stream and budget, over several seeds.

For each seed (the class order and the samplers), the same search space is run three times with
`policy` set to:
  search     Optuna proposes candidates (the no-growth fast path always among them), ranked on held-out
             validation images, the best committed;
  fast_path  never grow: the `evo` fast path every round;
  random     one random growth per round (ops, sites, parameters and training drawn at random within
             the same budget), committed without judging it.
Final accuracy is on the test split of all 10 classes (never used for choosing).

    .venv/bin/python benchmarks/search_vs_baselines.py                       # fashion_cil, seeds 0 1 2
    .venv/bin/python benchmarks/search_vs_baselines.py --per-class-train 100 --seeds 0 --trials 3 \
        --budget-fraction 3                                                  # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ("search", "fast_path", "random")


def run_one(doc: dict, run_dir: Path) -> dict:
    from evo.runs import Run
    from evo.search.launch import launch

    space_file = run_dir.with_suffix(".yaml")
    space_file.write_text(yaml.safe_dump(doc))
    t0 = time.perf_counter()
    results = launch(space_file, run_dir=run_dir, say=lambda s: print("   ", s, flush=True) if s.startswith("round") else None)
    wall = time.perf_counter() - t0
    run = Run.open(run_dir)
    metas = [run.version_meta(n) for n in run.versions()[1:]]
    return {
        "final_accuracy": results[-1].accuracy,
        "accuracy": [r.accuracy for r in results],
        "average_incremental_accuracy": metas[-1]["metrics"].get("average_incremental_accuracy"),
        "forgetting": results[-1].forgetting,
        "chosen": [r.chosen for r in results],
        "flops": [r.flops_spent for r in results],
        "budget_flops": [r.budget_flops for r in results],
        "joint_ratio": [r.joint_ratio for r in results],
        "params": metas[-1].get("params"),
        "seconds": wall,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", type=Path, default=ROOT / "search_spaces" / "fashion_cil.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    ap.add_argument("--per-class-train", type=int, default=None, help="cap training images per class (default: all)")
    ap.add_argument("--trials", type=int, default=None, help="override the space's trials per round")
    ap.add_argument("--budget-fraction", type=float, default=None,
                    help="override budget.fraction_of_joint (small subsets need more: the head solve is a fixed cost)")
    ap.add_argument("--out", type=Path, default=None, help="write every run's results as JSON")
    args = ap.parse_args(argv)

    from evo.search.cluster import connect

    info = connect(num_cpus=2)
    print(f"Ray: {info.cpus:g} CPUs, {info.gpus:g} GPUs; space {args.space.name}; seeds {args.seeds}; "
          f"{time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    base = yaml.safe_load(args.space.read_text())
    results: dict[str, dict[int, dict]] = {p: {} for p in args.policies}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for policy in args.policies:
                doc = json.loads(json.dumps(base))
                doc["scenario"]["seed"] = seed
                if args.per_class_train:
                    doc["scenario"]["per_class_train"] = args.per_class_train
                if args.trials:
                    doc["trials"] = args.trials
                if args.budget_fraction:
                    doc["budget"]["fraction_of_joint"] = args.budget_fraction
                doc["policy"] = policy
                print(f"seed {seed} policy {policy}", flush=True)
                r = run_one(doc, Path(tmp) / f"{policy}-{seed}")
                results[policy][seed] = r
                print(f"  final {100 * r['final_accuracy']:.2f}%  chosen {r['chosen']}  "
                      f"{sum(r['flops']) / 1e12:.2f} TFLOPs  {r['seconds']:.0f}s", flush=True)
                if args.out:
                    args.out.write_text(json.dumps({"space": base, "results": results}, indent=1))
    print()
    print(f"{'policy':<10} " + " ".join(f"{'seed ' + str(s):>8}" for s in args.seeds)
          + f" {'mean':>7} {'TFLOPs/seed':>11} {'grown rounds':>12}")
    for policy, per_seed in results.items():
        accs = [per_seed[s]["final_accuracy"] for s in args.seeds]
        grown = sum(c != "no-growth" and not c.startswith("no-growth ") for s in args.seeds
                    for c in per_seed[s]["chosen"])
        tf = statistics.mean(sum(per_seed[s]["flops"]) for s in args.seeds) / 1e12
        print(f"{policy:<10} " + " ".join(f"{100 * a:7.2f}%" for a in accs)
              + f" {100 * statistics.mean(accs):6.2f}% {tf:11.2f} "
              f"{grown:>6}/{sum(len(per_seed[s]['chosen']) for s in args.seeds)}")
    if "search" in results:
        for other in results:
            if other != "search":
                diffs = [results["search"][s]["final_accuracy"] - results[other][s]["final_accuracy"]
                         for s in args.seeds]
                wins = sum(d > 0 for d in diffs)
                print(f"search - {other}: " + " ".join(f"{100 * d:+.2f}" for d in diffs)
                      + f" points; search ahead on {wins}/{len(diffs)} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
