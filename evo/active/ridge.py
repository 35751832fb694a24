"""The closed-form head under weighted rank-one updates: A⁻¹ and W = A⁻¹B kept by Sherman–Morrison.

A = G + λD and B are the ridge statistics of the head's features (bias-augmented, bias
unregularised; see `evo.learn.head`). A correction φ (bias-augmented feature row) with label l and
weight w adds wφφᵀ to A and wφe_lᵀ to B; with u = A⁻¹φ and s = φᵀu,

    A'⁻¹ = A⁻¹ − w/(1 + ws) · uuᵀ,      W' = W + w/(1 + ws) · u (e_l − p)ᵀ,   p = φᵀW,

so the corrected image's outputs move along f(w) = (p + ws·e_l)/(1 + ws): the smallest weight that
makes l win by a margin δ is closed-form (`weight_needed`). A negative w is the exact downdate
(undo). Each step is O(d²) instead of the O(d³) re-solve, and λ never changes between increments.
`with_column`/`without_column` add and remove one feature (a correction's local feature, see
`evo.active.local`) by the bordered inverse, also O(d²) and exact.
Every method returns a new object, so a reader holding the old one never sees a half update.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from evo.errors import ConfigError


class RankOneHead:
    """P = A⁻¹ (float64, symmetric) and W = A⁻¹B of shape (d + 1, C); the last row is the bias."""

    __slots__ = ("inverse", "weight")

    def __init__(self, inverse: Tensor, weight: Tensor) -> None:
        self.inverse, self.weight = inverse, weight

    @classmethod
    def solve(cls, gram: Tensor, xty: Tensor, ridge: float) -> RankOneHead:
        """Factor A = G + λD once (Cholesky) and keep its inverse and the solution."""
        reg = torch.full((gram.shape[0],), float(ridge), dtype=torch.float64)
        reg[-1] = 0.0
        try:
            return cls.from_system(gram.to(torch.float64) + torch.diag(reg), xty.to(torch.float64))
        except ConfigError:
            raise ConfigError(f"the head's ridge system is not positive definite (λ = {ridge}); "
                              "the run's statistics cannot take corrections") from None

    @classmethod
    def from_system(cls, a: Tensor, b: Tensor) -> RankOneHead:
        """Factor an already regularised system A (symmetric positive definite) once; keep A⁻¹ and A⁻¹B."""
        chol, info = torch.linalg.cholesky_ex(a)
        if int(info) != 0:
            raise ConfigError("the corrected head's system is not positive definite; the corrections log "
                              "does not fit this version's statistics")
        # [I B] solved against the factor in one call: several times faster than cholesky_inverse here
        both = torch.cholesky_solve(torch.cat([torch.eye(a.shape[0], dtype=a.dtype), b], dim=1), chol)
        inv = both[:, :a.shape[0]]
        return cls((inv + inv.T) / 2, both[:, a.shape[0]:].contiguous())

    @property
    def n_classes(self) -> int:
        return int(self.weight.shape[1])

    def outputs(self, phi: Tensor) -> Tensor:
        """Ridge outputs φᵀW (unscaled logits) for bias-augmented rows φ (n, d + 1)."""
        return phi @ self.weight

    def leverage(self, phi: Tensor) -> float:
        """s = φᵀA⁻¹φ for one bias-augmented row."""
        return float(phi @ (self.inverse @ phi))

    def updated(self, phi: Tensor, label: int, w: float, in_place: bool = False) -> RankOneHead:
        """The head after A += wφφᵀ, B += wφe_labelᵀ (w < 0 takes a correction back out).

        A new head by default, so readers of the old one never see a half update; `in_place` changes
        this one (the same arithmetic, bit for bit) where nobody else can see it yet, e.g. while a log
        is replayed on opening, to avoid copying the (d + 1)² inverse at every step."""
        u = self.inverse @ phi
        s = float(phi @ u)
        denom = 1.0 + w * s
        if not denom > 1e-12:
            raise ConfigError(f"rank-one downdate of weight {w} would make the system singular (1 + ws = {denom})")
        c = w / denom
        resid = -(phi @ self.weight)
        resid[label] += 1.0
        if in_place:
            self.inverse.addr_(u, u, alpha=-c)
            self.weight.addr_(u, resid, alpha=c)
            return self
        return RankOneHead(torch.addr(self.inverse, u, u, alpha=-c), torch.addr(self.weight, u, resid, alpha=c))

    def with_column(self, b: Tensor, a: float, r: Tensor) -> RankOneHead:
        """One more feature: A' = [[A, b], [bᵀ, a]], B' = [B; rᵀ], by the bordered inverse (O(D²)).

        With k = a − bᵀA⁻¹b and t = (bᵀW − rᵀ)/k: A'⁻¹ = [[A⁻¹ + (A⁻¹b)(A⁻¹b)ᵀ/k, −A⁻¹b/k], [·, 1/k]]
        and W' = [W + (A⁻¹b)t; −t]."""
        pb = self.inverse @ b
        k = float(a) - float(b @ pb)
        if not k > 1e-12:
            raise ConfigError(f"a new correction feature would make the system singular (Schur complement {k})")
        d = len(b)
        inv = torch.empty(d + 1, d + 1, dtype=torch.float64)
        torch.addr(self.inverse, pb, pb, alpha=1.0 / k, out=inv[:d, :d])
        inv[:d, d] = inv[d, :d] = -pb / k
        inv[d, d] = 1.0 / k
        t = (b @ self.weight - r) / k
        return RankOneHead(inv, torch.cat([torch.addr(self.weight, pb, t), -t[None]]))

    def without_column(self, j: int) -> RankOneHead:
        """Feature `j` removed from A and B (its row and column, cross terms included), exactly:
        A₋ⱼ⁻¹ = P₋ⱼ₋ⱼ − P₋ⱼⱼPⱼ₋ⱼ/Pⱼⱼ and W' = W₋ⱼ − P₋ⱼⱼWⱼ/Pⱼⱼ."""
        keep = torch.cat([torch.arange(j), torch.arange(j + 1, self.inverse.shape[0])])
        pj = self.inverse[keep, j]
        pjj = float(self.inverse[j, j])
        inv = torch.addr(self.inverse[keep][:, keep], pj, pj, alpha=-1.0 / pjj)
        return RankOneHead(inv, torch.addr(self.weight[keep], pj, self.weight[j], alpha=-1.0 / pjj))

    def with_class(self) -> RankOneHead:
        """One more class with no data yet: a zero column of B, hence of W."""
        zero = torch.zeros(self.weight.shape[0], 1, dtype=torch.float64)
        return RankOneHead(self.inverse, torch.cat([self.weight, zero], dim=1))


def weight_needed(p: Tensor, label: int, s: float, margin: float, active: Tensor) -> float:
    """Smallest w ≥ 0 after which f_label(w) − f_j(w) ≥ margin for every other active class j.

    f_l − f_j = (p_l − p_j + ws)/(1 + ws) ≥ δ  ⇔  w ≥ (δ − (p_l − p_j)) / (s(1 − δ))   (δ < 1).
    """
    others = p.clone()
    others[label] = -math.inf
    others[~active] = -math.inf
    if not bool(active.any()) or int(active.sum()) == 1 and bool(active[label]):
        return 0.0
    gap = float(p[label] - others.max())
    if gap >= margin:
        return 0.0
    return (margin - gap) / (s * (1.0 - margin))
