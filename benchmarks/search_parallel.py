"""Parallel efficiency of a growth round and the driver's overhead per trial.

One local Ray cluster (2 CPUs). The same round (same seeded candidates: Optuna samples its first
trials at random from a fixed seed) is run with concurrency 1 and 2, alternating, in fresh run
folders; the ratio of their wall times is the speed-up of 2 workers over 1. The driver's overhead
is its time outside `ray.wait` (ask, define-by-run sampling, growth, meta-device pricing, dispatch,
tell) divided by the trials it ran.

    .venv/bin/python benchmarks/search_parallel.py --trials 6 --repeats 2
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


def space_doc(trials: int, concurrency: int, model: str) -> dict:
    doc = yaml.safe_load((ROOT / "search_spaces" / "fashion_quick.yaml").read_text())
    doc.update(trials=trials, concurrency=concurrency, budget={"fraction_of_joint": 1000.0}, max_ops=1)
    doc["training"] = {"strategy": "evo_tune", "epochs": 2, "taps": "features", "trainable": 2}
    if model == "small_cnn":
        doc["model"] = {"name": "small_cnn", "input_size": 32}
    return doc


def one_round(doc: dict) -> dict:
    from evo.runs import Run
    from evo.search.driver import Driver
    from evo.search.scenario import stream_for
    from evo.search.space import parse_space
    from evo.zoo import resolve as load_model

    space = parse_space(doc)
    with tempfile.TemporaryDirectory() as tmp:
        run = Run.create(Path(tmp) / "run", {"space": doc}, kind="search")
        graph = load_model(space.model["name"], space.model.get("input_size"), space.model.get("pretrained", True))
        run.commit_version(graph, {"increment": None, "ops": []})
        driver = Driver(run, space, progress=lambda s: None)
        t0 = time.perf_counter()
        timing = driver.round(0, stream_for(space)).timing
        wall = time.perf_counter() - t0
    return {"wall": wall, "driver_seconds": timing["driver_seconds"], "trials": timing["trials"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", choices=["efficientnet_lite0", "small_cnn"], default="efficientnet_lite0")
    ap.add_argument("--out", default=None, help="write the raw measurements as JSON")
    args = ap.parse_args(argv)

    import ray

    from evo.search.cluster import connect

    connect(num_cpus=2)

    @ray.remote(num_cpus=1)
    def warm() -> int:  # import torch and evo in both worker processes before timing
        import evo.search.worker  # noqa: F401

        time.sleep(1.0)
        return 0

    ray.get([warm.remote() for _ in range(2)])
    results: dict[int, list[dict]] = {1: [], 2: []}
    for rep in range(args.repeats):
        for conc in ((1, 2) if rep % 2 == 0 else (2, 1)):
            r = one_round(space_doc(args.trials, conc, args.model))
            results[conc].append(r)
            print(f"repeat {rep} concurrency {conc}: {r['wall']:.1f}s wall, driver {r['driver_seconds']:.2f}s "
                  f"for {r['trials']} trials", flush=True)
    w1 = statistics.median(r["wall"] for r in results[1])
    w2 = statistics.median(r["wall"] for r in results[2])
    per_trial = statistics.median(r["driver_seconds"] / max(r["trials"], 1) for rs in results.values() for r in rs)
    paired = [a["wall"] / b["wall"] for a, b in zip(results[1], results[2], strict=True)]
    print(f"\nmodel {args.model}, {args.trials} trials per round, {args.repeats} repeats (medians)")
    print(f"1 worker {w1:.1f}s | 2 workers {w2:.1f}s | speed-up {w1 / w2:.2f}x "
          f"(paired per repeat: {', '.join(f'{r:.2f}x' for r in paired)}) | driver overhead {per_trial:.3f}s/trial")
    if args.out:
        Path(args.out).write_text(json.dumps({"runs": results, "speedup": w1 / w2, "paired_speedups": paired,
                                              "overhead_per_trial": per_trial}))
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
