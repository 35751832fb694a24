"""The peer benchmark's closed-form baselines (benchmarks/peers/) on real Fashion-MNIST features.

Two increments × 2 classes × 50 images per class from the ImageNet-pretrained Lite0 at 64 px (real
data, real weights); each method must be well above chance (25%), and where the paper defines a
batch reference the incremental result must equal it: ACIL's recursive least squares == the joint
least-squares solve, SimpleCIL's prototypes == class means in any order, SLDA's streaming means ==
class means, RanPAC's λ search through the push-through identity == the paper's primal solves.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

PEERS = Path(__file__).resolve().parents[1] / "benchmarks" / "peers"
sys.path.insert(0, str(PEERS))

import acil  # noqa: E402
import common  # noqa: E402
import ranpac  # noqa: E402
import simplecil  # noqa: E402
import slda  # noqa: E402
from metrics import Recorder  # noqa: E402

from evo.learn.train import run_batches  # noqa: E402


@pytest.fixture(scope="module")
def feats():
    split = common.load_split(0, 50, 50)
    graph = common.backbone_graph()
    net = graph.to_module().eval().to(memory_format=torch.channels_last)
    pre = common.preprocess(graph)

    def f(images):
        return run_batches(net, images, pre, lambda m, x: m.forward_features(x), progress=False).double()

    train = [(f(x), torch.from_numpy(np.array(y))) for x, y in zip(split.train_images[:2], split.train_labels[:2],
                                                                    strict=True)]
    task = np.asarray(split.class_to_increment)[split.test_labels]
    keep = task <= 1
    test_x, test_y = f(split.test_images[keep]), split.test_labels[keep]
    return train, test_x, test_y, split.class_to_increment


def _run(method, feats):
    train, test_x, test_y, c2i = feats
    rec = Recorder(test_y, c2i)
    for i, (x, y) in enumerate(train):
        flops = method.learn(x, y, 2 * (i + 1))
        assert flops > 0
        rec.add(i, method.predict(test_x[torch.from_numpy(rec.seen_mask(i))]).numpy())
    return rec.summary()


@pytest.mark.parametrize("make", [lambda d: simplecil.SimpleCIL(), lambda d: ranpac.RanPAC(d, dim=1000),
                                  lambda d: acil.ACIL(d, buffer=1000), lambda d: slda.SLDA(d)],
                         ids=["SimpleCIL", "RanPAC", "ACIL", "SLDA"])
def test_each_method_learns_two_increments(feats, make):
    s = _run(make(feats[0][0][0].shape[1]), feats)
    assert len(s["matrix"]) == 2 and s["forgetting"] is not None
    assert s["final_accuracy"] > 0.6, s  # 4 classes: chance is 0.25
    assert s["average_incremental_accuracy"] >= s["final_accuracy"] - 0.05


def test_acil_recursion_equals_joint_least_squares(feats):
    train = feats[0]
    d = train[0][0].shape[1]
    m = acil.ACIL(d, buffer=600, gamma=0.1, chunk=37)  # several Woodbury updates per increment
    for i, (x, y) in enumerate(train):
        m.learn(x, y, 2 * (i + 1))
    x_all = torch.cat([x for x, _ in train])
    y_all = torch.cat([y for _, y in train])
    ref = m.batch_solution(x_all, y_all, 4)
    assert torch.allclose(m.W, ref, rtol=1e-6, atol=1e-8 * float(ref.abs().max()))
    wrong = acil.ACIL(d, buffer=600, gamma=1.0, chunk=37)  # the check can fail: another γ differs
    for i, (x, y) in enumerate(train):
        wrong.learn(x, y, 2 * (i + 1))
    assert not torch.allclose(wrong.W, ref, rtol=1e-6, atol=1e-8 * float(ref.abs().max()))


def test_simplecil_prototypes_are_class_means_in_any_order(feats):
    train = feats[0]
    fwd, rev = simplecil.SimpleCIL(), simplecil.SimpleCIL()
    for i, (x, y) in enumerate(train):
        fwd.learn(x, y, 2 * (i + 1))
    rev.learn(torch.cat([x for x, _ in train[::-1]]), torch.cat([y for _, y in train[::-1]]), 4)
    assert torch.allclose(fwd.prototypes, rev.prototypes)
    x, y = train[1]
    assert torch.allclose(fwd.prototypes[2], x[y == 2].mean(0))


def test_slda_streaming_means_equal_batch_means(feats):
    train = feats[0]
    m = slda.SLDA(train[0][0].shape[1])
    for i, (x, y) in enumerate(train):
        m.learn(x, y, 2 * (i + 1))
    for c in range(4):
        x, y = train[c // 2]
        assert torch.allclose(m.mu[c], x[y == c].mean(0), atol=1e-9)
    assert torch.allclose(m.sigma, m.sigma.T) and float(torch.linalg.eigvalsh(m.sigma).min()) > -1e-9
    assert m.count.sum() == sum(len(y) for _, y in train)


def test_ranpac_ridge_search_matches_primal_solves(feats):
    x, y = feats[0][0]
    m = ranpac.RanPAC(x.shape[1], dim=300, seed=1)
    h = m.rp(x)
    Y = torch.nn.functional.one_hot(y, 2).to(torch.float64)
    lam, _ = m._choose_ridge(h, Y)
    perm = torch.from_numpy(np.random.default_rng([1, 0]).permutation(h.shape[0]))
    hp, yp = h[perm], Y[perm]
    k = int(h.shape[0] * 0.8)
    g, q = hp[:k].T @ hp[:k], hp[:k].T @ yp[:k]
    losses = [float(((hp[k:] @ torch.linalg.solve(g + r * torch.eye(300, dtype=torch.float64), q) - yp[k:]) ** 2).mean())
              for r in ranpac.RIDGES]
    assert lam == ranpac.RIDGES[int(np.argmin(losses))]
