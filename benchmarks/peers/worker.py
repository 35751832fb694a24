"""One method on one seed, in its own process (so its peak memory is its own); writes one JSON row.

    python benchmarks/peers/worker.py features --seed 0 --per-class 300 --out cache/seed0.npz
    python benchmarks/peers/worker.py closed --method RanPAC --features cache/seed0.npz --out row.json
    python benchmarks/peers/worker.py evo --seed 0 --per-class 300 --out row.json
    python benchmarks/peers/worker.py joint --seed 0 --per-class 300 --epochs 5 --out row.json
    python benchmarks/peers/worker.py evo-search --seed 0 --per-class 300 --trials 4 --out row.json

run.py calls these; the rows follow benchmarks/peers/results/peers.json's schema.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import common  # noqa: I001  (sets sys.path for evo)
import numpy as np
import torch
from metrics import Recorder, peak_rss_bytes, summarize

from evo.learn.train import forward_flops_per_image, run_batches  # noqa: E402
from evo.runs import write_json_atomic  # noqa: E402


def _features(args) -> dict:
    """Frozen Lite0 features of every image, two sets: `pooled`, the 1280-d penultimate features (what
    the four closed-form papers use), and `taps`, evo's default multi-layer features (stride 8 and 16
    block outputs pooled to 4×4, 2,432-d), so that the closed-form heads can also be compared on the
    very features evo's head reads."""
    from evo.learn.features import parse_taps, tap_graph

    split = common.load_split(args.seed, args.per_class, args.per_class_test)
    graph = common.backbone_graph()
    arrays, info = {}, {"n_train": sum(len(x) for x in split.train_images), "n_test": len(split.test_labels),
                        "classes": split.classes}
    for name, g in (("pooled", graph), ("taps", tap_graph(graph, parse_taps(graph, "auto")))):
        net = g.to_module().eval().to(memory_format=torch.channels_last)
        pre = common.preprocess(graph)
        fpi = forward_flops_per_image(net, tuple(graph.input_shape), features_only=True)
        t0 = time.perf_counter()
        for i, images in enumerate(split.train_images):
            arrays[f"{name}_train_{i}"] = run_batches(net, images, pre, lambda m, x: m.forward_features(x),
                                                      progress=False).numpy()
        seconds = time.perf_counter() - t0
        arrays[f"{name}_test"] = run_batches(net, split.test_images, pre, lambda m, x: m.forward_features(x),
                                             progress=False).numpy()
        info[name] = {"flops": fpi * info["n_train"], "seconds": seconds, "flops_per_image": fpi,
                      "dim": int(arrays[f"{name}_test"].shape[1])}
    for i, labels in enumerate(split.train_labels):
        arrays[f"label_{i}"] = labels
    arrays["test_labels"] = split.test_labels
    arrays["class_to_increment"] = np.asarray(split.class_to_increment)
    np.savez(args.out, **arrays)
    info["peak_mem_bytes"] = peak_rss_bytes()
    write_json_atomic(Path(args.out).with_suffix(".json"), info)
    return info


def _closed(args) -> dict:
    import acil
    import ranpac
    import simplecil
    import slda

    data = np.load(args.features, allow_pickle=False)
    info = json.loads(Path(args.features).with_suffix(".json").read_text())
    fs = args.feature_set
    shared = {**info[fs], "peak_mem_bytes": info["peak_mem_bytes"]}
    d = data[f"{fs}_train_0"].shape[1]
    method = {"SimpleCIL": lambda: simplecil.SimpleCIL(),
              "RanPAC": lambda: ranpac.RanPAC(d, dim=args.ranpac_dim, seed=args.seed),
              "ACIL": lambda: acil.ACIL(d, buffer=args.acil_buffer, seed=args.seed),
              "SLDA": lambda: slda.SLDA(d)}[args.method]()
    rec = Recorder(data["test_labels"], data["class_to_increment"])
    test = torch.from_numpy(data[f"{fs}_test"]).to(torch.float64)
    flops, seconds, n_classes = 0, 0.0, 0
    for i in range(len(data["class_to_increment"])):
        if f"{fs}_train_{i}" not in data:
            break
        x, y = torch.from_numpy(data[f"{fs}_train_{i}"]).to(torch.float64), torch.from_numpy(data[f"label_{i}"])
        n_classes = max(n_classes, int(y.max()) + 1)
        t0 = time.perf_counter()
        flops += method.learn(x, y, n_classes)
        seconds += time.perf_counter() - t0
        rec.add(i, method.predict(test[torch.from_numpy(rec.seen_mask(i))]).numpy())
    # each method would extract the features itself: charge the shared extraction to every one
    return {**rec.summary(), "tflops": (flops + shared["flops"]) / 1e12,
            "wall_seconds": seconds + shared["seconds"],
            "peak_mem_bytes": max(peak_rss_bytes(), shared["peak_mem_bytes"]),
            "detail": {"head_tflops": flops / 1e12, "head_seconds": seconds,
                       "features_tflops": shared["flops"] / 1e12, "features_seconds": shared["seconds"],
                       "features": fs, "feature_dim": d}}


def _evo(args) -> dict:
    import evo

    learner = evo.Learner(common.backbone_graph(), memory=common.MEMORY, strategy="evo", progress=False,
                          expand=args.expand or 0)
    return _learn_stream(learner, args)


def _learn_stream(learner, args) -> dict:
    """Learn the stream; the metrics come from the learner's own evaluation on the same test split."""
    rows, accuracy = [], []
    for inc in common.stream(args.seed, args.per_class, args.per_class_test):
        report = learner.learn(inc)
        rows.append(report.row)
        accuracy.append(report.accuracy)
    cost = learner.cost_
    return {**summarize(rows, accuracy), "tflops": cost.flops / 1e12, "wall_seconds": cost.seconds,
            "peak_mem_bytes": peak_rss_bytes()}


def _search(args) -> dict:
    """evo's growth search (evo.search.launch) on the same stream: every candidate's cost is counted."""
    import tempfile

    import yaml

    from evo.runs import Run
    from evo.search.cluster import connect
    from evo.search.launch import launch

    doc = yaml.safe_load(args.space.read_text())
    doc["scenario"].update(seed=args.seed, per_class_train=args.per_class, per_class_test=args.per_class_test)
    doc["scenario"] = {k: v for k, v in doc["scenario"].items() if v is not None}
    if args.trials:
        doc["trials"] = args.trials
    if args.budget_fraction:
        doc["budget"]["fraction_of_joint"] = args.budget_fraction
    if args.expand is not None:  # spare taps do not apply to an expanded head
        doc["training"] = {k: v for k, v in doc["training"].items() if k != "spare"} | {"expand": args.expand}
    connect(num_cpus=max(2, args.threads))
    with tempfile.TemporaryDirectory(prefix="evo-peers-search-") as tmp:
        space = Path(tmp) / "space.yaml"
        space.write_text(yaml.safe_dump(doc))
        t0 = time.perf_counter()
        results = launch(space, run_dir=Path(tmp) / "run", say=lambda s: None)
        wall = time.perf_counter() - t0
        run = Run.open(Path(tmp) / "run")
        meta = run.version_meta(run.versions()[-1])
        # what the winners' learning of the held-out images cost (inside tflops)
        heldout = sum(int(run.version_meta(v).get("cost", {}).get("heldout_flops") or 0) for v in run.versions())
    return {"final_accuracy": results[-1].accuracy, "accuracy": [r.accuracy for r in results],
            "average_incremental_accuracy": meta["metrics"].get("average_incremental_accuracy"),
            "forgetting": results[-1].forgetting, "tflops": sum(r.flops_spent for r in results) / 1e12,
            "wall_seconds": wall, "peak_mem_bytes": peak_rss_bytes(),
            "detail": {"space": args.space.name, "trials": doc.get("trials"), "chosen": [r.chosen for r in results],
                       "heldout_tflops": heldout / 1e12,
                       "peak_mem_note": "driver process only; Ray workers not included"}}


def _joint(args) -> dict:
    """The ceiling: one fine-tuning of every layer on all increments' data at once (same images)."""
    import evo
    from evo.data.dataset import concat
    from evo.data.scenarios import Increment

    incs = list(common.stream(args.seed, args.per_class, args.per_class_test))
    last = incs[-1]
    train = concat([i.train.relabel(last.classes_so_far) for i in incs])
    everything = Increment(0, train, last.test, list(last.classes_so_far), list(last.classes_so_far), [last.test])
    learner = evo.Learner(common.backbone_graph(), memory=common.MEMORY, strategy="joint", progress=False,
                          epochs=args.epochs, batch_size=args.batch_size, optimizer="sgd", lr=args.lr,
                          trainable="all", seed=args.seed)
    report = learner.learn(everything)
    return {"final_accuracy": report.accuracy, "average_incremental_accuracy": None, "forgetting": None,
            "tflops": report.cost.flops / 1e12, "wall_seconds": report.cost.seconds,
            "peak_mem_bytes": peak_rss_bytes(), "detail": {"epochs": args.epochs, "lr": args.lr}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("job", choices=["features", "closed", "evo", "evo-search", "joint"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-class", type=int, default=None)
    p.add_argument("--per-class-test", type=int, default=None)
    p.add_argument("--method", default=None)
    p.add_argument("--features", type=Path, default=None)
    p.add_argument("--feature-set", choices=["pooled", "taps"], default="pooled")
    p.add_argument("--ranpac-dim", type=int, default=10000)
    p.add_argument("--acil-buffer", type=int, default=8192)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--space", type=Path, default=common.ROOT / "search_spaces" / "fashion_cil.yaml")
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--budget-fraction", type=float, default=None)
    p.add_argument("--expand", type=int, default=None, help="evo, evo-search: the evo strategy's random features")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.job == "features":
        _features(args)
        return 0
    row = {"closed": _closed, "evo": _evo, "evo-search": _search, "joint": _joint}[args.job](args)
    write_json_atomic(args.out, row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
