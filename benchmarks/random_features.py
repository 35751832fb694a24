"""What random ReLU features of the taps buy the closed-form head, and at what width (the `evo` strategy's `expand`).

On all of Split Fashion-MNIST's training images (Lite0 at 64 px, evo's default taps: 2,432 features),
one ridge head per feature map, λ by evo's GCV walk, accuracy on the 10,000 test images. With all
the data seen the fast path's head is this joint solve whatever the class order, so one fit per map
is the final accuracy of an incremental run. The maps:
- `taps`: the features as they are (the fast path);
- `relu(xW)`: RanPAC's expansion alone (McDonnell et al. 2023), W ~ N(0, 1/d);
- `[x, relu(zW)]`: the taps with random ReLU features of their standardisation z beside them (what
  `expand` builds: `evo.graph.layers.RandomFeatures`), and a few variants of it.

The features come from the peer benchmark's extractor (the same images and taps):

    .venv/bin/python benchmarks/peers/worker.py features --seed 0 --out /tmp/feat0.npz
    .venv/bin/python benchmarks/random_features.py /tmp/feat0.npz --widths 1000 2000 3000 \
        --out benchmarks/results/random_features.json
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from evo.graph.layers import random_matrix, standardisation
from evo.learn.head import RidgeHead
from evo.runs import write_json_atomic

Map = Callable[[Tensor], Tensor]


def fit(train: Tensor, labels: Tensor, test: Tensor, test_labels: np.ndarray, fmap: Map) -> dict:
    t0 = time.perf_counter()
    head = RidgeHead(1.0)
    for i in range(0, len(train), 2000):
        head.partial_fit(fmap(train[i : i + 2000].double()), labels[i : i + 2000], 10)
    lam, flops = head.gcv_walk()
    head.ridge = lam
    pred = torch.cat([head.predict(fmap(test[i : i + 2000].double())) for i in range(0, len(test), 2000)])
    return {"accuracy": float((pred.numpy() == test_labels).mean()), "ridge": lam, "gcv_gflops": flops / 1e9,
            "dim": int(head.dim_), "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("features", type=Path, help="an .npz written by benchmarks/peers/worker.py features")
    p.add_argument("--widths", type=int, nargs="+", default=[1000, 2000, 3000])
    p.add_argument("--ranpac-widths", type=int, nargs="*", default=[2000, 6000, 10000])
    p.add_argument("--variants", action="store_true", help="also the variants of [x, relu(zW)] at the first width")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    f = np.load(args.features)
    n_inc = len([k for k in f.files if k.startswith("taps_train_")])
    train = torch.from_numpy(np.concatenate([f[f"taps_train_{i}"] for i in range(n_inc)]).astype(np.float32))
    labels = torch.from_numpy(np.concatenate([f[f"label_{i}"] for i in range(n_inc)]))
    test, test_labels = torch.from_numpy(f["taps_test"]), f["test_labels"]
    first = torch.from_numpy(f["taps_train_0"]).double()  # what `expand` standardises on: the first increment
    mean, scale = standardisation(first)
    d = train.shape[1]

    maps: list[tuple[str, int, Map]] = [("taps", 0, lambda x: x)]
    for m in args.ranpac_widths:
        w = random_matrix(d, m, 0)
        maps.append(("relu(xW)", m, lambda x, w=w: torch.relu(x @ w)))
    for m in args.widths:
        w = random_matrix(d, m, 0)
        maps.append(("[x, relu(zW)]", m, lambda x, w=w: torch.cat([x, torch.relu(((x - mean) * scale) @ w)], 1)))
    if args.variants:
        m = args.widths[0]
        w = random_matrix(d, m, 0)
        maps += [("[x, relu(xW)] (not standardised)", m, lambda x: torch.cat([x, torch.relu(x @ w)], 1)),
                 ("[x, relu((x - mean)W)] (centred)", m, lambda x: torch.cat([x, torch.relu((x - mean) @ w)], 1)),
                 ("[z, relu(zW)] (z read too)", m, lambda x: torch.cat([(x - mean) * scale,
                                                                         torch.relu(((x - mean) * scale) @ w)], 1)),
                 ("relu(zW) (standardised, no x)", m, lambda x: torch.relu(((x - mean) * scale) @ w))]
    rows = []
    for name, m, fmap in maps:
        row = {"map": name, "width": m, **fit(train, labels, test, test_labels, fmap)}
        rows.append(row)
        print(f"{name:<36} M={m:>6}  acc {100 * row['accuracy']:.2f}%  λ {row['ridge']:.3g}  d {row['dim']}  "
              f"{row['seconds']:.0f} s", flush=True)
    doc = {"command": "benchmarks/random_features.py", "features": str(args.features), "n_train": len(train),
           "n_test": len(test), "machine": f"{platform.node()}, {args.threads} threads, no GPU",
           "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}
    if args.out:
        write_json_atomic(args.out, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
