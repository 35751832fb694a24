"""CPU feature passes at the caller's batch against cache-sized batches (`evo.learn.device.feature_batch`).

Two measurements, each arm interleaved with the other so the shared VM's drift hits both alike:
1. forward throughput (img/s, median of `--reps`) of `forward_features` at batch 256 and at the batch
   `feature_batch` picks, for a few zoo models and input sizes;
2. the fast path end to end: a Learner (`evo` strategy, the zoo's default head) learns two increments
   of Fashion-MNIST, then predicts the test images, with the splitting off (CPU_CACHE_BYTES = 0) and
   on; wall time and accuracy of each.

    .venv/bin/python benchmarks/cpu_feature_batch.py --out benchmarks/results/cpu_feature_batch.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import evo.learn.device as dev
import evo.zoo
from evo.data import ImageSet, load_source
from evo.learn import Learner

MODELS = [("efficientnet_lite0", 64), ("efficientnet_lite0", 128), ("resnet18", 64), ("resnet18", 128),
          ("mobilenet_v3_small", 128), ("small_cnn", None)]


def throughput(reps: int) -> list[dict]:
    rows = []
    cpu = torch.device("cpu")
    for name, size in MODELS:
        g = evo.zoo.resolve(name, size)
        net = g.to_module().eval()
        x = torch.randn(256, *g.input_shape).contiguous(memory_format=torch.channels_last)
        picked = dev.feature_batch(net, 256, cpu)
        times: dict[int, list[float]] = {256: [], picked: []}
        with torch.inference_mode():
            net.forward_features(x[:8])  # warm-up
            for _ in range(reps):
                for bs in times:
                    t = time.perf_counter()
                    for i in range(0, 256, bs):
                        net.forward_features(x[i:i + bs])
                    times[bs].append(time.perf_counter() - t)
        med = {bs: statistics.median(v) for bs, v in times.items()}
        rows.append({"model": name, "input": list(g.input_shape), "activation_mib": net.activation_bytes / 2**20,
                     "picked_batch": picked, "img_s_256": 256 / med[256], "img_s_picked": 256 / med[picked],
                     "speedup": med[256] / med[picked]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def subset(data: ImageSet, classes: list[int], per_class: int, rng: np.random.Generator) -> ImageSet:
    idx = np.concatenate([rng.choice(np.flatnonzero(data.labels == c), per_class, replace=False) for c in classes])
    return data.subset(idx)


def end_to_end(reps: int, per_class: int, size: int) -> dict:
    train, test = load_source("fashion-mnist")
    rng = np.random.default_rng(0)
    increments = [subset(train, [0, 1, 2, 3, 4], per_class, rng), subset(train, [5, 6, 7, 8, 9], per_class, rng)]
    test = subset(test, list(range(10)), 100, rng)
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    default = dev.CPU_CACHE_BYTES
    for _ in range(reps):
        for arm in runs:
            dev.CPU_CACHE_BYTES = 0 if arm == "off" else default
            t = time.perf_counter()
            learner = Learner(evo.zoo.resolve("efficientnet_lite0", size), memory=200, progress=False)
            for inc in increments:
                learner.learn(inc)
            acc = learner.score(test)
            runs[arm].append({"seconds": time.perf_counter() - t, "accuracy": acc})
            print(arm, json.dumps(runs[arm][-1]), flush=True)
    dev.CPU_CACHE_BYTES = default
    med = {arm: statistics.median(r["seconds"] for r in v) for arm, v in runs.items()}
    return {"model": "efficientnet_lite0", "input": size, "train_images": 10 * per_class, "test_images": len(test),
            "runs": runs, "median_seconds": med, "speedup": med["off"] / med["on"],
            "accuracy_difference": max(abs(a["accuracy"] - b["accuracy"]) for a, b in zip(runs["off"], runs["on"], strict=True))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--e2e-reps", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
           f"{torch.get_num_threads()} threads", "cpu_cache_bytes": dev.cpu_cache_bytes(),
           "throughput": throughput(a.reps), "end_to_end": end_to_end(a.e2e_reps, a.per_class, a.size)}
    print(json.dumps(out["end_to_end"]["median_seconds"]), "speedup", round(out["end_to_end"]["speedup"], 2))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
