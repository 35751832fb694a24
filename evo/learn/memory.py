"""Exemplar memory for replay: a fixed total budget, split evenly across the classes seen so far.

Every stored exemplar carries a rank key; within a class, lower keys are better. When new classes
arrive each class's quota shrinks and the class keeps its lowest-key exemplars, so shrinking never
needs features or a model (iCaRL's ReduceExemplarSet). Selectors decide the keys:

- `herding` (Rebuffi et al. 2017, iCaRL): on L2-normalised features, greedily add the sample that
  brings the running mean of the chosen set closest to the class mean; the key is the pick order.
- `reservoir`: each sample gets a uniform random key when it arrives and the lowest keys are kept
  (bottom-k sampling), so a class's exemplars are a uniform sample of everything seen of that
  class, across updates and after any shrink.

Priority samples (a user's corrections, `update(..., priority=mask)`) are kept before any other
exemplar of their class, up to its quota: they carry negative keys, so a shrink drops them last.

When a class already in memory reappears (new samples, data-incremental), the pool is its current
exemplars plus the new samples. Herding then uses the *stored* features of the old exemplars, i.e.
those of the model that saw them; reservoir needs no features at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from evo.errors import ConfigError, DataError
from evo.registry import Registry

RankFn = Callable[[np.ndarray | None, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Selector:
    """`rank(features, keys, n)` → (indices of the n best pool samples, best first; their new keys)."""

    rank: RankFn
    needs_features: bool


SELECTORS: Registry[Selector] = Registry("memory selector")


def herding_order(features: np.ndarray, n: int) -> np.ndarray:
    """iCaRL herding: indices of up to n samples, in pick order, without repeats; ties → lowest index.

    Minimising ||μ − (s + f_i)/k||² over candidates i equals maximising f_i·(μ − s/k) − ||f_i||²/(2k),
    with s the sum of the k−1 picked features: one mat-vec per pick.
    """
    f = np.asarray(features, dtype=np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    mu, s = f.mean(axis=0), np.zeros(f.shape[1])
    sq = (f * f).sum(axis=1)
    free = np.ones(len(f), dtype=bool)
    order = np.empty(min(n, len(f)), dtype=np.int64)
    for k in range(1, len(order) + 1):
        score = f @ (mu - s / k) - sq / (2 * k)
        score[~free] = -np.inf
        i = int(np.argmax(score))
        order[k - 1], free[i] = i, False
        s += f[i]
    return order


def _herding(features: np.ndarray | None, keys: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    order = herding_order(features, n)
    return order, np.arange(len(order), dtype=np.float64)


def _reservoir(features: np.ndarray | None, keys: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(keys, kind="stable")[:n]
    return order, keys[order]


SELECTORS.add("herding", Selector(_herding, needs_features=True))
SELECTORS.add("reservoir", Selector(_reservoir, needs_features=False))


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise DataError(f"{name} must be a numpy array or torch tensor; got {type(x).__name__}")


class ExemplarMemory:
    """Class-balanced replay memory of at most `budget` samples.

    Stores whatever `update` is given per sample: normally uint8 NHWC images, or int64 indices
    into a dataset. Class c's quota is budget // C, plus one for the first budget % C classes in
    label order (C = classes seen so far), so the budget is used in full and never exceeded.
    Randomness comes from `seed` and the update count, so replays are reproducible after a reload.
    """

    def __init__(self, budget: int = 500, selector: str = "herding", seed: int = 0) -> None:
        if not isinstance(budget, (int, np.integer)) or isinstance(budget, bool) or budget < 1:
            raise ConfigError(f"ExemplarMemory budget must be an integer >= 1; got {budget!r}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"ExemplarMemory seed must be an integer >= 0; got {seed!r}")
        self.budget, self.seed = int(budget), int(seed)
        self.selector = selector
        self._selector = SELECTORS.get(selector)
        self._reset()

    def _reset(self) -> None:
        self.items_: np.ndarray | None = None
        self.labels_ = np.empty(0, dtype=np.int64)
        self.keys_ = np.empty(0, dtype=np.float64)
        self.features_: np.ndarray | None = None
        self.classes_ = np.empty(0, dtype=np.int64)
        self.n_updates_ = 0

    # -- read access ---------------------------------------------------------------------------

    @property
    def images(self) -> np.ndarray:
        """Stored samples, grouped by class (ascending), best-ranked first within a class."""
        return self.items_ if self.items_ is not None else np.empty((0,), dtype=np.uint8)

    @property
    def labels(self) -> np.ndarray:
        return self.labels_

    @property
    def features(self) -> np.ndarray | None:
        """Features of the stored samples (herding only; None otherwise)."""
        return self.features_

    def __len__(self) -> int:
        return len(self.labels_)

    def per_class_counts(self) -> dict[int, int]:
        """Exemplars per seen class (0 for a class whose quota is 0)."""
        return {int(c): int((self.labels_ == c).sum()) for c in self.classes_}

    def quotas(self, classes: np.ndarray | None = None) -> dict[int, int]:
        """Per-class budget share for `classes` (default: the classes seen)."""
        classes = self.classes_ if classes is None else np.sort(classes)
        base, extra = divmod(self.budget, max(len(classes), 1))
        return {int(c): base + (1 if r < extra else 0) for r, c in enumerate(classes)}

    # -- update --------------------------------------------------------------------------------

    @property
    def priority(self) -> np.ndarray:
        """Which stored samples came in with priority (bool, aligned with `labels`)."""
        return self.keys_ < 0

    def update(self, images: Any, labels: Any, features: Any = None, priority: Any = None) -> ExemplarMemory:
        """Offer new samples; re-select the touched classes and shrink the others to their quota.

        `priority` (bool per sample): these are kept first, oldest first, and the selector fills the
        rest of the class's quota."""
        items, y, f = self._validate(images, labels, features)
        prio = np.zeros(len(y), bool) if priority is None else np.asarray(priority, dtype=bool)
        if prio.shape != y.shape:
            raise DataError(f"priority must be one bool per image ({len(y)}); got shape {prio.shape}")
        rng = np.random.default_rng([self.seed, self.n_updates_])
        new_keys = rng.random(len(y))
        classes = np.union1d(self.classes_, np.unique(y)).astype(np.int64)
        quota = self.quotas(classes)
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, int]] = []
        for c in classes:
            old = np.flatnonzero(self.labels_ == c)
            new = np.flatnonzero(y == c)
            if len(new) == 0:  # untouched: already in key order, keep the prefix
                keep = old[: quota[int(c)]]
                parts.append((self.items_[keep], self.keys_[keep], self._feat(keep), int(c)))
                continue
            pool_items = items[new] if self.items_ is None else np.concatenate([self.items_[old], items[new]])
            pool_keys = np.concatenate([self.keys_[old], new_keys[new]])
            pool_feats = None
            if f is not None:
                pool_feats = np.concatenate([self._feat(old), f[new]]) if len(old) else f[new]
            is_prio = np.concatenate([self.keys_[old] < 0, prio[new]])
            first = np.flatnonzero(is_prio)[: quota[int(c)]]  # old priority samples (key order), then new ones
            rest = np.flatnonzero(~is_prio)
            room = quota[int(c)] - len(first)
            order, keys = (self._selector.rank(None if pool_feats is None else pool_feats[rest], pool_keys[rest], room)
                           if room > 0 and len(rest) else (np.zeros(0, np.int64), np.zeros(0)))
            order = np.concatenate([first, rest[order]]).astype(np.int64)
            keys = np.concatenate([np.arange(len(first), dtype=np.float64) - len(first), keys])
            parts.append((pool_items[order], keys, None if pool_feats is None else pool_feats[order], int(c)))
        self._store(parts, items)
        self.classes_ = classes
        self.n_updates_ += 1
        return self

    def without(self, drop: np.ndarray) -> ExemplarMemory:
        """A copy without the stored samples where `drop` (bool, aligned with `labels`) is set: a
        correction the user undid leaves the memory. The freed slots refill with the next samples."""
        drop = np.asarray(drop, dtype=bool)
        if drop.shape != self.labels_.shape:
            raise DataError(f"drop must be one bool per stored sample ({len(self)}); got shape {drop.shape}")
        out = ExemplarMemory(self.budget, self.selector, self.seed)
        state = {k: (v[~drop] if k in ("items", "labels", "keys", "features") else v)
                 for k, v in self.state_dict().items()}
        return out.load_state_dict(state)

    def _feat(self, idx: np.ndarray) -> np.ndarray | None:
        return None if self.features_ is None else self.features_[idx]

    def _store(self, parts: list, items: np.ndarray) -> None:
        self.items_ = np.concatenate([p[0] for p in parts]) if parts else items[:0]
        self.keys_ = np.concatenate([p[1] for p in parts]).astype(np.float64)
        self.labels_ = np.concatenate([np.full(len(p[0]), p[3], dtype=np.int64) for p in parts])
        if self._selector.needs_features:
            self.features_ = np.concatenate([p[2] for p in parts])

    def _validate(
        self, images: Any, labels: Any, features: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        items, y = _to_numpy(images, "images"), _to_numpy(labels, "labels")
        if items.ndim == 0 or len(items) == 0:
            raise DataError(f"images is an empty batch (shape {items.shape}); pass at least one sample")
        if y.ndim != 1 or len(y) != len(items):
            raise DataError(
                f"labels must be 1-D with one entry per image ({len(items)}); got shape {y.shape}"
            )
        if not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
            raise DataError(f"labels must be integers (class indices); got dtype {y.dtype}")
        if y.min() < 0:
            raise DataError(f"label {int(y.min())} is negative; labels are class indices >= 0")
        if self.items_ is not None and (
            items.shape[1:] != self.items_.shape[1:] or items.dtype != self.items_.dtype
        ):
            raise DataError(
                f"images have shape {items.shape[1:]} and dtype {items.dtype} per sample; memory holds "
                f"{self.items_.shape[1:]} {self.items_.dtype}; convert them the same way"
            )
        return items, y.astype(np.int64), self._validate_features(features, len(items))

    def _validate_features(self, features: Any, n: int) -> np.ndarray | None:
        if not self._selector.needs_features:
            return None
        if features is None:
            raise DataError(
                f"selector {self.selector!r} needs features= (one row per image); "
                f"pass the model's features or use selector='reservoir'"
            )
        f = _to_numpy(features, "features")
        if f.ndim != 2 or len(f) != n:
            raise DataError(f"features must be 2-D with one row per image ({n}); got shape {f.shape}")
        if not np.isfinite(f).all():
            raise DataError("features hold NaN or inf; check the model's outputs on these images")
        if self.features_ is not None and len(self.features_) and f.shape[1] != self.features_.shape[1]:
            raise ConfigError(
                f"features have width {f.shape[1]}; memory holds width {self.features_.shape[1]}"
            )
        return f.astype(np.float32)

    # -- persistence ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly configuration (the contents go in `state_dict`)."""
        return {"budget": self.budget, "selector": self.selector, "seed": self.seed}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExemplarMemory:
        return cls(**d)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Contents as plain numpy arrays (safetensors-friendly, no pickle)."""
        sd = {
            "items": self.images.copy(),
            "labels": self.labels_.copy(),
            "keys": self.keys_.copy(),
            "classes": self.classes_.copy(),
            "n_updates": np.array([self.n_updates_], dtype=np.int64),
        }
        if self.features_ is not None:
            sd["features"] = self.features_.copy()
        return sd

    def load_state_dict(self, state: Mapping[str, Any]) -> ExemplarMemory:
        """Restore contents saved by `state_dict`; checks lengths and budget."""
        missing = {"items", "labels", "keys", "classes", "n_updates"} - set(state)
        if missing:
            raise ConfigError(
                f"memory state lacks {sorted(missing)}; was it saved by ExemplarMemory.state_dict?"
            )
        s = {k: _to_numpy(v, k) for k, v in state.items()}
        n = len(s["labels"])
        if len(s["keys"]) != n or (n and len(s["items"]) != n) or len(s.get("features", s["keys"])) != n:
            raise ConfigError(f"memory state arrays disagree in length (labels has {n}); the file is corrupt")
        if n > self.budget:
            raise ConfigError(f"memory state holds {n} samples, over this memory's budget {self.budget}")
        if self._selector.needs_features and n and "features" not in s:
            raise ConfigError(f"memory state has no features but selector {self.selector!r} needs them")
        self._reset()
        self.items_ = s["items"].copy() if n else None
        self.labels_ = s["labels"].astype(np.int64)
        self.keys_ = s["keys"].astype(np.float64)
        self.classes_ = s["classes"].astype(np.int64)
        self.features_ = s["features"].copy() if "features" in s and self._selector.needs_features else None
        self.n_updates_ = int(s["n_updates"][0])
        return self
