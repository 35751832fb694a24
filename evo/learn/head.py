"""Closed-form classifier head: ridge regression on features, accumulated increment by increment.

This is the fast path. The head keeps only the sufficient statistics G = ΦᵀΦ and B = ΦᵀY (float64),
so absorbing an increment costs one pass over its features. Sums commute, so the order in which
increments or classes arrive does not change the solution: incremental equals joint, exactly up
to rounding. An optional fixed random projection (RanPAC, McDonnell et al. 2023) lifts the features
into a wider space where the classes are closer to linearly separable.

Targets are one-hot rows of Y. The bias is a constant-1 feature whose weight is *not* regularised,
which is the same as centring features and targets first (scikit-learn's Ridge with
fit_intercept=True gives the same weights and bias).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from evo.checks import check_int
from evo.errors import ConfigError, DataError
from evo.graph.layers import random_matrix
from evo.learn.cost import cholesky_flops, gcv_eval_flops, gram_blocks, ridge_solve_flops

ArrayLike = Tensor | np.ndarray

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"identity": lambda x: x, "relu": torch.relu}
_ACTIVATION_CODES = sorted(ACTIVATIONS)  # stable integer codes for state dicts
DEFAULT_RIDGE_GRID = tuple(10.0**k for k in range(-4, 7))
GCV_MAX_EVALS = 16  # the λ walk's evaluation cap (pricing charges it in full)
GCV_MIN_RESIDUAL_DOF = 1.0  # below one residual degree of freedom the fit interpolates: GCV scores inf
RSS_ROUNDING = 8 * float(np.finfo(np.float64).eps)  # RSS from G and B is trusted above this × n · tr(A)/λ


def as_features(features: ArrayLike, name: str = "features") -> Tensor:
    """Return `features` as a finite float64 CPU tensor of shape (n, d), or raise DataError."""
    if not isinstance(features, (Tensor, np.ndarray)):
        raise DataError(f"{name} must be a torch tensor or numpy array; got {type(features).__name__}")
    x = torch.as_tensor(features).detach().cpu()
    if x.ndim != 2:
        raise DataError(f"{name} must be 2-D (n_samples, n_features); got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise DataError(f"{name} is an empty batch (0 samples); pass at least one sample")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64, torch.uint8)):
        raise DataError(f"{name} must hold real numbers; got dtype {x.dtype}")
    x = x.to(torch.float64)
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(dim=1).nonzero()[0, 0])
        raise DataError(f"{name} holds NaN or inf (first at sample {bad}); clean or drop those samples")
    return x


def add_gram(g: Tensor, phi: Tensor, sign: int = 1) -> None:
    """g += sign·ΦᵀΦ in place, from its upper block triangle (`evo.learn.cost.gram_blocks`: about half
    the multiply-adds of the full product, which dominates the head's cost on wide features), mirrored
    after: g stays exactly symmetric, and no d×d temporary is made."""
    blocks = gram_blocks(phi.shape[1])
    for j, e in blocks:
        part = g[:e, j:e]  # rows 0..e of columns j..e; `out=` (not addmm_) so that torch's counter sees it
        torch.addmm(part, phi[:, :e].T, phi[:, j:e], alpha=sign, out=part)
    for j, e in blocks:
        g[j:e, :j] = g[:j, j:e].T
        diag = g[j:e, j:e]
        diag.copy_(torch.triu(diag) + torch.triu(diag, 1).T)


def as_labels(labels: ArrayLike, n: int, n_classes: int | None = None) -> Tensor:
    """Return `labels` as an int64 tensor of length n with values in [0, n_classes), or raise DataError."""
    if not isinstance(labels, (Tensor, np.ndarray)):
        raise DataError(f"labels must be a torch tensor or numpy array; got {type(labels).__name__}")
    y = torch.as_tensor(labels).detach().cpu()
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise DataError(f"labels must be integers (class indices); got dtype {y.dtype}")
    if y.ndim != 1 or y.shape[0] != n:
        raise DataError(f"labels must be 1-D with one entry per sample ({n}); got shape {tuple(y.shape)}")
    y = y.to(torch.int64)
    if n and int(y.min()) < 0:
        raise DataError(f"label {int(y.min())} is negative; labels are class indices 0..n_classes-1")
    if n_classes is not None and n and int(y.max()) >= n_classes:
        raise DataError(
            f"label {int(y.max())} is out of range for n_classes={n_classes}; "
            f"raise n_classes or fix the label"
        )
    return y


def _solve_psd(a: Tensor, rhs: Tensor) -> Tensor:
    """Solve a X = rhs by Cholesky; a singular `a` (λ = 0) gets the minimum-norm least-squares X."""
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        return torch.cholesky_solve(rhs, chol)
    if a.device.type == "cpu":
        return torch.linalg.lstsq(a, rhs, driver="gelsd").solution
    return torch.linalg.pinv(a, hermitian=True) @ rhs  # CUDA's lstsq (gels) needs full rank


@dataclass(frozen=True)
class RandomProjection:
    """Fixed feature map h = act(x W / sqrt(in_dim)), W ~ N(0, 1) drawn from `seed`.

    Only the dims and the seed are stored: W is regenerated deterministically
    (`evo.graph.layers.random_matrix`), so a saved head carries no matrix. The 1/sqrt(in_dim) scale keeps the projected
    features' magnitude, and so the useful ridge range, independent of the input width.
    """

    in_dim: int
    out_dim: int
    seed: int = 0
    activation: str = "relu"

    def __post_init__(self) -> None:
        check_int("RandomProjection in_dim", self.in_dim, 1)
        check_int("RandomProjection out_dim", self.out_dim, 1)
        check_int("RandomProjection seed", self.seed, 0, 2**63)
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"RandomProjection activation must be one of {_ACTIVATION_CODES}; got {self.activation!r}"
            )

    @cached_property
    def weight(self) -> Tensor:
        """The (in_dim, out_dim) float64 matrix, regenerated from the seed on first use (shared: read only)."""
        return random_matrix(self.in_dim, self.out_dim, self.seed)

    def __call__(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_dim:
            raise ConfigError(f"RandomProjection expects {self.in_dim} input features; got {x.shape[-1]}")
        return ACTIVATIONS[self.activation](x.to(torch.float64) @ self.weight.to(x.device))

    def code(self) -> Tensor:
        """The projection as an int64 tensor [in_dim, out_dim, seed, activation code] for state dicts."""
        act = _ACTIVATION_CODES.index(self.activation)
        return torch.tensor([self.in_dim, self.out_dim, self.seed, act], dtype=torch.int64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "in_dim": self.in_dim,
            "out_dim": self.out_dim,
            "seed": self.seed,
            "activation": self.activation,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RandomProjection:
        return cls(**d)


class RidgeHead:
    """Ridge-regression head on (optionally projected) features, fitted from running statistics.

    sklearn-style: construction stores, `fit`/`partial_fit` return self, learned state ends in `_`.
    Deliberate break from scikit-learn: the class count may GROW between `partial_fit` calls
    (scikit-learn fixes `classes` on the first call). New classes add zero columns to B, which is
    exactly what the earlier samples' one-hot targets would have had in those columns.

    `ridge` (λ) is not divided by the sample count, as in scikit-learn's Ridge(alpha=λ).
    """

    def __init__(self, ridge: float = 1.0, projection: RandomProjection | None = None,
                 device: str | torch.device = "cpu") -> None:
        if (
            not isinstance(ridge, (int, float))
            or isinstance(ridge, bool)
            or not ridge >= 0
            or ridge == math.inf
        ):
            raise ConfigError(f"RidgeHead ridge must be a finite number >= 0; got {ridge!r}")
        if projection is not None and not isinstance(projection, RandomProjection):
            raise ConfigError(f"RidgeHead projection must be a RandomProjection or None; got {projection!r}")
        self.ridge = float(ridge)
        self.projection = projection
        self.device = torch.device(device)
        self.reset()

    def to(self, device: str | torch.device) -> RidgeHead:
        """Keep the statistics (always fp64) and solve on `device`; returns self."""
        self.device = torch.device(device)
        self._evaluated = ((), {})
        for name in ("gram_", "xty_", "coef_", "intercept_"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(self.device))
        return self

    # -- fitting -------------------------------------------------------------------------------

    def reset(self) -> RidgeHead:
        """Forget all statistics (the configuration stays)."""
        self.gram_: Tensor | None = None
        self.xty_: Tensor | None = None
        self.n_samples_ = 0
        self.n_features_in_: int | None = None
        self.coef_: Tensor | None = None
        self.intercept_: Tensor | None = None
        self._evaluated: tuple[tuple[Any, ...], dict[float, Tensor]] = ((), {})
        return self

    @property
    def n_classes_(self) -> int:
        return 0 if self.xty_ is None else int(self.xty_.shape[1])

    @property
    def dim_(self) -> int | None:
        """Width d of the features the weights apply to (the projection's out_dim when projecting)."""
        if self.n_features_in_ is None:
            return None
        return self.projection.out_dim if self.projection else self.n_features_in_

    def partial_fit(self, features: ArrayLike, labels: ArrayLike, n_classes: int | None = None,
                    sign: int = 1) -> RidgeHead:
        """Add a batch to G and B. `n_classes` defaults to max(label)+1 and may grow, never shrink.

        `sign=-1` takes a batch added earlier back out (the same features and labels): sums
        commute, so the statistics are then exactly those of the data without it."""
        if sign not in (1, -1):
            raise ConfigError(f"sign must be 1 or -1; got {sign!r}")
        x = as_features(features)
        if n_classes is not None:
            n_classes = check_int("n_classes", n_classes, 1)
            if n_classes < self.n_classes_:
                raise ConfigError(
                    f"n_classes={n_classes} is below the {self.n_classes_} classes already fitted; "
                    f"the class set can only grow (call fit to start over)"
                )
        y = as_labels(labels, x.shape[0], n_classes)
        phi = self._project(x)
        c = max(n_classes or 0, int(y.max()) + 1, self.n_classes_)
        dev = self.device
        phi = torch.cat([phi, torch.ones(phi.shape[0], 1, dtype=torch.float64, device=dev)], dim=1)
        onehot = torch.zeros(phi.shape[0], c, dtype=torch.float64, device=dev)
        onehot[torch.arange(phi.shape[0], device=dev), y.to(dev)] = 1.0
        if self.gram_ is None:
            self.gram_ = torch.zeros(phi.shape[1], phi.shape[1], dtype=torch.float64, device=dev)
            self.xty_ = torch.zeros(phi.shape[1], 0, dtype=torch.float64, device=dev)
        self._grow_classes(c)
        add_gram(self.gram_, phi, sign)
        self.xty_.add_(phi.T @ onehot, alpha=sign)
        self.n_samples_ += sign * phi.shape[0]
        self.n_features_in_ = x.shape[1]
        self.coef_ = self.intercept_ = None  # stale
        return self

    def fit(self, features: ArrayLike, labels: ArrayLike, n_classes: int | None = None) -> RidgeHead:
        """Reset, then `partial_fit` on this data alone."""
        return self.reset().partial_fit(features, labels, n_classes)

    def add_classes(self, n_classes: int) -> RidgeHead:
        """Grow the class count without data (matches the graph's `add_classes` op)."""
        self._require_fitted()
        n_classes = check_int("n_classes", n_classes, self.n_classes_)
        self._grow_classes(n_classes)
        self.coef_ = self.intercept_ = None
        return self

    def _grow_classes(self, c: int) -> None:
        if c > self.xty_.shape[1]:
            extra = torch.zeros(self.xty_.shape[0], c - self.xty_.shape[1], dtype=torch.float64, device=self.device)
            self.xty_ = torch.cat([self.xty_, extra], dim=1)

    def transform(self, features: ArrayLike) -> Tensor:
        """Validate features and apply the projection (if any): the Φ the weights act on, float64."""
        return self._project(as_features(features))

    def _project(self, x: Tensor) -> Tensor:
        expected = self.n_features_in_ or (self.projection.in_dim if self.projection else None)
        if expected is not None and x.shape[1] != expected:
            raise ConfigError(f"RidgeHead expects {expected} features per sample; got {x.shape[1]}")
        x = x.to(self.device)
        return self.projection(x) if self.projection else x

    # -- solving -------------------------------------------------------------------------------

    def solve(self, ridge: float | None = None) -> tuple[Tensor, Tensor]:
        """Solve (G + λ D) W = B; return weight (n_classes, d) and bias (n_classes,) in float64.

        D is the identity except a 0 for the bias, so the bias is unregularised; G + λD is then
        positive definite for any λ > 0 and at least one sample. With λ = 0 a singular system
        falls back to the minimum-norm least-squares solution.
        """
        w = self._solve_aug(self.ridge if ridge is None else ridge)
        weight, bias = w[:-1].T.contiguous(), w[-1].clone()
        if ridge is None:
            self.coef_, self.intercept_ = weight, bias
        return weight, bias

    def _system(self, ridge: float) -> Tensor:
        self._require_fitted()
        reg = torch.full((self.gram_.shape[0],), float(ridge), dtype=torch.float64, device=self.gram_.device)
        reg[-1] = 0.0
        return self.gram_ + torch.diag(reg)

    def _solve_aug(self, ridge: float) -> Tensor:
        self._require_fitted()
        w = self._walked(ridge)
        return _solve_psd(self._system(ridge), self.xty_) if w is None else w.clone()

    def solve_flops(self, ridge: float) -> int:
        """What `solve(ridge)` costs now: nothing where a GCV evaluation on these statistics already
        solved at λ (the walk's choice always was), else a Cholesky solve (`evo.learn.cost`)."""
        self._require_fitted()
        return 0 if self._walked(ridge) is not None else ridge_solve_flops(self.gram_.shape[0], self.xty_.shape[1])

    def _stamp(self) -> tuple[Any, ...]:
        """Identifies the statistics' current values: the same tensors (held, so never another's id),
        and their versions, which every in-place update bumps."""
        return (self.gram_, self.gram_._version, self.xty_, self.xty_._version)

    def _current(self) -> dict[float, Tensor]:
        """The GCV evaluations' solutions (λ → W) on the statistics as they are now; emptied once they
        changed. Inference tensors keep no version, so their solutions are not kept."""
        if self.gram_.is_inference() or self.xty_.is_inference():
            return {}
        stamp, now = self._evaluated[0], self._stamp()
        if not stamp or stamp[0] is not now[0] or stamp[2] is not now[2] or stamp[1::2] != now[1::2]:
            self._evaluated = (now, {})
        return self._evaluated[1]

    def _walked(self, ridge: float) -> Tensor | None:
        """The solution a GCV evaluation at `ridge` found on the statistics as they are, if one did."""
        return self._current().get(float(ridge))

    def _keep_only(self, ridge: float) -> None:
        """After a choice of λ only its solution is worth keeping (up to 16 d×c matrices otherwise)."""
        solved = self._current()
        kept = {float(ridge): solved[float(ridge)]} if float(ridge) in solved else {}
        solved.clear()
        solved.update(kept)

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles drop the kept solutions: a copy's tensors restart their version count, so
        its stamp could match again after as many updates."""
        return {**self.__dict__, "_evaluated": ((), {})}

    def _require_fitted(self) -> None:
        if self.gram_ is None:
            raise ConfigError("RidgeHead is not fitted yet; call fit or partial_fit first")

    def decision_function(self, features: ArrayLike) -> Tensor:
        """Logits (n, n_classes), float64."""
        self._require_fitted()
        if self.coef_ is None:
            self.solve()
        return self.transform(features) @ self.coef_.T + self.intercept_

    def predict(self, features: ArrayLike) -> Tensor:
        """Predicted class indices (n,), int64."""
        return self.decision_function(features).argmax(dim=1)

    def write_to(self, linear: nn.Linear) -> nn.Linear:
        """Copy the solution into `linear` (in place, in its dtype and device) and return it.

        With a projection, `linear` must be the layer that follows the projection (in_features =
        out_dim); without one it is the graph's final Linear.
        """
        self._require_fitted()
        weight, bias = self.solve()
        if tuple(linear.weight.shape) != tuple(weight.shape) or linear.bias is None:
            raise ConfigError(
                f"head Linear must have bias and weight shape {tuple(weight.shape)} (out, in); "
                f"got {tuple(linear.weight.shape)} with bias={linear.bias is not None}"
            )
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
        return linear

    # -- choosing λ ----------------------------------------------------------------------------

    def gcv(self, ridge: float) -> tuple[float, int]:
        """Generalised cross-validation error (Golub et al. 1979) of λ from G and B alone, and the
        FLOPs it took (`evo.learn.cost.gcv_eval_flops`).

        GCV = n·RSS / (n − df)², with one Cholesky factorisation A = G + λD = LLᵀ and one triangular
        inverse: W = A⁻¹B, RSS = tr(YᵀY) − 2 tr(WᵀB) + tr(WᵀGW) with tr(YᵀY) = n for one-hot targets,
        and df = tr(A⁻¹G) = (d+1) − λ (tr(A⁻¹) − (A⁻¹)_bias), where tr(A⁻¹) = ‖L⁻¹‖²_F. No sample
        needs to be revisited. A λ too small for a rank-deficient G scores inf, and so does one where
        the fit nearly interpolates (fewer samples than features): RSS is then a difference of numbers
        of size n that cancel, and below its rounding error (n·ε·cond(A), cond(A) ≤ tr(A)/λ) the score
        would be noise near 0 that a walk takes for the minimum (measured: λ = 2e-4 chosen, 12 points
        lost, on 1,600 images of 2,432 features). Fewer than GCV_MIN_RESIDUAL_DOF residual degrees of
        freedom (n − df) score inf too: the fit then interpolates, GCV's leave-one-out estimate has
        nothing left to estimate from, and the score follows the features' float rounding (measured:
        two candidates whose features agreed to 1e-7 scored 0.240 and 0.200 at λ = 0.27 with n − df =
        0.13, and their walks ended at λ = 270 and 0.27).
        """
        a = self._system(ridge)
        d, c = a.shape[0], self.xty_.shape[1]
        chol, info = torch.linalg.cholesky_ex(a)
        if int(info) != 0:  # e.g. collapsed features: not a candidate
            return math.inf, cholesky_flops(d)
        w = torch.cholesky_solve(self.xty_, chol)
        self._current()[float(ridge)] = w  # d×c: the walk's chosen λ needs no second factorisation
        n = float(self.n_samples_)
        rss = n - 2.0 * float((w * self.xty_).sum()) + float((w * (self.gram_ @ w)).sum())
        inv = torch.linalg.solve_triangular(chol, torch.eye(d, dtype=a.dtype, device=a.device), upper=False)
        diag = inv.pow(2).sum(dim=0)  # (A⁻¹)_jj = Σ_i (L⁻¹)_ij²
        df = d - float(ridge) * float(diag[:-1].sum())
        rounding = RSS_ROUNDING * n * float(torch.diagonal(a).sum()) / float(ridge)
        # (with n ≤ 2 every λ leaves under one degree: all score inf, and the walk keeps the largest it saw)
        score = math.inf if n - df < GCV_MIN_RESIDUAL_DOF or rss <= rounding else n * rss / (n - df) ** 2
        return score, gcv_eval_flops(d, c)

    def gcv_score(self, ridge: float) -> float:
        """The GCV error of λ (see `gcv`)."""
        return self.gcv(ridge)[0]

    def select_ridge(self, grid: Iterable[float] = DEFAULT_RIDGE_GRID) -> float:
        """Set `ridge` to the grid value with the lowest GCV score and return it (ties → the larger λ)."""
        grid = sorted({float(r) for r in grid}, reverse=True)
        if not grid or any(not (r > 0 and math.isfinite(r)) for r in grid):
            raise ConfigError(f"ridge grid must be non-empty, finite and > 0; got {grid!r}")
        scores = [self.gcv_score(r) for r in grid]
        self.ridge = grid[int(np.argmin(scores))]
        self._keep_only(self.ridge)
        self.coef_ = self.intercept_ = None
        return self.ridge

    def gcv_walk(self, start: float | None = None, step: float = 10**0.5,
                 bounds: tuple[float, float] = (1e-8, 1e12), max_evals: int = GCV_MAX_EVALS) -> tuple[float, int]:
        """λ minimising GCV on the log grid start·step^k, by a walk from `start`; returns (λ, FLOPs).

        `start` defaults to 10^-1.5 × the mean centred feature variance (tr(Gc)/d, times n): where GCV
        settled on multi-layer CNN features, so the walk usually needs its minimum of three
        evaluations. An incremental caller passes the previous increment's λ; where that scores inf
        (e.g. it interpolated fewer samples than features), the walk starts from the default instead.
        `ridge` is not changed.
        """
        self._require_fitted()
        g = self.gram_
        n = float(g[-1, -1])
        s = g[:-1, -1]
        variance = float((torch.diagonal(g)[:-1] - s * s / n).sum()) / max(g.shape[0] - 1, 1)
        default = min(max(variance * 10**-1.5, bounds[0]), bounds[1])
        if start is None:
            start = default
        scores: dict[int, float] = {}
        flops = evals = 0

        def at(k: int) -> float:  # `max_evals` is a hard cap (pricing charges it): beyond it, unknown = inf
            nonlocal flops, evals
            lam = start * step**k
            if k not in scores and not bounds[0] <= lam <= bounds[1]:
                scores[k] = math.inf
            elif k not in scores:
                if evals >= max_evals:
                    return math.inf
                scores[k], f = self.gcv(lam)
                flops, evals = flops + f, evals + 1
            return scores[k]

        if math.isinf(at(0)) and start != default:  # the last λ means nothing on these statistics
            start, scores = default, {}
        k = 0
        while len(scores) < max_evals and evals < max_evals:  # points off the bounds count as before
            left, mid, right = at(k - 1), at(k), at(k + 1)
            if math.isinf(mid) and (math.isfinite(right) or math.isinf(left)):
                k += 1  # no trustworthy score here, none to the left: a larger λ is always defined
                continue
            if mid <= left and mid <= right:
                break
            k = k - 1 if left < right else k + 1
        best = min(scores, key=lambda j: (scores[j], -j))
        self._keep_only(start * step**best)
        return start * step**best, flops

    # -- persistence ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly configuration (goes in meta.json; the statistics go in `state_dict`)."""
        proj = self.projection.to_dict() if self.projection else None
        return {"ridge": self.ridge, "projection": proj}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RidgeHead:
        proj = d.get("projection")
        return cls(ridge=d["ridge"], projection=RandomProjection.from_dict(proj) if proj else None)

    def state_dict(self) -> dict[str, Tensor]:
        """Statistics as plain CPU tensors (safetensors-friendly); empty when unfitted."""
        if self.gram_ is None:
            return {}
        sd = {
            "gram": self.gram_.cpu().clone(),
            "xty": self.xty_.cpu().clone(),
            "n_samples": torch.tensor([self.n_samples_], dtype=torch.int64),
            "n_features_in": torch.tensor([self.n_features_in_], dtype=torch.int64),
        }
        if self.projection:
            sd["projection"] = self.projection.code()
        return sd

    def load_state_dict(self, state: Mapping[str, Tensor]) -> RidgeHead:
        """Restore statistics saved by `state_dict`; checks they fit this head's projection."""
        if not state:
            return self.reset()
        missing = {"gram", "xty", "n_samples", "n_features_in"} - set(state)
        if missing:
            raise ConfigError(
                f"RidgeHead state dict lacks {sorted(missing)}; was it saved by RidgeHead.state_dict?"
            )
        want = self.projection.code().tolist() if self.projection else None
        got = state["projection"].tolist() if "projection" in state else None
        if want != got:
            raise ConfigError(
                f"RidgeHead state was saved with projection {got} [in, out, seed, act]; "
                f"this head has {want}; build the head from the saved config (RidgeHead.from_dict)"
            )
        gram, xty = state["gram"].to(torch.float64), state["xty"].to(torch.float64)
        n_in = int(state["n_features_in"][0])
        d = self.projection.out_dim if self.projection else n_in
        if gram.shape != (d + 1, d + 1) or xty.ndim != 2 or xty.shape[0] != d + 1:
            raise ConfigError(
                f"RidgeHead state shapes gram {tuple(gram.shape)}, xty {tuple(xty.shape)} "
                f"do not match feature width {d} (expected ({d + 1}, {d + 1}) and ({d + 1}, C))"
            )
        self.reset()
        self.gram_, self.xty_ = gram.clone().to(self.device), xty.clone().to(self.device)
        self.n_samples_ = int(state["n_samples"][0])
        self.n_features_in_ = n_in
        return self
