"""The head's Gram ΦᵀΦ as one product against its upper block triangle (`evo.learn.head.add_gram`).

The closed-form head's statistics cost 2·n·d² FLOPs as one product; on the wide heads of `expand` that is
most of a round (BENCHMARKS.md, "Random features"). The upper block triangle and its mirror need about
n·d·(d + block). Two measurements, the arms interleaved so that the shared VM's drift hits both alike:
1. the update G += ΦᵀΦ alone, on n rows at the head widths evo builds (2,433: the default taps; 4,433 and
   7,433: `expand: 2000` and `5000`): the one product (what evo ran before) against the blocks, for a few
   block sizes: median seconds, FLOPs (torch's counter), and the largest difference from ΦᵀΦ;
2. the fast path end to end with `expand: 2000` (a Learner on two increments of Fashion-MNIST at 64 px):
   FLOPs, seconds and test accuracy with the head's Gram as one product and as blocks.

    .venv/bin/python benchmarks/gram.py --out benchmarks/results/gram.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

import evo.learn.cost as cost
import evo.learn.head as head
import evo.zoo
from evo.data import class_incremental
from evo.learn import Learner

ONE = "one product"


def one_product(g: Tensor, phi: Tensor, sign: int = 1) -> None:
    """What `RidgeHead.partial_fit` did before: G += sign·ΦᵀΦ as one product."""
    g += sign * (phi.T @ phi)


@contextmanager
def gram(arm: str | int):
    """The head's Gram update for one arm: the one product, or blocks of `arm` columns."""
    kept_fn, kept_block = head.add_gram, cost.GRAM_BLOCK
    if arm == ONE:
        head.add_gram = one_product
    else:
        cost.GRAM_BLOCK = int(arm)
    try:
        yield head.add_gram
    finally:
        head.add_gram, cost.GRAM_BLOCK = kept_fn, kept_block


def product(rows_list: list[int], widths: list[int], blocks: list[int], reps: int) -> list[dict]:
    out = []
    gen = torch.Generator().manual_seed(0)
    for rows, d in ((r, w) for r in rows_list for w in widths):
        phi = torch.randn(rows, d, dtype=torch.float64, generator=gen)
        ref = phi.T @ phi
        arms: list[str | int] = [ONE, *blocks]
        times: dict[str | int, list[float]] = {b: [] for b in arms}
        flops, diff = {}, {}
        for b in arms:
            g = torch.zeros(d, d, dtype=torch.float64)
            with gram(b) as update, FlopCounterMode(display=False) as counter:
                update(g, phi)
            flops[b] = int(counter.get_total_flops())
            diff[b] = float((g - ref).abs().max() / ref.abs().max())
        for _ in range(reps):
            for b in arms:
                g.zero_()
                with gram(b) as update:
                    t = time.perf_counter()
                    update(g, phi)
                    times[b].append(time.perf_counter() - t)
        med = {b: statistics.median(v) for b, v in times.items()}
        for b in arms:
            row = {"rows": rows, "width": d, "block": None if b == ONE else b, "median_seconds": med[b],
                   "seconds": times[b], "flops": flops[b], "flops_ratio": flops[b] / flops[ONE],
                   "seconds_ratio": med[b] / med[ONE], "max_relative_difference": diff[b]}
            out.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "seconds"}), flush=True)
    return out


def learn_once(stream, expand: int) -> Learner:
    learner = Learner(evo.zoo.resolve("efficientnet_lite0", 64), memory=500, expand=expand, progress=False)
    for inc in stream:
        learner.learn(inc)
    return learner


def end_to_end(reps: int, per_class: int, expand: int) -> dict:
    stream = class_incremental("fashion-mnist", increments=2, per_class_train=per_class, per_class_test=300)
    test = stream[-1].test
    runs: dict[str, list[dict]] = {ONE: [], "blocks": []}
    learn_once(stream, expand)  # warm-up: the first run pays for loading the weights and data
    for _ in range(reps):
        for arm in runs:
            with gram(ONE if arm == ONE else cost.GRAM_BLOCK):
                t = time.perf_counter()
                learner = learn_once(stream, expand)
                seconds = time.perf_counter() - t
            runs[arm].append({"seconds": seconds, "flops": learner.cost_.flops, "accuracy": learner.score(test)})
            print(arm, json.dumps(runs[arm][-1]), flush=True)
    med = {arm: statistics.median(r["seconds"] for r in v) for arm, v in runs.items()}
    return {"model": "efficientnet_lite0", "input": 64, "expand": expand, "train_images": 10 * per_class,
            "test_images": len(test), "runs": runs, "median_seconds": med,
            "seconds_ratio": med["blocks"] / med[ONE],
            "flops_ratio": runs["blocks"][0]["flops"] / runs[ONE][0]["flops"],
            "accuracy_difference": max(abs(a["accuracy"] - b["accuracy"])
                                       for a, b in zip(runs[ONE], runs["blocks"], strict=True))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[12000],
                    help="rows per update: 12,000 is one increment of Split Fashion-MNIST, a few hundred a latent batch")
    ap.add_argument("--widths", type=int, nargs="+", default=[2433, 4433, 7433])
    ap.add_argument("--blocks", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--e2e-reps", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=1000)
    ap.add_argument("--expand", type=int, default=2000)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.processor() or platform.machine()}, "
           f"{torch.get_num_threads()} threads", "gram_block": cost.GRAM_BLOCK,
           "product": product(a.rows, a.widths, a.blocks, a.reps),
           "end_to_end": end_to_end(a.e2e_reps, a.per_class, a.expand) if a.e2e_reps else None}
    if out["end_to_end"]:
        e = out["end_to_end"]
        print("end to end: seconds ratio", round(e["seconds_ratio"], 3), "FLOPs ratio", round(e["flops_ratio"], 3),
              "accuracy difference", e["accuracy_difference"])
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
