"""RanPAC (McDonnell et al. 2023, "RanPAC: Random Projections and Pre-trained Models for Continual
Learning", NeurIPS), phase 2 on frozen features (no first-session PETL adaptation: the backbone
stays exactly the frozen Lite0 every method here shares).

h = ReLU(f W), W an (L × M) matrix of N(0, 1) entries fixed up front (the paper: M = 10000).
Streaming statistics G = Σ h hᵀ and Q = Σ h yᵀ (y one-hot); after each task the readout is
W_o = (G + λI)⁻¹ Q, with λ chosen per task as in the authors' code (`optimise_ridge_parameter`):
on the current task's features, fit on the first 80% and pick the λ in 10^-8..10^13 with the
lowest mean squared error on the last 20%. The paper's ridge solves are (G_val + λI)⁻¹ Q_val with
G_val = AᵀA of rank <= 0.8 n; we evaluate them through the push-through identity
Aᵀ(AAᵀ + λI)⁻¹Y, which is the same matrix, at n³ instead of M³ cost. The task's samples are
shuffled (seeded) before the split, as the authors' shuffling loader does. No bias, as in the paper.
evo.learn.head.RandomProjection draws W (seeded, float64, scaled by 1/sqrt(L): a constant factor
that the per-task λ search absorbs).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from evo.learn.head import RandomProjection

RIDGES = tuple(10.0**k for k in range(-8, 14))


class RanPAC:
    name = "RanPAC"

    def __init__(self, in_dim: int, dim: int = 10000, seed: int = 0) -> None:
        self.rp = RandomProjection(in_dim, dim, seed=seed, activation="relu")
        self.seed, self.dim = seed, dim
        self.G = torch.zeros(dim, dim, dtype=torch.float64)
        self.Q: Tensor | None = None
        self.Wo: Tensor | None = None
        self.ridge: float | None = None
        self.tasks = 0

    def learn(self, x: Tensor, y: Tensor, n_classes: int) -> int:
        n, m = x.shape[0], self.dim
        h = self.rp(x)  # ReLU(x W)
        Y = torch.nn.functional.one_hot(y, n_classes).to(torch.float64)
        Q = torch.zeros(m, n_classes, dtype=torch.float64)
        if self.Q is not None:
            Q[:, : self.Q.shape[1]] = self.Q
        self.Q = Q + h.T @ Y
        self.G += h.T @ h
        flops = 2 * n * x.shape[1] * m + 2 * n * m * m + 2 * n * m * n_classes
        self.ridge, f = self._choose_ridge(h, Y)
        flops += f
        # LU, as the authors' code solves it: at the smallest λ of the grid, G (rank <= n < M) plus λI can be
        # too ill-conditioned for a Cholesky factorisation in float64 (seen at 200 images/class)
        self.Wo = torch.linalg.solve(self.G + self.ridge * torch.eye(m, dtype=torch.float64), self.Q)  # (M, C)
        self.tasks += 1
        return int(flops + 2 * m**3 // 3 + 2 * m * m * n_classes)

    def _choose_ridge(self, h: Tensor, Y: Tensor) -> tuple[float, int]:
        perm = torch.from_numpy(np.random.default_rng([self.seed, self.tasks]).permutation(h.shape[0]))
        h, Y = h[perm], Y[perm]
        k = int(h.shape[0] * 0.8)
        a, ya, hv, yv = h[:k], Y[:k], h[k:], Y[k:]
        kern = a @ a.T  # (k, k); (AᵀA + λI)⁻¹AᵀY = Aᵀ(AAᵀ + λI)⁻¹Y
        cross = hv @ a.T  # predictions on the validation part are cross (AAᵀ + λI)⁻¹ Y
        evals, evecs = torch.linalg.eigh(kern)
        proj = evecs.T @ ya
        losses = []
        for lam in RIDGES:
            alpha = evecs @ (proj / (evals.clamp_min(0) + lam)[:, None])
            losses.append(float(((cross @ alpha - yv) ** 2).mean()))
        m, c, nv = h.shape[1], Y.shape[1], hv.shape[0]
        flops = 2 * k * k * m + 2 * nv * k * m + 9 * k**3 + len(RIDGES) * (4 * k * k * c + 2 * nv * k * c)
        return RIDGES[int(np.argmin(losses))], int(flops)

    def predict(self, x: Tensor) -> Tensor:
        return (self.rp(x) @ self.Wo).argmax(1)
