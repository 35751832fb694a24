"""Probe: after the 0.25 recipe's training, does the committed ridge head gain from reading the frozen and
tuned intermediate taps beside the pooled top? (training is unaffected: head_init fresh draws a random head).
Usage: .venv/bin/python benchmarks/head_taps_probe.py SEED OUTDIR THREADS
"""
import json  # noqa: E401
import sys
import time
from pathlib import Path

import numpy as np
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
from evo.learn.latent import StoreConfig
from evo.learn.strategies import make_strategy
from evo.learn.train import run_batches

seed = int(sys.argv[1])
out = Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
pc = int(sys.argv[4]) if len(sys.argv) > 4 else None
stream = evo.data.class_incremental("fashion-mnist", increments=5, seed=seed, per_class_train=pc, per_class_test=pc)
graph = evo.zoo.load("efficientnet_lite0", pretrained=True, input_size=64)
if not (out / "graph.json").exists():
    strat = make_strategy("evo_latent", seed=seed, epochs=1, lr=1e-3, warmup=0.3, train_batch_size=64,
                          weight_decay=0.01, taps="features", head_init="fresh", replay="balanced", subsample=0.6)
    learner = Learner(graph, strategy=strat, progress=False, seed=seed, latents=StoreConfig(cut=8, codec="int8"))
    t0 = time.time()
    reps = [learner.learn(inc) for inc in stream]
    print("recipe", [r.accuracy for r in reps], time.time() - t0, flush=True)
    io.save(learner.graph_, out)
    (out / "recipe.json").write_text(json.dumps([r.accuracy for r in reps]))
tuned = io.load(out)
last = stream[4]
train = concat([inc.train.relabel(last.classes_so_far) for inc in stream])
test = last.test.relabel(last.classes_so_far) if hasattr(last.test, "relabel") else last.test
auto = parse_taps(graph, "auto")
feat = parse_taps(graph, "features")
print("auto taps", auto, "features", feat, flush=True)
layout = auto + feat
pre = Learner(graph).preprocess
def feats(g, images):
    net = tap_graph(g, layout).to_module().eval()
    return run_batches(net, images, pre, lambda n, x: n.forward_features(x), None, 256, None, False)
F = {}
for name, g in (("tuned", tuned), ("frozen", graph)):
    t0 = time.time()
    F[name] = (feats(g, train.images), feats(g, test.images))
    print(name, "features", F[name][0].shape, time.time() - t0, flush=True)
ytr = torch.as_tensor(train.labels)
yte = torch.as_tensor(test.labels)
widths = [640, 1792, 1280]  # stride 8 4x4, stride 16 4x4, pooled top
off = np.cumsum([0] + widths)
def cols(parts):
    return np.concatenate([np.arange(off[i], off[i + 1]) for i in parts])
res = {}
def fit(name, Xtr, Xte):
    h = RidgeHead(1.0)
    h.fit(Xtr, ytr, 10)
    lam, _ = h.gcv_walk(None, max_evals=12)
    h.ridge = lam
    w, b = h.solve(lam)
    z = Xte.double() @ w.T + b
    acc = float((z.argmax(1) == yte).double().mean())
    res[name] = acc
    print(name, f"{100*acc:.2f}", "lambda", lam, flush=True)
    return z
S8, S16, TOP = 0, 1, 2
zt = fit("tuned top", F["tuned"][0][:, cols([TOP])], F["tuned"][1][:, cols([TOP])])
zf = fit("frozen auto (fast path)", F["frozen"][0][:, cols([S8, S16])], F["frozen"][1][:, cols([S8, S16])])
fit("tuned top + stride8 (frozen)", F["tuned"][0][:, cols([S8, TOP])], F["tuned"][1][:, cols([S8, TOP])])
fit("tuned top + tuned stride16", F["tuned"][0][:, cols([S16, TOP])], F["tuned"][1][:, cols([S16, TOP])])
fit("tuned auto+top", F["tuned"][0], F["tuned"][1])
fit("tuned top + frozen auto (concat)", torch.cat([F["tuned"][0][:, cols([TOP])], F["frozen"][0][:, cols([S8, S16])]], 1),
    torch.cat([F["tuned"][1][:, cols([TOP])], F["frozen"][1][:, cols([S8, S16])]], 1))
for w in (0.3, 0.5):
    z = (1 - w) * torch.softmax(zt * 10, 1) + w * torch.softmax(zf * 10, 1)
    res[f"ensemble w{w}"] = float((z.argmax(1) == yte).double().mean())
    print("ensemble", w, res[f"ensemble w{w}"])
(out / "probe.json").write_text(json.dumps(res, indent=1))
