"""Deep streaming LDA (Hayes & Kanan 2020, "Lifelong Machine Learning with Deep Streaming Linear
Discriminant Analysis", CVPR Workshops), on frozen features.

One pass, one sample at a time, in the stream's order: each class keeps a running mean μ_k and
count, and one covariance Σ is shared by all classes, updated before the mean (the authors'
`StreamingLDA.fit`):
    Σ ← (t Σ + t/(t+1) (x − μ_y)(x − μ_y)ᵀ) / (t + 1);  μ_y ← μ_y + (x − μ_y)/(c_y + 1)
Prediction: Λ = ((1 − ε)Σ + εI)⁻¹ with shrinkage ε = 1e-4 (see `precision`), scores = xᵀΛμ_k − ½ μ_kᵀΛμ_k.
Started from scratch on the first sample (the paper can also initialise on a base set offline;
here every class arrives in the stream).
"""

from __future__ import annotations

import torch
from torch import Tensor


class SLDA:
    name = "SLDA"

    def __init__(self, in_dim: int, shrinkage: float = 1e-4) -> None:
        self.d, self.eps = in_dim, float(shrinkage)
        self.mu = torch.zeros(0, in_dim, dtype=torch.float64)
        self.count = torch.zeros(0, dtype=torch.float64)
        self.sigma = torch.zeros(in_dim, in_dim, dtype=torch.float64)
        self.t = 0
        self.Lambda: Tensor | None = None

    def learn(self, x: Tensor, y: Tensor, n_classes: int) -> int:
        if n_classes > self.mu.shape[0]:
            extra = n_classes - self.mu.shape[0]
            self.mu = torch.cat([self.mu, torch.zeros(extra, self.d, dtype=torch.float64)])
            self.count = torch.cat([self.count, torch.zeros(extra, dtype=torch.float64)])
        x = x.to(torch.float64)
        for xi, yi in zip(x, y.tolist(), strict=True):
            diff = xi - self.mu[yi]
            t = self.t
            self.sigma.mul_(t / (t + 1)).addr_(diff, diff, alpha=t / (t + 1) ** 2)
            self.mu[yi] += diff / (self.count[yi] + 1)
            self.count[yi] += 1
            self.t += 1
        d = self.d
        self.Lambda = precision(self.sigma, self.eps)
        # per sample: the scaled rank-1 update (3 d²); then the inverse (Cholesky d³/3 + inverse 2d³/3)
        return int(3 * d * d * x.shape[0] + d**3)

    def predict(self, x: Tensor) -> Tensor:
        """argmax_k xᵀΛμ_k − ½ μ_kᵀΛμ_k."""
        w = self.Lambda @ self.mu.T  # (d, C)
        c = 0.5 * (self.mu.T * w).sum(0)
        return (x.to(torch.float64) @ w - c).argmax(1)


def precision(sigma: Tensor, eps: float) -> Tensor:
    """((1 − ε)Σ + εI)⁻¹. The authors take torch.pinverse (an SVD); with ε > 0 the matrix is symmetric
    positive definite, where the pseudo-inverse is the inverse, so a Cholesky inverse gives the same
    matrix at a tenth of the cost. Falls back to the pseudo-inverse if rounding breaks definiteness."""
    a = (1 - eps) * sigma + eps * torch.eye(sigma.shape[0], dtype=sigma.dtype)
    chol, info = torch.linalg.cholesky_ex(a)
    return torch.cholesky_inverse(chol) if int(info) == 0 else torch.linalg.pinv(a, hermitian=True)
