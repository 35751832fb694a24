"""Split Fashion-MNIST, class-incremental, 5 increments × 2 classes, from ImageNet-pretrained Lite0 at 64 px.

Runs evo's method and the baselines (joint, naive, replay, EWC, LwF) through the same `evo.Learner`
API in one process and prints one table side by side, plus the per-increment compute of each
strategy relative to joint retraining on all data seen so far.

    python benchmarks/split_fashion.py                        # everything (long on 2 cores)
    python benchmarks/split_fashion.py --strategies evo       # the fast path alone (minutes)
    python benchmarks/split_fashion.py --baseline-per-class 1200 --epochs 3 --out results.json

`--baseline-per-class N` trains the gradient baselines on N images per class (of 6000) to bound the
run time; joint's full-data cost is then also reported as its measured FLOPs per training sample
× the full data (FLOPs are steps × a per-step price, so this is exact for the same schedule).
Joint measures its test accuracy after every epoch, which gives the cost for joint to reach
evo's accuracy on each increment.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import evo  # noqa: E402
import evo.data  # noqa: E402
import evo.zoo  # noqa: E402
from evo.data.transforms import Preprocess  # noqa: E402

STRATEGIES = ["evo", "joint", "naive", "replay", "ewc", "lwf", "evo-wide"]
VARIANTS = {"evo-wide": ("evo", {"levels": ((8, 8), (16, 4))})}  # stride 8 pooled to 8x8: more accurate, costlier
SGD_DEFAULTS = {"epochs": 3, "batch_size": 64, "optimizer": "sgd", "lr": 0.01, "trainable": "all"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--strategies", nargs="+", default=STRATEGIES, type=_strategy_spec,
                   help=f"names from {', '.join(STRATEGIES)}; NAME@N trains that run on N images per class")
    p.add_argument("--memory", type=int, default=500, help="exemplar budget (images)")
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="class order and sampling seed")
    p.add_argument("--per-class-train", type=int, default=None, help="cap for evo too (default: all 6000)")
    p.add_argument("--baseline-per-class", type=int, default=None,
                   help="train images per class for the gradient baselines (default: all)")
    p.add_argument("--joint-per-class", type=int, default=None,
                   help="train images per class for joint (default: --baseline-per-class)")
    p.add_argument("--per-class-test", type=int, default=None, help="test images per class (default: all 1000)")
    p.add_argument("--epochs", type=int, default=SGD_DEFAULTS["epochs"], help="epochs for the gradient baselines")
    p.add_argument("--lr", type=float, default=SGD_DEFAULTS["lr"])
    p.add_argument("--trainable", default="all", help="'all', 'head' or N (last N blocks) for the baselines")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="write all reports as JSON here")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--reuse", type=Path, default=None,
                   help="a previous --out JSON: its rows not re-run here join the table (marked in the JSON)")
    p.add_argument("--explore", action="store_true",
                   help="instead: compare frozen-feature heads on a subset (the experiment that chose evo's taps)")
    p.add_argument("--explore-per-class", type=int, default=2000)
    return p.parse_args(argv)


# (node, pooled grid side) per configuration; Lite0 at 64 px: add_1 is 40x8x8 (stride 8), add_3 80x4x4,
# add_5 112x4x4 (stride 16), add_8 192x2x2, blocks_15_project_bn 320x2x2, head_act 1280x2x2
EXPLORE = {
    "pooled head (1280-d, the usual)": [("head_act", 1)],
    "head 2x2": [("head_act", 2)],
    "6 block outputs, pooled": [("add_1", 1), ("add_3", 1), ("add_5", 1), ("add_8", 1),
                                ("blocks_15_project_bn", 1), ("head_act", 1)],
    "5 blocks 2x2 + pooled head": [("add_1", 2), ("add_3", 2), ("add_5", 2), ("add_8", 2),
                                   ("blocks_15_project_bn", 2), ("head_act", 1)],
    "stride 8 @8x8": [("add_1", 8)],
    "stride 8 @4x4 + stride 16 @4x4": [("add_1", 4), ("add_5", 4)],
    "stride 8 @8x8 + add_3 @4x4": [("add_1", 8), ("add_3", 4)],
    "stride 8 @8x8 + stride 16 @4x4 (evo default)": [("add_1", 8), ("add_5", 4)],
    "default + add_8 @2x2": [("add_1", 8), ("add_5", 4), ("add_8", 2)],
}


def _strategy_spec(text: str) -> str:
    name, _, n = text.partition("@")
    if name not in STRATEGIES or (n and not n.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r}: expected one of {STRATEGIES}, optionally @N (images per class)")
    return text


def stream(args, per_class_train):
    return evo.data.class_incremental("fashion-mnist", increments=5, seed=args.seed,
                                      per_class_train=per_class_train, per_class_test=args.per_class_test)


def run(spec: str, args) -> dict:
    variant, _, n = spec.partition("@")
    name, extra = VARIANTS.get(variant, (variant, {}))
    per_class = args.per_class_train if name == "evo" else (args.baseline_per_class or args.per_class_train)
    if name == "joint" and args.joint_per_class:
        per_class = args.joint_per_class
    if n:
        per_class = int(n)
    graph = evo.zoo.load("efficientnet_lite0", pretrained=True, input_size=args.input_size)
    options: dict = dict(extra)
    curve: list[list[dict]] = []
    if name != "evo":
        trainable = int(args.trainable) if args.trainable.isdigit() else args.trainable
        options = {**SGD_DEFAULTS, "epochs": args.epochs, "lr": args.lr, "trainable": trainable, **extra}
    s = stream(args, per_class)
    if name == "joint":
        options["on_epoch_end"] = _epoch_probe(s, graph, curve)
    learner = evo.Learner(graph, memory=args.memory, strategy=name, progress=not args.no_progress, **options)
    reports = []
    for inc in s:
        curve.append([])
        r = learner.learn(inc)
        print(r, flush=True)
        reports.append(r.to_dict())
    m = learner.accuracy_matrix_
    return {
        "strategy": name,
        "label": spec,
        "per_class_train": per_class,
        "options": {k: v for k, v in options.items() if k != "on_epoch_end"},
        "n_train": [r["n_train"] for r in reports],
        "reports": reports,
        "matrix": m.matrix.tolist(),
        "final_accuracy": reports[-1]["accuracy"],
        "average_incremental_accuracy": m.average_incremental_accuracy(),
        "forgetting": m.forgetting(),
        "bwt": m.bwt(),
        "flops": [r["cost"]["flops"] for r in reports],
        "seconds": [r["cost"]["seconds"] for r in reports],
        "epoch_curve": curve if name == "joint" else None,
    }


def _epoch_probe(s, graph, curve):
    """Joint's accuracy on the pooled test set after each epoch (for the cost to reach evo's accuracy)."""
    preprocess = Preprocess.from_dict(graph.meta["preprocess"])

    def probe(epoch, net, stats):
        inc = s[len(curve) - 1]
        classes = inc.classes_so_far
        truth = np.asarray(inc.test.labels)
        preds = []
        with torch.inference_mode():
            for start in range(0, len(truth), 512):
                x = preprocess(inc.test.images[start : start + 512]).contiguous(memory_format=torch.channels_last)
                preds.append(net(x).argmax(1).numpy())
        # the learner's class order is the stream's arrival order, the same as classes_so_far
        acc = float((np.concatenate(preds) == truth).mean()) if len(classes) else math.nan
        curve[-1].append({"epoch": epoch, "flops": stats["flops"], "accuracy": acc})

    return probe


def pct(v) -> str:
    return "   -  " if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:5.2f}"


def table(results: dict[str, dict], full_per_class: int = 6000) -> str:
    lines = []
    head = (f"{'strategy':<8} {'train/cls':>9} {'final %':>7} {'avg-inc %':>9} {'forget %':>8} {'BWT %':>7} "
            f"{'TFLOPs':>8} {'seconds':>8}")
    lines += [head, "-" * len(head)]
    for name, r in results.items():
        lines.append(f"{name:<8} {r['per_class_train'] or full_per_class:>9} {pct(r['final_accuracy']):>7} "
                     f"{pct(r['average_incremental_accuracy']):>9} {pct(r['forgetting']):>8} {pct(r['bwt']):>7} "
                     f"{sum(r['flops']) / 1e12:8.2f} {sum(r['seconds']):8.0f}")
    joint = next((r for r in results.values() if r["strategy"] == "joint"), None)
    if joint:
        scale = (full_per_class / joint["per_class_train"]) if joint["per_class_train"] else 1.0
        jfull = [f * scale for f in joint["flops"]]
        lines += ["", "compute per increment relative to joint retraining on all data so far "
                      f"(joint at {joint['options'].get('epochs')} epochs"
                      + (f", measured on {joint['per_class_train']}/class and scaled to the full data)" if scale != 1 else ")")]
        lines.append(f"{'strategy':<8} " + " ".join(f"{'inc ' + str(i):>8}" for i in range(len(jfull))))
        lines.append(f"{'joint':<8} " + " ".join(f"{f / 1e12:7.2f}T" for f in jfull))
        for name, r in results.items():
            if r["strategy"] == "joint":
                continue
            own = r["flops"]
            if r["per_class_train"] and r["per_class_train"] != full_per_class:
                own = [f * full_per_class / r["per_class_train"] for f in own]
            lines.append(f"{name:<8} " + " ".join(f"{100 * a / b:7.1f}%" for a, b in zip(own, jfull, strict=True)))
        same = [r for r in results.values() if r["strategy"] == "evo" and r["per_class_train"] == joint["per_class_train"]]
        if same and joint.get("epoch_curve"):
            ev = same[0]
            lines += ["", f"joint's cost to reach {ev['label']}'s accuracy on each increment, same data "
                          "(first epoch at or above it):"]
            for i, (rep, epochs) in enumerate(zip(ev["reports"], joint["epoch_curve"], strict=True)):
                target = rep["accuracy"]
                hit = next((e for e in epochs if e["accuracy"] >= target), None)
                evo_f = ev["flops"][i]
                accs = ", ".join(f"{100 * e['accuracy']:.2f}" for e in epochs)
                if hit is None:
                    lines.append(f"  inc {i}: evo {pct(target)}%, joint per epoch [{accs}] -> not reached in "
                                 f"{len(epochs)} epochs (evo/joint-all-epochs = {100 * evo_f / joint['flops'][i]:.1f}%)")
                else:
                    jf = hit["flops"]
                    lines.append(f"  inc {i}: evo {pct(target)}%, joint per epoch [{accs}] -> epoch {hit['epoch']}, "
                                 f"{jf / 1e12:.2f} TFLOPs; evo/that = {100 * evo_f / jf:.1f}%")
    return "\n".join(lines)


def explore(args) -> None:
    """Frozen Lite0 features from several taps, extracted once; a ridge head (λ by GCV) on each."""
    from evo.learn import RidgeHead

    graph = evo.zoo.load("efficientnet_lite0", pretrained=True, input_size=args.input_size)
    net = graph.to_module().eval().to(memory_format=torch.channels_last)
    nodes = sorted({n for taps in EXPLORE.values() for n, _ in taps})
    seen: dict = {}
    for n in nodes:
        net._modules[n].register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))
    pre = Preprocess.from_dict(graph.meta["preprocess"])
    train, test = evo.data.load_source("fashion-mnist")
    rng = np.random.default_rng(args.seed)

    def sample(data, k):
        if k is None:
            return data
        return data.subset(np.sort(np.concatenate([rng.choice(np.flatnonzero(data.labels == c), k, replace=False)
                                                   for c in range(10)])))

    def extract(data):
        out = {n: [] for n in nodes}
        with torch.inference_mode():
            for start in range(0, len(data), 256):
                net(pre(data.images[start : start + 256]).contiguous(memory_format=torch.channels_last))
                for n in nodes:
                    out[n].append(seen[n].float().contiguous())
        return {n: torch.cat(v) for n, v in out.items()}

    tr, te = sample(train, args.explore_per_class), sample(test, args.per_class_test)
    ftr, fte = extract(tr), extract(te)
    ytr, yte = torch.as_tensor(np.array(tr.labels)), torch.as_tensor(np.array(te.labels))
    print(f"frozen Lite0 {args.input_size}px, ridge head (lambda by GCV), {len(tr)} train / {len(te)} test images")
    for name, taps in EXPLORE.items():
        def feats(f, taps=taps):
            return torch.cat([torch.nn.functional.adaptive_avg_pool2d(f[n], k).flatten(1) for n, k in taps], 1)
        head = RidgeHead().fit(feats(ftr), ytr, 10)
        head.ridge, _ = head.gcv_walk()
        acc = float((head.predict(feats(fte)) == yte).double().mean())
        print(f"  {name:<46} {head.dim_:>6}-d  lambda {head.ridge:9.3g}  accuracy {100 * acc:.2f}%", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.explore:
        explore(args)
        return 0
    print(f"evo {evo.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    results, failed = {}, {}
    if args.reuse:
        old = json.loads(args.reuse.read_text())["results"]
        results = {k: {**v, "reused_from": str(args.reuse)} for k, v in old.items() if k not in args.strategies}
        print(f"reusing {sorted(results)} from {args.reuse}", flush=True)
    for spec in args.strategies:
        t = time.time()
        try:
            results[spec] = run(spec, args)
        except evo.EvoError as e:  # a diverging baseline must not cost the others their run
            print(f"-- {spec} failed: {e}", flush=True)
            failed[spec] = str(e)
            continue
        print(f"-- {spec} done in {time.time() - t:.0f}s", flush=True)
        if args.out:
            args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results,
                                            "failed": failed}, indent=1))
    print()
    print(table(results))
    for spec, err in failed.items():
        print(f"{spec}: failed: {err}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
