"""A generated class-incremental video benchmark: clip-level vs frame-level accuracy, and the cost
per increment of evo's closed-form fast path against joint retraining.

Generates a video folder (one subfolder per Fashion-MNIST class, --clips clips a class, each clip
--shots-per-clip shots of different items of its class with pan/zoom, noise and cuts), samples
--frames frames per clip, splits by clip (30% of each class's clips to test), and learns
--increments increments of new classes with `evo.Learner` strategies `evo` (frozen ImageNet Lite0
at --input-size, exact ridge head) and `joint` (every layer of the pretrained model retrained on all
data so far: AdamW lr 1e-3, cosine decay, --epochs 10, batch 32; 3 SGD epochs left it near chance,
as few steps on a few hundred frames). After each increment both are scored on the test clips of every class seen: frame accuracy (each frame
alone) and clip accuracy (mean of the clip's frame probabilities).

    python benchmarks/video_incremental.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import evo  # noqa: E402
import evo.zoo  # noqa: E402
from evo.data import class_incremental  # noqa: E402
from evo.data.video import clip_scores, load_videos  # noqa: E402

JOINT = {"trainable": "all"}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--clips", type=int, default=10, help="clips per class")
    p.add_argument("--shots-per-clip", type=int, default=3)
    p.add_argument("--frames", type=int, default=8, help="frames sampled per clip (uniform)")
    p.add_argument("--increments", type=int, default=5)
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--memory", type=int, default=200)
    p.add_argument("--epochs", type=int, default=10, help="joint's epochs per increment")
    p.add_argument("--joint-optimizer", default="adamw", choices=("adamw", "sgd"))
    p.add_argument("--joint-lr", type=float, default=1e-3)
    p.add_argument("--joint-batch-size", type=int, default=32)
    p.add_argument("--strategies", nargs="+", default=["evo", "joint"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from videogen import collection

    root = Path(tempfile.mkdtemp(prefix="evo-video-cil-"))
    t = time.perf_counter()
    collection(root, n_classes=args.classes, clips_per_class=args.clips, shots_per_clip=args.shots_per_clip,
               seed=args.seed, size=64)
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    train, test = load_videos(root, sampling="uniform", frames=args.frames, detector=None, test_fraction=0.3,
                              seed=args.seed)
    load_s = time.perf_counter() - t
    print(f"generated {args.classes}x{args.clips} clips in {gen_s:.0f}s; sampled {len(train)} train / "
          f"{len(test)} test frames in {load_s:.0f}s", flush=True)
    stream = class_incremental((train.data, test.data), increments=args.increments, seed=args.seed)
    results = {}
    for name in args.strategies:
        graph = evo.zoo.load("efficientnet_lite0", pretrained=True, input_size=args.input_size)
        opts = {**JOINT, "epochs": args.epochs, "optimizer": args.joint_optimizer, "lr": args.joint_lr,
                "batch_size": args.joint_batch_size} if name != "evo" else {}
        learner = evo.Learner(graph, memory=args.memory, strategy=name, progress=False, **opts)
        rows = []
        for inc in stream:
            r = learner.learn(inc)
            seen = np.isin(np.array(test.data.classes)[test.data.labels], inc.classes_so_far)
            sub = test.subset(np.flatnonzero(seen))
            s = clip_scores(sub, learner.predict_proba(sub.data.images), learner.classes_)
            rows.append({"increment": inc.index, "classes": len(inc.classes_so_far), "n_train": r.n_train,
                         "tflops": r.cost.flops / 1e12, "seconds": r.cost.seconds, **s})
            print(f"{name:<6} inc {inc.index}: {len(inc.classes_so_far):>2} classes  frame acc "
                  f"{s['frame_accuracy']:.3f}  clip acc {s['clip_accuracy']:.3f}  "
                  f"{r.cost.flops / 1e12:.3f} TFLOPs  {r.cost.seconds:.1f}s", flush=True)
        results[name] = rows
    if "evo" in results and "joint" in results:
        for e, j in zip(results["evo"], results["joint"], strict=True):
            print(f"increment {e['increment']}: evo/joint cost {e['tflops'] / j['tflops']:.3f} (FLOPs), "
                  f"{e['seconds'] / j['seconds']:.3f} (seconds)")
    doc = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
           "threads": args.threads, "setting": vars(args) | {"out": str(args.out)}, "train_frames": len(train),
           "test_frames": len(test), "results": results}
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
