"""One Avalanche strategy on one seed of Split Fashion-MNIST 5×2, run inside .venv-avalanche.

    benchmarks/peers/.venv-avalanche/bin/python benchmarks/peers/avalanche_runner.py \
        --strategy Replay --seed 0 --per-class 300 --per-class-test 300 --epochs 3 --out row.json

The backbone is evo's ImageNet-pretrained Lite0 at 64 px (`evo.zoo.load(...).to_module()`), used as
a plain nn.Module: its pre-logit features (1280-d) feed a fresh nn.Linear(1280, 10). The stream
(class order, images, test split) comes from `evo.data.class_incremental` through common.py, the
experiences are exactly evo's increments (labels in arrival order), memory is 500 images. All
strategies share SGD (lr 0.01, momentum 0.9, weight decay 1e-4, batch 64, `--epochs` per
experience; evo's SGD defaults) and every layer trains. Strategy settings (not tuned): EWC
λ = 1000 (separate mode); LwF α = 1, T = 2; DER α = 0.1, β = 0.5 (Avalanche's DER, i.e. DER++);
iCaRL and GDumb with their Avalanche defaults and fixed memory. Evaluation: after each experience,
the test images of every class seen so far, argmax over the seen classes (iCaRL: its NCM
classifier). FLOPs: every matmul/convolution executed inside `strategy.train` (forward,
backward, distillation teachers, Fisher, herding), counted by torch's FlopCounterMode with
evo's grouped-convolution correction. Wall time: `strategy.train` only (evaluation excluded,
as for every other method). On error the row carries the exception instead of metrics.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import common  # noqa: I001  (sets sys.path for evo)
import numpy as np
import torch
from metrics import Recorder, peak_rss_bytes
from torch import nn

from evo.graph.cost import flop_counter  # noqa: E402

STRATEGIES = ("Naive", "Replay", "EWC", "LwF", "iCaRL", "GDumb", "DER")
SGD = {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}


class Lite0Features(nn.Module):
    """evo's compiled Lite0 as a feature extractor: x -> its 1280-d pre-logit features."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_strategy(name: str, seed: int, n_classes: int, epochs: int, memory: int, batch: int = 64):
    import avalanche.training as T
    from avalanche.training.plugins import EvaluationPlugin

    torch.manual_seed(seed)
    graph = common.backbone_graph()
    features = Lite0Features(graph.to_module())
    dim = graph.shape(graph.inputs_of(graph.head)[0])[0]
    classifier = nn.Linear(dim, n_classes)
    common_kw = {"train_mb_size": batch, "train_epochs": epochs, "eval_mb_size": 256, "device": DEVICE,
                 "evaluator": EvaluationPlugin(loggers=[])}
    if name == "iCaRL":
        params = list(features.parameters()) + list(classifier.parameters())
        return T.ICaRL(feature_extractor=features, classifier=classifier, optimizer=torch.optim.SGD(params, **SGD),
                       memory_size=memory, buffer_transform=None, fixed_memory=True, **common_kw)
    model = nn.Sequential(features, classifier)
    opt = torch.optim.SGD(model.parameters(), **SGD)
    ce = nn.CrossEntropyLoss()
    if name == "Naive":
        return T.Naive(model=model, optimizer=opt, criterion=ce, **common_kw)
    if name == "Replay":
        return T.Replay(model=model, optimizer=opt, criterion=ce, mem_size=memory, **common_kw)
    if name == "EWC":
        return T.EWC(model=model, optimizer=opt, criterion=ce, ewc_lambda=1000.0, mode="separate", **common_kw)
    if name == "LwF":
        return T.LwF(model=model, optimizer=opt, criterion=ce, alpha=1.0, temperature=2.0, **common_kw)
    if name == "GDumb":
        return T.GDumb(model=model, optimizer=opt, criterion=ce, mem_size=memory, **common_kw)
    if name == "DER":
        return T.DER(model=model, optimizer=opt, criterion=ce, mem_size=memory, alpha=0.1, beta=0.5, **common_kw)
    raise ValueError(f"unknown strategy {name!r}; expected one of {STRATEGIES}")


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, n_seen: int) -> torch.Tensor:
    model.eval()
    out = []
    for i in range(0, len(x), 256):
        logits = model(x[i : i + 256].to(DEVICE))
        out.append(logits[:, :n_seen].argmax(1).cpu())
    model.train()
    return torch.cat(out)


def run(args) -> dict:
    from avalanche.benchmarks import tensors_benchmark

    split = common.load_split(args.seed, args.per_class, args.per_class_test)
    pre = common.preprocess(common.backbone_graph())
    train = [(common.to_tensor(x, pre), torch.from_numpy(np.array(y))) for x, y in zip(split.train_images, split.train_labels,
                                                                             strict=True)]
    test_x, test_y = common.to_tensor(split.test_images, pre), torch.from_numpy(np.array(split.test_labels))
    task = torch.as_tensor(split.class_to_increment)[test_y]
    if args.strategy == "iCaRL":  # its plugin needs a new-classes scenario (n_classes_per_exp): same experiences
        from avalanche.benchmarks import nc_benchmark
        from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as tensor_dataset

        x_all, y_all = torch.cat([x for x, _ in train]), torch.cat([y for _, y in train])
        bench = nc_benchmark(tensor_dataset(x_all, y_all, targets=y_all.tolist(), task_labels=0),
                             tensor_dataset(test_x, test_y, targets=test_y.tolist(), task_labels=0),
                             n_experiences=len(train), task_labels=False, shuffle=False,
                             fixed_class_order=list(range(split.n_classes)))
    else:
        bench = tensors_benchmark(train_tensors=train, test_tensors=[(test_x[task == i], test_y[task == i])
                                                                     for i in range(len(train))],
                                  task_labels=[0] * len(train))
    strategy = make_strategy(args.strategy, args.seed, split.n_classes, args.epochs, common.MEMORY, args.batch_size)
    rec = Recorder(split.test_labels, split.class_to_increment)
    flops, seconds = 0, 0.0
    for i, exp in enumerate(bench.train_stream):
        t0 = time.perf_counter()
        with flop_counter() as counter:
            strategy.train(exp)
        seconds += time.perf_counter() - t0
        flops += int(counter.get_total_flops())
        n_seen = max(c for c, t in enumerate(split.class_to_increment) if t <= i) + 1
        mask = torch.from_numpy(rec.seen_mask(i))
        acc = rec.add(i, predict(strategy.model, test_x[mask], n_seen).numpy())
        print(f"[{args.strategy} seed {args.seed}] experience {i}: accuracy {100 * acc:.2f}% "
              f"({seconds:.0f}s, {flops / 1e12:.2f} TFLOPs)", flush=True)
    return {**rec.summary(), "tflops": flops / 1e12, "wall_seconds": seconds, "peak_mem_bytes": peak_rss_bytes(),
            "detail": {"epochs": args.epochs, "memory": common.MEMORY, **SGD, "batch_size": args.batch_size}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--strategy", choices=STRATEGIES, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-class", type=int, default=None)
    p.add_argument("--per-class-test", type=int, default=None)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        row = run(args)
    except Exception as e:  # noqa: BLE001  a failing strategy is reported in the table, never dropped
        traceback.print_exc()
        row = {"error": f"{type(e).__name__}: {e}"[:500]}
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(row, indent=1))
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
