"""The latent store: every training image's activation at a frozen cut, per increment, under a byte budget.

A store is a set of parts (one per increment, `evo.learn.latent.part`) plus, per part, a mask of
the rows still *live*. When the live bytes exceed the budget, rows are evicted class-balanced: each
class keeps an equal share (a class with fewer rows keeps all of them and its spare share goes to
the others), the evicted rows of a class drawn at random (seeded by the increment), so what stays
is a uniform sample of that class over time. Every eviction is reported (`last_eviction`).

In a run folder the store of version v is `versions/<v>/latents/`: that increment's part, and
`manifest.json` + `live.safetensors` naming the live rows of every part it uses; older parts stay
in their own versions' folders. A round first writes this folder as `latents/round-<i>/` (the
increment's pass below the cut, computed once and shared by all of the round's candidates), and
the commit links it into the new version, so it becomes visible exactly with the version. A
resume reads only committed versions' folders (plus the pending part of the round in progress).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from evo.checks import check_int
from evo.errors import ConfigError
from evo.learn.latent.codec import bytes_per_row, check_codec
from evo.learn.latent.part import PART_FILE, LatentError, Part, read_part, write_part

MANIFEST = "manifest.json"
LIVE_FILE = "live.safetensors"
STORE_DIR = "latents"  # inside a version folder; also the run-level folder of pending round parts


@dataclass(frozen=True)
class StoreConfig:
    """`cut`: a stride (the last block output at that stride), a block output's name, or "input" (the
    preprocessed images themselves, nothing frozen); below it the network is frozen. `codec`: fp32, fp16
    or int8. `budget_mb`: live bytes kept (None: unbounded). `seed`: which rows eviction drops."""

    cut: int | str = 8
    codec: str = "fp16"
    budget_mb: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_codec(self.codec)
        c = self.cut
        if isinstance(c, bool) or not (isinstance(c, str) and c or isinstance(c, int) and c >= 1):
            raise ConfigError(f"latents.cut must be a stride (int >= 1), a block output's name or 'input'; got {c!r}")
        b = self.budget_mb
        if b is not None and (isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < b < math.inf):
            raise ConfigError(f"latents.budget_mb must be a positive number or null; got {b!r}")
        check_int("latents.seed (the seed of class-balanced eviction)", self.seed, 0)

    @classmethod
    def parse(cls, doc: Any, where: str = "latents") -> StoreConfig | None:
        """From a space's `latents:` value: 'none' (or absent) → None, else a mapping of the fields."""
        if doc is None or doc == "none":
            return None
        if not isinstance(doc, Mapping):
            raise ConfigError(f"{where} must be 'none' or a mapping {{cut, codec, budget_mb, seed}}; got {doc!r}")
        known = {"cut", "codec", "budget_mb", "seed"}
        bad = sorted(set(doc) - known)
        if bad:
            raise ConfigError(f"{where}: unknown key(s) {bad}; allowed: {sorted(known)}")
        return cls(**doc)

    @property
    def budget_bytes(self) -> int | None:
        return None if self.budget_mb is None else int(self.budget_mb * 2**20)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LatentStore:
    """Parts by increment, the live rows of each, and what the last append evicted."""

    config: StoreConfig
    cut: str | None = None
    parts: dict[int, Part] = field(default_factory=dict)
    live: dict[int, np.ndarray] = field(default_factory=dict)  # bool masks
    last_eviction: dict[str, Any] | None = None
    current: int | None = None  # the part appended last: the increment being learned

    def next_key(self) -> int:
        return max(self.parts, default=-1) + 1

    # -- queries ------------------------------------------------------------------------------
    def has(self, increment: int) -> bool:
        return increment in self.parts

    def part(self, increment: int) -> Part:
        if increment not in self.parts:
            raise LatentError(f"the latent store has no part for increment {increment} (it has "
                              f"{sorted(self.parts)}); stage the increment first")
        return self.parts[increment]

    def n_live(self, exclude: int | None = None) -> int:
        return int(sum(m.sum() for i, m in self.live.items() if i != exclude))

    def live_bytes(self) -> int:
        return int(sum(m.sum() * bytes_per_row(self.parts[i].shape, self.parts[i].codec)
                       for i, m in self.live.items()))

    def rows_of(self, increment: int) -> LatentRows:
        """Every row of one part, live or not (the increment being learned is in hand whole)."""
        part = self.part(increment)
        return LatentRows([(part, np.arange(len(part)))])

    def rows(self, exclude: int | None = None) -> LatentRows:
        """Every live row (of every part except `exclude`), as one indexable set."""
        return LatentRows([(self.parts[i], np.flatnonzero(m)) for i, m in sorted(self.live.items()) if i != exclude])

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for i, m in self.live.items():
            for name, n in zip(*np.unique(self.parts[i].label_names()[m], return_counts=True), strict=False):
                counts[str(name)] = counts.get(str(name), 0) + int(n)
        return {"cut": self.cut, "codec": self.config.codec, "parts": sorted(self.parts), "current": self.current,
                "rows": int(sum(len(p) for p in self.parts.values())), "live_rows": self.n_live(),
                "live_bytes": self.live_bytes(), "budget_bytes": self.config.budget_bytes,
                "live_per_class": counts, "eviction": self.last_eviction}

    # -- appending ------------------------------------------------------------------------------
    def with_part(self, part: Part) -> LatentStore:
        """A new store with `part` appended (all rows live), then evicted class-balanced to the budget."""
        if part.increment in self.parts:
            raise LatentError(f"the latent store already holds increment {part.increment}; parts are append-only")
        if self.cut is not None and part.cut != self.cut:
            raise LatentError(f"latent part of increment {part.increment} was cut at {part.cut!r}, the store at "
                              f"{self.cut!r}; moving the cut needs every image again")
        out = LatentStore(self.config, part.cut, {**self.parts, part.increment: part},
                          {**{i: m.copy() for i, m in self.live.items()}, part.increment: np.ones(len(part), bool)})
        out.last_eviction = out._evict(part.increment)
        out.current = part.increment
        return out

    def _evict(self, increment: int) -> dict[str, Any] | None:
        budget = self.config.budget_bytes
        if budget is None:
            return None
        per_row = {i: bytes_per_row(p.shape, p.codec) for i, p in self.parts.items()}
        cap = budget // max(per_row.values())
        where: dict[str, list[tuple[int, np.ndarray]]] = {}
        for i, m in self.live.items():
            names = self.parts[i].label_names()
            for name in np.unique(names[m]):
                where.setdefault(str(name), []).append((i, np.flatnonzero(m & (names == name))))
        counts = {c: sum(len(r) for _, r in v) for c, v in where.items()}
        if sum(counts.values()) <= cap:
            return {"increment": increment, "budget_rows": int(cap), "evicted": {}, "kept": counts}
        keep = _balanced_quota(counts, cap)
        rng = np.random.default_rng(self.config.seed * 1_000_003 + increment)
        evicted = {}
        for c, spans in where.items():
            flat = np.concatenate([np.stack([np.full(len(r), i), r], 1) for i, r in spans])
            drop = rng.permutation(len(flat))[keep[c]:]
            for i, r in flat[drop]:
                self.live[int(i)][int(r)] = False
            if len(drop):
                evicted[c] = int(len(drop))
        return {"increment": increment, "budget_rows": int(cap), "evicted": evicted, "kept": keep}

    # -- persistence ----------------------------------------------------------------------------
    def write_manifest(self, folder: Path) -> None:
        """manifest.json + live.safetensors for this store into `folder` (a staging folder)."""
        from safetensors.numpy import save_file

        doc = {"format": "evo-latent-store", "config": self.config.to_dict(), **self.summary()}
        (folder / MANIFEST).write_text(json.dumps(doc, indent=1))
        save_file({str(i): m.astype(np.uint8) for i, m in self.live.items()} or {"none": np.zeros(0, np.uint8)},
                  str(folder / LIVE_FILE))

    @classmethod
    def load(cls, folder: Path, part_folders: Mapping[int, Path]) -> LatentStore:
        """The store described by `folder`'s manifest, its parts opened from `part_folders`."""
        from safetensors.numpy import load_file

        try:
            doc = json.loads((Path(folder) / MANIFEST).read_text())
            masks = load_file(str(Path(folder) / LIVE_FILE))
        except (OSError, ValueError) as e:
            raise LatentError(f"latent store manifest in {folder} is unreadable ({e})") from None
        config = StoreConfig(**doc["config"])
        parts, live = {}, {}
        for i in doc["parts"]:
            if i not in part_folders:
                raise LatentError(f"latent store {folder} needs the part of increment {i}, which no committed "
                                  "version holds; the run folder is incomplete")
            parts[i] = read_part(part_folders[i])
            live[i] = masks[str(i)].astype(bool)
            if len(live[i]) != len(parts[i]):
                raise LatentError(f"latent store {folder}: the live mask of increment {i} does not match its part")
        out = cls(config, doc["cut"], parts, live, doc.get("eviction"), doc.get("current"))
        return out


def _balanced_quota(counts: dict[str, int], cap: int) -> dict[str, int]:
    """Rows each class keeps: equal shares of `cap` (water-filling), remainder to the larger classes by name."""
    q_lo, q_hi = 0, max(counts.values())
    while q_lo < q_hi:  # the largest per-class quota q with sum(min(count, q)) <= cap
        q = (q_lo + q_hi + 1) // 2
        if sum(min(n, q) for n in counts.values()) <= cap:
            q_lo = q
        else:
            q_hi = q - 1
    keep = {c: min(n, q_lo) for c, n in counts.items()}
    left = cap - sum(keep.values())
    for c in sorted(c for c, n in counts.items() if n > q_lo):
        if left <= 0:
            break
        keep[c] += 1
        left -= 1
    return keep


class LatentRows:
    """Rows drawn from several parts, indexable like an array of images: `rows[idx]` decodes them."""

    def __init__(self, spans: Iterable[tuple[Part, np.ndarray]]) -> None:
        self.spans = [(p, np.asarray(r, dtype=np.int64)) for p, r in spans if len(r)]
        self.offsets = np.cumsum([0] + [len(r) for _, r in self.spans])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def label_names(self) -> np.ndarray:
        if not self.spans:
            return np.empty(0, dtype=object)
        return np.concatenate([p.label_names()[r] for p, r in self.spans])

    def labels(self, classes: list[str]) -> np.ndarray:
        """Labels as indices into `classes` (a name it lacks is a LatentError)."""
        index = {c: i for i, c in enumerate(classes)}
        names = self.label_names()
        missing = sorted({str(n) for n in names if n not in index})
        if missing:
            raise LatentError(f"stored latents are labelled {missing[:5]}, which the model does not know")
        return np.array([index[n] for n in names], dtype=np.int64)

    def subset(self, idx: np.ndarray) -> LatentRows:
        idx = np.sort(np.asarray(idx, dtype=np.int64))
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        return LatentRows([(p, r[idx[which == k] - self.offsets[k]]) for k, (p, r) in enumerate(self.spans)])

    def __getitem__(self, idx: Any) -> Tensor:
        """Decoded float32 latents of rows `idx` (an index array or a slice), in that order."""
        idx = np.arange(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx, dtype=np.int64)
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        out: Tensor | None = None
        for k in np.unique(which):
            part, rows = self.spans[k]
            sel = np.flatnonzero(which == k)
            local = rows[idx[sel] - self.offsets[k]]
            order = np.argsort(local, kind="stable")
            block = part.decode(local)  # decoded in sorted row order
            if out is None:
                out = torch.empty((len(idx), *block.shape[1:]), dtype=torch.float32)
            out[torch.from_numpy(sel[order])] = block
        return out if out is not None else torch.empty(0)

    @staticmethod
    def concat(*sets: LatentRows) -> LatentRows:
        return LatentRows([s for rs in sets for s in rs.spans])


# -- run folders ------------------------------------------------------------------------------------


def pending_dir(run_dir: Path, index: int) -> Path:
    """Where round `index` keeps its increment's part and the store after it, until the commit."""
    return Path(run_dir) / STORE_DIR / f"round-{index}"


def version_store_dir(run_dir: Path, version: int) -> Path:
    return Path(run_dir) / "versions" / str(version) / STORE_DIR


def committed_parts(run_dir: Path) -> dict[int, Path]:
    """Part folders of the committed versions, by increment."""
    out: dict[int, Path] = {}
    root = Path(run_dir) / "versions"
    if not root.is_dir():
        return out
    for v in sorted(p for p in root.iterdir() if p.name.isdigit() and (p / "meta.json").is_file()):
        f = v / STORE_DIR / PART_FILE
        if f.is_file():
            out[int(json.loads(f.read_text())["increment"])] = f.parent
    return out


def open_store(run_dir: Path, version: int, config: StoreConfig, pending: Path | None = None) -> LatentStore:
    """The store as of committed `version` (empty before the first part), or, with `pending`, the
    store after the round in progress (the committed parts plus its pending part)."""
    parts = committed_parts(run_dir)
    if pending is not None:
        pending = Path(pending)
        inc = read_part(pending).increment
        return LatentStore.load(pending, {**parts, inc: pending})
    folder = version_store_dir(run_dir, version)
    if not (folder / MANIFEST).is_file():
        return LatentStore(config)
    return LatentStore.load(folder, parts)


def write_pending(run_dir: Path, index: int, store: LatentStore, extra: dict[str, Any]) -> Path:
    """Publish round `index`'s pending folder: its part (`store.part(index)`) and the store after it."""
    target = pending_dir(run_dir, index)
    target.parent.mkdir(parents=True, exist_ok=True)

    def more(folder: Path) -> None:
        store.write_manifest(folder)
        (folder / "round.json").write_text(json.dumps(extra, indent=1))

    return write_part(target, store.part(index), more)
