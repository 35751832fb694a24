"""ACIL (Zhuang et al. 2022, "ACIL: Analytic Class-Incremental Learning with Absolute Memorization
and Privacy Protection", NeurIPS), on frozen features.

The backbone is frozen; a buffer layer expands its features, Φ = ReLU(f W_B) with W_B random and
fixed (width d_B; default 8192, and γ = 0.1, as in the authors' code, whose buffer is an
nn.Linear with its default uniform init U(±1/sqrt(L)) and no bias), and the classifier W is kept equal to the joint
least-squares solution argmin_W ‖Y − ΦW‖² + γ‖W‖² over all data seen so far, *without
keeping any data*: recursive least squares on the regularised autocorrelation inverse
R = (ΦᵀΦ + γI)⁻¹, per chunk k (the paper's eqs. 10-11, Woodbury):
    R_k = R_{k-1} − R_{k-1}Φ_kᵀ (I + Φ_k R_{k-1} Φ_kᵀ)⁻¹ Φ_k R_{k-1}
    W_k = [W_{k-1}, 0] + R_k Φ_kᵀ (Y_k − Φ_k [W_{k-1}, 0])
starting from R_0 = I/γ, W_0 = 0, as the authors' implementation does. "Absolute memorization":
the recursive W equals the batch solve on all data (tests/test_peers_closed_form.py checks it).
DS-AL (Zhuang et al. 2024) adds a second, compensation stream on the residual; not included here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class ACIL:
    name = "ACIL"

    def __init__(self, in_dim: int, buffer: int = 8192, gamma: float = 0.1, seed: int = 0, chunk: int = 1024) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.wb = (torch.rand(in_dim, buffer, generator=gen, dtype=torch.float64) * 2 - 1) / math.sqrt(in_dim)
        self.gamma, self.chunk = float(gamma), int(chunk)
        self.R = torch.eye(buffer, dtype=torch.float64) / self.gamma
        self.W = torch.zeros(buffer, 0, dtype=torch.float64)

    def expand(self, x: Tensor) -> Tensor:
        return torch.relu(x.to(torch.float64) @ self.wb)

    def learn(self, x: Tensor, y: Tensor, n_classes: int) -> int:
        d = self.R.shape[0]
        if n_classes > self.W.shape[1]:
            self.W = torch.cat([self.W, torch.zeros(d, n_classes - self.W.shape[1], dtype=torch.float64)], 1)
        flops = 2 * x.shape[0] * x.shape[1] * d
        for start in range(0, x.shape[0], self.chunk):
            phi = self.expand(x[start : start + self.chunk])
            Y = torch.nn.functional.one_hot(y[start : start + self.chunk], n_classes).to(torch.float64)
            flops += self._update(phi, Y)
        return int(flops)

    def _update(self, phi: Tensor, Y: Tensor) -> int:
        n, d, c = phi.shape[0], phi.shape[1], Y.shape[1]
        rp = self.R @ phi.T  # (d, n)
        k = torch.eye(n, dtype=torch.float64) + phi @ rp
        self.R = self.R - rp @ torch.linalg.solve(k, rp.T)
        self.R = (self.R + self.R.T) / 2  # keep it symmetric against rounding drift
        self.W = self.W + self.R @ (phi.T @ (Y - phi @ self.W))
        return 2 * d * d * n + 2 * n * n * d + n**3 + 2 * n * n * d + 2 * d * d * n + 4 * n * d * c + 2 * d * d * c

    def predict(self, x: Tensor) -> Tensor:
        return (self.expand(x) @ self.W).argmax(1)

    def batch_solution(self, x: Tensor, y: Tensor, n_classes: int) -> Tensor:
        """The joint least-squares W on (x, y) in one solve: the reference ACIL's recursion must equal."""
        phi = self.expand(x)
        Y = torch.nn.functional.one_hot(y, n_classes).to(torch.float64)
        a = phi.T @ phi + self.gamma * torch.eye(phi.shape[1], dtype=torch.float64)
        return torch.linalg.solve(a, phi.T @ Y)
