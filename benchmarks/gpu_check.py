"""One growth round on CUDA against the same round on the CPU: equal results within a tolerance, and img/s.

The round is what a search worker does with a grown candidate: increment 0 is learned with the
closed-form fast path (`evo`), the model is grown (`deepen` at its first site, function-preserving),
and increment 1 is learned with `evo_tune` (fast path, fine-tuning of the head and the last blocks,
refit). Both devices start from the same weights and seeds.

Compared:
- the fast path's head after increment 0 (CUDA runs the features under bf16/fp16 autocast; the
  ridge statistics are accumulated in fp64 from fp32 features on both): predictions on the test set
  agree on >= 98 % of images and the accuracies differ by <= 1 point;
- the round's result after fine-tuning (AMP training follows a different rounding path, so only
  the outcome is compared): accuracies within 3 points.
img/s = training images of the round / its measured seconds (features, statistics, fine-tuning).

    .venv/bin/python benchmarks/gpu_check.py                      # cpu vs cuda, Lite0 64 px, Fashion-MNIST
    .venv/bin/python benchmarks/gpu_check.py --devices cpu cpu    # the same check on one device (exact)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

AGREEMENT = 0.98  # fast-path predictions equal on at least this fraction of test images
FAST_ACC = 0.01  # fast-path accuracy difference at most 1 point
ROUND_ACC = 0.03  # accuracy after fine-tuning within 3 points


def load_stream(source: str, per_class_train: int, per_class_test: int, seed: int):
    import evo.data

    return evo.data.class_incremental(source, increments=2, seed=seed, per_class_train=per_class_train,
                                      per_class_test=per_class_test)


def one_round(device: str, model: str, input_size: int, stream, epochs: int, seed: int) -> dict:
    """Learn increment 0 (evo), grow by `deepen`, learn increment 1 (evo_tune) on `device`."""
    import evo.ops
    import evo.zoo
    from evo.learn import Learner

    torch.manual_seed(seed)
    graph = evo.zoo.load(model, pretrained=model != "small_cnn", input_size=input_size)
    fast = Learner(graph, memory=200, strategy="evo", progress=False, device=device)
    t0 = time.perf_counter()
    r0 = fast.learn(stream[0])
    fast_seconds = time.perf_counter() - t0
    pred0 = fast.predict_proba(stream[0].test.images).argmax(1)
    grown = evo.ops.apply(fast.graph_, "deepen", site=evo.ops.sites(fast.graph_, "deepen")[0])
    tune = Learner(graph, memory=200, strategy="evo_tune", progress=False, device=device, epochs=epochs,
                   trainable=2, seed=seed)
    tune = tune.load_state_dict(fast.state_dict(), fast.graph_).with_graph(grown)
    t1 = time.perf_counter()
    r1 = tune.learn(stream[1])
    round_seconds = time.perf_counter() - t1
    return {"device": device, "fast_accuracy": r0.accuracy, "fast_pred": pred0.tolist(),
            "fast_img_s": len(stream[0].train) / fast_seconds, "round_accuracy": r1.accuracy,
            "round_img_s": len(stream[1].train) / round_seconds, "round_seconds": round_seconds,
            "round_flops": r1.cost.flops, "peak_mem_bytes": r1.cost.peak_mem_bytes}


def compare(devices=("cpu", "cuda"), model: str = "efficientnet_lite0", input_size: int = 64,
            source: str = "fashion-mnist", per_class_train: int = 200, per_class_test: int = 100,
            epochs: int = 1, seed: int = 0) -> dict:
    stream = load_stream(source, per_class_train, per_class_test, seed)
    a, b = (one_round(d, model, input_size, stream, epochs, seed) for d in devices)
    agree = float(np.mean(np.asarray(a.pop("fast_pred")) == np.asarray(b.pop("fast_pred"))))
    checks = {
        "fast_agreement": agree >= AGREEMENT,
        "fast_accuracy": abs(a["fast_accuracy"] - b["fast_accuracy"]) <= FAST_ACC,
        "round_accuracy": abs(a["round_accuracy"] - b["round_accuracy"]) <= ROUND_ACC,
    }
    return {"runs": [a, b], "fast_agreement": agree, "checks": checks, "ok": all(checks.values()),
            "round_speedup": b["round_img_s"] / a["round_img_s"], "model": model, "input_size": input_size,
            "per_class_train": per_class_train, "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", nargs=2, default=["cpu", "cuda"])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--source", default="fashion-mnist")
    p.add_argument("--per-class-train", type=int, default=200)
    p.add_argument("--per-class-test", type=int, default=100)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if "cuda" in " ".join(args.devices) and not torch.cuda.is_available():
        print("no CUDA device here; run with --devices cpu cpu for the same-device check")
        return 2
    out = compare(tuple(args.devices), args.model, args.input_size, args.source, args.per_class_train,
                  args.per_class_test, args.epochs)
    for r in out["runs"]:
        print(f"{r['device']:>6}: fast path acc {100 * r['fast_accuracy']:.2f}% at {r['fast_img_s']:.0f} img/s; "
              f"round acc {100 * r['round_accuracy']:.2f}% at {r['round_img_s']:.0f} img/s "
              f"({r['round_seconds']:.1f} s, peak {r['peak_mem_bytes'] / 2**30:.2f} GiB)")
    print(f"fast-path prediction agreement {100 * out['fast_agreement']:.2f}%; round speed-up "
          f"{out['round_speedup']:.2f}x; checks {out['checks']} -> {'OK' if out['ok'] else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
