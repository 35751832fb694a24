"""Probe 2: which cheap committed-head layouts (tuned top + coarser pools of the stride-8/16 taps) keep the
gain of `tuned auto+top`? Reuses the tuned graph the first probe saved (OUTDIR/graph.json).
Usage: .venv/bin/python benchmarks/head_layouts_probe.py SEED OUTDIR THREADS
"""
import json  # noqa: E401
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import evo.data
import evo.zoo
from evo.data.dataset import concat
from evo.graph import io
from evo.graph.taps import tap_graph
from evo.learn import Learner
from evo.learn.features import parse_taps
from evo.learn.head import RidgeHead
from evo.learn.train import run_batches

seed = int(sys.argv[1])
out = Path(sys.argv[2])
torch.set_num_threads(int(sys.argv[3]))
stream = evo.data.class_incremental("fashion-mnist", increments=5, seed=seed)
graph = evo.zoo.load("efficientnet_lite0", pretrained=True, input_size=64)
tuned = io.load(out)
last = stream[4]
train = concat([inc.train.relabel(last.classes_so_far) for inc in stream])
test = last.test.relabel(last.classes_so_far) if hasattr(last.test, "relabel") else last.test
layout = parse_taps(graph, "auto") + parse_taps(graph, "features")
pre = Learner(graph).preprocess
net = tap_graph(tuned, layout).to_module().eval()
t0 = time.time()
Ftr = run_batches(net, train.images, pre, lambda n, x: n.forward_features(x), None, 256, None, False)
Fte = run_batches(net, test.images, pre, lambda n, x: n.forward_features(x), None, 256, None, False)
print("features", Ftr.shape, time.time() - t0, flush=True)
ytr = torch.as_tensor(train.labels)
yte = torch.as_tensor(test.labels)

def part(F, which, grid):
    c, o = {"s8": (40, 0), "s16": (112, 640)}[which]
    m = F[:, o:o + c * 16].reshape(len(F), c, 4, 4)
    return torch.nn.functional.adaptive_avg_pool2d(m, grid).flatten(1)

def top(F):
    return F[:, 640 + 1792:]

variants = {
    "top": [],
    "top+s8@1+s16@1": [("s8", 1), ("s16", 1)],
    "top+s8@2": [("s8", 2)],
    "top+s16@2": [("s16", 2)],
    "top+s8@2+s16@2": [("s8", 2), ("s16", 2)],
    "top+s8@4+s16@2": [("s8", 4), ("s16", 2)],
    "top+s8@2+s16@4": [("s8", 2), ("s16", 4)],
    "top+s8@4+s16@4": [("s8", 4), ("s16", 4)],
}
res = {}
for name, parts in variants.items():
    Xtr = torch.cat([top(Ftr)] + [part(Ftr, w, g) for w, g in parts], 1)
    Xte = torch.cat([top(Fte)] + [part(Fte, w, g) for w, g in parts], 1)
    h = RidgeHead(1.0)
    h.fit(Xtr, ytr, 10)
    lam, _ = h.gcv_walk(None, max_evals=12)
    w, b = h.solve(lam)
    acc = float(((Xte.double() @ w.T + b).argmax(1) == yte).double().mean())
    res[name] = {"acc": acc, "d": Xtr.shape[1], "lambda": lam}
    print(name, Xtr.shape[1], f"{100 * acc:.2f}", flush=True)
(out / "layouts.json").write_text(json.dumps(res, indent=1))
