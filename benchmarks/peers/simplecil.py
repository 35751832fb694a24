"""SimpleCIL (Zhou et al. 2023, "Revisiting Class-Incremental Learning with Pre-Trained Models:
Generalizability and Adaptivity are All You Need", arXiv:2303.07338), on frozen features.

The pre-trained model is frozen; each class's classifier weight is its prototype, the mean
embedding of its training images, computed once when the class arrives and never changed.
Prediction is a cosine classifier: argmax_k cos(f(x), p_k). Incremental == joint (each class's
mean depends only on its own images), so there is nothing to forget.
"""

from __future__ import annotations

import torch
from torch import Tensor


class SimpleCIL:
    name = "SimpleCIL"

    def __init__(self) -> None:
        self.prototypes: Tensor | None = None  # (classes, d), float64

    def learn(self, x: Tensor, y: Tensor, n_classes: int) -> int:
        """Absorb one increment (features x (n, d), labels y); returns the FLOPs spent."""
        x = x.to(torch.float64)
        d = x.shape[1]
        protos = torch.zeros(n_classes, d, dtype=torch.float64)
        if self.prototypes is not None:
            protos[: self.prototypes.shape[0]] = self.prototypes
        for c in torch.unique(y).tolist():
            protos[c] = x[y == c].mean(0)
        self.prototypes = protos
        return int(x.numel())  # one add per feature value (the means)

    def predict(self, x: Tensor) -> Tensor:
        f = torch.nn.functional.normalize(x.to(torch.float64), dim=1)
        p = torch.nn.functional.normalize(self.prototypes, dim=1)
        return (f @ p.T).argmax(1)
