"""The latent store at full scale (issue 14): all 60,000 Fashion-MNIST training images at Lite0's cut.

The other latent-store figures come from per-class subsets, because training above the cut on the full
data needs a GPU. The store itself does not, and this measures it at the issue's scale, per codec:
- its bytes, per image and in total, on disk: the real part files, written atomically as a run writes
  them, one per increment of Split Fashion-MNIST 5 × 2;
- the time to encode: the pass below the cut, paid once per image and shared by every codec here;
- the time to recompute the head's statistics from the whole store: decode, the pass above the cut
  with Lite0's own weights, and the Gram;
- what compression costs the head: the ridge head (λ by GCV) is solved from each codec's statistics
  and tested on the 10,000 test images, side by side with fp32 latents. The difference in
  statistics is reported too (relative Frobenius norm of G).

The layers above the cut keep their pretrained weights here: this isolates the codec's loss in the
statistics, not in training on decoded latents (`latent_store.py` measures that on subsets).

    .venv/bin/python benchmarks/store_scale.py --out benchmarks/results/store_scale.json   # ~10 min, 2 cores
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import evo.data  # noqa: E402
import evo.zoo  # noqa: E402
from evo.graph.taps import tap_graph  # noqa: E402
from evo.learn import Learner  # noqa: E402
from evo.learn.head import RidgeHead  # noqa: E402
from evo.learn.latent import Part, bytes_per_row, cut_node, encode, read_part, split, write_part  # noqa: E402
from evo.learn.latent.below import encode_flops  # noqa: E402
from evo.learn.tracked import head_taps  # noqa: E402
from evo.learn.train import run_batches  # noqa: E402

CODECS = ("fp32", "fp16", "int8")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-class-train", type=int, default=None, help="default: all 6,000")
    p.add_argument("--per-class-test", type=int, default=None, help="default: all 1,000")
    p.add_argument("--cut", type=int, default=8, help="the cut's stride: the last block at it (8 or 16)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dir", type=Path, default=None, help="write the store here (default: a temp folder)")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    stream = evo.data.class_incremental("fashion-mnist", increments=5, seed=0,
                                        per_class_train=args.per_class_train, per_class_test=args.per_class_test)
    learner = Learner(evo.zoo.load("efficientnet_lite0", pretrained=True, input_size=64), strategy="evo",
                      progress=False)
    graph = learner.strategy.prepare(learner.graph)  # the head's taps, as the fast path reads them
    cut = cut_node(graph, args.cut)
    below, above = split(graph, cut)
    below_net = below.to_module().eval()
    above_net = tap_graph(above, head_taps(graph)).to_module().eval()
    pre = learner.preprocess
    classes = stream[len(stream) - 1].classes_so_far
    n_train = sum(len(inc.train) for inc in stream)
    print(f"{n_train} training images, {len(stream[len(stream) - 1].test)} test; cut {cut} "
          f"{tuple(graph.shape(cut))}; {platform.platform()}", flush=True)

    root = args.dir or Path(tempfile.mkdtemp(prefix="evo-store-scale-"))
    out: dict = {"machine": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M"), "cut": cut,
                 "cut_shape": list(graph.shape(cut)), "n_train": n_train, "threads": args.threads, "codecs": {}}
    try:
        # 1. the pass below the cut, once per image; each batch encoded by every codec
        encode_s = dict.fromkeys(CODECS, 0.0)
        t0 = time.perf_counter()
        for inc in stream:
            codes = {c: [] for c in CODECS}
            scales = {c: [] for c in CODECS}
            for start in range(0, len(inc.train), 512):
                z = run_batches(below_net, inc.train.images[start:start + 512], pre, lambda n, x: n(x),
                                None, 256, None, False)
                for c in CODECS:
                    t = time.perf_counter()
                    code, scale = encode(z, c)
                    codes[c].append(code)
                    scales[c].append(scale)
                    encode_s[c] += time.perf_counter() - t
            labels = np.array([classes.index(inc.train.classes[i]) for i in inc.train.labels], dtype=np.int64)
            for c in CODECS:
                part = Part(inc.index, list(classes), labels, np.concatenate(codes[c]),
                            np.concatenate(scales[c]) if c == "int8" else None, c, cut,
                            flops=encode_flops(graph, cut, len(labels)))
                t = time.perf_counter()
                write_part(root / c / f"part-{inc.index}", part)
                encode_s[c] += time.perf_counter() - t
            print(f"  increment {inc.index}: {len(labels)} images encoded", flush=True)
        below_s = time.perf_counter() - t0 - sum(encode_s.values())
        out["below_seconds"] = below_s
        out["below_tflops"] = encode_flops(graph, cut, n_train) / 1e12

        # the test images' features, through the same two halves in fp32
        test = stream[len(stream) - 1].test
        z_test = run_batches(below_net, test.images, pre, lambda n, x: n(x), None, 256, None, False)
        with torch.inference_mode():
            test_feats = torch.cat([_features(above_net, z_test[i:i + 512]) for i in range(0, len(z_test), 512)])
        truth = torch.as_tensor([classes.index(test.classes[i]) for i in test.labels])

        # 2. per codec: statistics recomputed from the whole store, the head solved and tested
        grams = {}
        for c in CODECS:
            parts = [read_part(root / c / f"part-{k}") for k in range(len(stream))]
            on_disk = sum(f.stat().st_size for f in (root / c).rglob("*") if f.is_file())
            t = time.perf_counter()
            head = RidgeHead(1.0)
            for part in parts:
                for start in range(0, len(part), 512):
                    rows = np.arange(start, min(start + 512, len(part)))
                    with torch.inference_mode():
                        feats = _features(above_net, part.decode(rows))
                    head.partial_fit(feats, torch.as_tensor(part.labels[rows]), len(classes))
            recompute_s = time.perf_counter() - t
            lam, _ = head.gcv_walk()
            head.ridge = lam
            head.solve()
            acc = float((head.predict(test_feats) == truth).double().mean())
            grams[c] = head.gram_
            out["codecs"][c] = {"bytes_per_image": bytes_per_row(tuple(graph.shape(cut)), c),
                                "bytes_on_disk": on_disk, "MB_on_disk": on_disk / 1e6,
                                "encode_and_write_seconds": encode_s[c], "recompute_seconds": recompute_s,
                                "ridge": lam, "test_accuracy": acc}
            print(f"  {c}: {on_disk / 1e6:.1f} MB on disk ({on_disk / n_train:.0f} B/image), statistics "
                  f"recomputed in {recompute_s:.1f} s, head test accuracy {100 * acc:.2f} %", flush=True)
        for c in CODECS:
            rel = float(torch.linalg.norm(grams[c] - grams["fp32"]) / torch.linalg.norm(grams["fp32"]))
            out["codecs"][c]["gram_rel_diff_vs_fp32"] = rel
            out["codecs"][c]["accuracy_vs_fp32_points"] = 100 * (out["codecs"][c]["test_accuracy"]
                                                                 - out["codecs"]["fp32"]["test_accuracy"])
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(out, indent=1))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    return out


def _features(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net.forward_features(x)


if __name__ == "__main__":
    main()
