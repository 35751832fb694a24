"""The latent store (issue 14) on Split Fashion-MNIST (5 × 2 classes), Lite0 at 64 px, one run per table.

Side by side, through the same `evo.Learner` API:
- `fast path`: the frozen `evo` strategy (incremental == its own joint ridge solve);
- `latent fp32 / fp16 / int8`: `evo_latent` (cut at the last stride-8 block, everything above it
  trained on the increment + stored latents with AdamW/cosine and latent noise, statistics then
  recomputed from the store) with each codec: the accuracy lost to compression;
- `ceiling`: the same recipe on ALL the data as one increment (joint training above the cut, then
  the ridge head on the tuned features), with `--ceiling-epochs` epochs.
Also: bytes per image at the cut (for each codec, and the 60,000-image total), and the time to
recompute the statistics from the whole store after the last increment.

    python benchmarks/latent_store.py --per-class-train 100 --per-class-test 100   # ~30 min on a loaded 2-core VM
    python benchmarks/latent_store.py                                                # full 60k (a GPU)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import evo.data  # noqa: E402
import evo.zoo  # noqa: E402
from evo.data.dataset import concat  # noqa: E402
from evo.graph.taps import tap_graph  # noqa: E402
from evo.learn import Learner  # noqa: E402
from evo.learn.head import RidgeHead  # noqa: E402
from evo.learn.latent import StoreConfig, bytes_per_row, cut_node, split  # noqa: E402
from evo.learn.strategies import make_strategy  # noqa: E402
from evo.learn.tracked import from_meta  # noqa: E402
from evo.search.pricing import joint_flops  # noqa: E402


def _cut(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _replay(text: str) -> float | str:
    return text if text == "balanced" else float(text)


def _levels(text: str) -> list[tuple[int, int]]:
    try:
        return [(int(a), int(b)) for a, b in (pair.split(":") for pair in text.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected STRIDE:GRID pairs such as 8:4,16:4; got {text!r}") from None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-class-train", type=int, default=None)
    p.add_argument("--per-class-test", type=int, default=None)
    p.add_argument("--cut", type=_cut, default=8,
                   help="stride of the cut (last block output at it), a block output's name, or 'input'")
    p.add_argument("--source-size", type=int, default=None,
                   help="shrink Fashion-MNIST to this side first (a new data type: low-resolution images, which "
                        "the model sees upsampled to 64 px, where frozen ImageNet features are weaker)")
    p.add_argument("--permute", type=int, default=None,
                   help="shuffle every image's pixels by one permutation drawn from this seed (permuted "
                        "Fashion-MNIST: no spatial structure left for pretrained conv features)")
    p.add_argument("--epochs", type=int, default=2, help="evo_latent epochs per increment")
    p.add_argument("--ceiling-epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=float, default=0.0, help="evo_latent's warmup fraction (0.3: one-cycle)")
    p.add_argument("--batch", type=int, default=64, help="evo_latent's training batch size")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="evo_latent's AdamW weight decay")
    p.add_argument("--taps", default="auto", help="the head's taps (evo's `taps` option, e.g. auto+features)")
    p.add_argument("--head-init", default="ridge", choices=("ridge", "fresh"), help="evo_latent's head_init")
    p.add_argument("--train-taps", default="head", choices=("head", "deepest"),
                   help="evo_latent's train_taps: the training head reads every tap of the head, or the deepest only")
    p.add_argument("--levels", type=_levels, default=None,
                   help="evo's levels for taps auto and auto+features, as STRIDE:GRID pairs, e.g. 8:4,16:4")
    p.add_argument("--replay", type=_replay, default=1.0,
                   help="evo_latent's replay: stored latents per increment image, or 'balanced'")
    p.add_argument("--subsample", type=float, default=1.0,
                   help="evo_latent's subsample: the class-stratified fraction of the training rows it trains on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", nargs="+", default=["fast path", "latent fp16", "latent int8", "latent fp32", "ceiling"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    stream = evo.data.class_incremental("fashion-mnist", increments=5, seed=args.seed,
                                        per_class_train=args.per_class_train, per_class_test=args.per_class_test,
                                        source_opts={k: v for k, v in (("size", args.source_size),
                                                                       ("permute", args.permute)) if v is not None})
    graph = evo.zoo.load("efficientnet_lite0", pretrained=True, input_size=64)
    levels = {"levels": args.levels} if args.levels else {}
    opts = {"epochs": args.epochs, "lr": args.lr, "warmup": args.warmup, "train_batch_size": args.batch,
            "weight_decay": args.weight_decay, "taps": args.taps, "head_init": args.head_init,
            "replay": args.replay, "subsample": args.subsample, "train_taps": args.train_taps, **levels}

    def latent(**over):  # --seed seeds the exemplar memory (the Learner) and the strategy (its head, batches, noise)
        return make_strategy("evo_latent", seed=args.seed, **{**opts, **over})

    prepared = make_strategy("evo", taps=args.taps, **levels).prepare(graph)  # the network the head reads: what joint retraining trains
    table, out = [], {"args": {k: str(v) for k, v in vars(args).items()}, "machine": platform.platform()}
    n_train = sum(len(inc.train) for inc in stream)
    print(f"Split Fashion-MNIST: {n_train} training images in 5 increments, {len(stream[4].test)} test images")
    for name in args.runs:
        t0 = time.perf_counter()
        if name == "fast path":
            learner = Learner(graph, strategy="evo", progress=False, seed=args.seed)
            reports = [learner.learn(inc) for inc in stream]
        elif name.startswith("latent"):
            codec = name.split()[1]
            learner = Learner(graph, strategy=latent(), progress=False, seed=args.seed,
                              latents=StoreConfig(cut=args.cut, codec=codec))
            reports = [learner.learn(inc) for inc in stream]
        else:  # the ceiling: every class and image in one increment, the same recipe for longer
            joint = _joint(stream)
            learner = Learner(graph, strategy=latent(epochs=args.ceiling_epochs), progress=False, seed=args.seed,
                              latents=StoreConfig(cut=args.cut, codec="fp32"))
            reports = [learner.learn(joint)]
        seconds = time.perf_counter() - t0
        last = reports[-1]
        row = {"run": name, "final_accuracy": last.accuracy, "avg_incremental": last.average_incremental_accuracy,
               "tflops": sum(r.cost.flops for r in reports) / 1e12, "seconds": seconds,
               "per_increment": [r.accuracy for r in reports]}
        if len(reports) == len(stream):  # each round's cost against joint retraining on everything seen by then
            row["per_increment_joint"] = [r.cost.flops / joint_flops(prepared, stream, i, _Joint3) for i, r in enumerate(reports)]
        if name.startswith("latent"):
            row.update(_store_figures(learner))
        table.append(row)
        print(json.dumps(row), flush=True)
    out["table"] = table
    g = prepared
    cut = cut_node(g, args.cut)
    out["bytes_per_image"] = {c: bytes_per_row(g.shape(cut), c) for c in ("fp32", "fp16", "int8")}
    out["bytes_60k_MB"] = {c: 60000 * b / 1e6 for c, b in out["bytes_per_image"].items()}
    out["cut"] = {"node": cut, "shape": list(g.shape(cut))}
    print(json.dumps({k: out[k] for k in ("bytes_per_image", "bytes_60k_MB", "cut")}))
    print(_markdown(table))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


class _Joint3:
    """A space stand-in for `evo.search.pricing.joint_flops`: its default `joint_epochs`."""

    raw: dict = {}


def _joint(stream):
    """All increments' training data as one increment, tested on the pooled test set."""
    from dataclasses import replace

    last = stream[len(stream) - 1]
    train = concat([inc.train.relabel(last.classes_so_far) for inc in stream])
    return replace(last, train=train, new_classes=list(last.classes_so_far), test_by_increment=[last.test])


def _store_figures(learner: Learner) -> dict:
    """Live bytes, and the seconds to recompute the head's statistics from every stored latent."""
    store = learner.latents_
    g = learner.graph_
    _, above = split(g, store.cut)
    net = tap_graph(above, from_meta(g)).to_module().eval()
    rows = store.rows()
    labels = torch.as_tensor(rows.labels(learner.classes_))
    t0 = time.perf_counter()
    head = RidgeHead(1.0)
    for start in range(0, len(rows), 256):
        idx = np.arange(start, min(start + 256, len(rows)))
        with torch.inference_mode():
            head.partial_fit(net.forward_features(rows[idx]), labels[idx], len(learner.classes_))
    return {"store_rows": len(rows), "store_MB": store.live_bytes() / 1e6,
            "recompute_seconds": time.perf_counter() - t0}


def _markdown(table) -> str:
    lines = ["| run | final acc | avg inc | TFLOPs | seconds | per increment |", "|---|---|---|---|---|---|"]
    for r in table:
        inc = " / ".join(f"{100 * a:.1f}" for a in r["per_increment"])
        lines.append(f"| {r['run']} | {100 * r['final_accuracy']:.2f} | "
                     f"{100 * (r['avg_incremental'] or r['final_accuracy']):.2f} | {r['tflops']:.2f} | "
                     f"{r['seconds']:.0f} | {inc} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
