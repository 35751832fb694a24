"""`Corrections`: a flagged error fixed in milliseconds, every fix kept, any fix undone.

    with Corrections.open("runs/fashion") as eng:        # latest version + the log replayed; holds the run lock
        r = eng.correct("shoe.png", "Sandal")              # r.holds, r.weight, r.seconds, r.broken, r.conflicts
        eng.undo(r.id)                                     # the exact downdate
        eng.predict(images)                                # [Prediction(label, probability, top)]
        eng.suggest("pool/", k=20, strategy="margin")      # what to label next

The model is the run's latest committed version (graph + the closed-form head's statistics) plus
the corrections log replayed (`evo.active.log`). Its head is kept as A⁻¹ and W = A⁻¹B of the head's
own features (the statistics' layout mapped by `evo.learn.tracked`) and changes only by rank-one
updates (`evo.active.ridge`). A correction gets the smallest weight (≥ 1, capped) that makes its
image win by `margin` nats of the calibrated logits. Then the regression guard re-checks every live
correction: one that flipped is re-weighted the same way. A correction that cannot hold is reported
as a conflict: with a near-duplicate (same hash, or feature cosine > 0.99) of another label, or with
the correction whose update broke it.

Python without a run: `Corrections.from_learner(learner)` (in memory, no log, no lock). The
engine lives above `evo.learn` (which never imports it), so `Learner` has no `correct` method.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import evo.ops
from evo.active import local
from evo.active.errors import CorrectionError
from evo.active.images import as_image, check_label, from_png, image_files, image_items, sha256, to_png
from evo.active.log import CorrectionLog, Row
from evo.active.queries import QUERIES
from evo.active.ridge import RankOneHead, weight_needed
from evo.active.rounds import META_KEY, SIZE_KEY, learned_image
from evo.checks import check_int
from evo.data.transforms import Preprocess
from evo.graph.archgraph import ArchGraph
from evo.learn.device import feature_batch
from evo.learn.strategies.base import sub_state
from evo.learn.tracked import apply_map, from_meta, head_map, head_taps
from evo.runs import STATE_FILE, Run, RunError

INACTIVE_LOGIT = -1e4  # a class without data yet (added by a correction later undone), as add_classes sets it


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float
    top: list[tuple[str, float]]


@dataclass(frozen=True)
class CorrectionResult:
    id: int
    label: str
    previous: str
    predicted: str
    probability: float
    weight: float
    holds: bool
    seconds: float
    broken: list[int] = field(default_factory=list)
    conflicts: list[tuple[int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class CorrectionRecord:
    id: int
    created: str
    image_sha256: str
    previous: str
    label: str
    weight: float
    holds: bool
    undone: bool
    source: str
    external_id: str | None


@dataclass(frozen=True)
class Suggestion:
    index: int
    path: str | None
    score: float
    predicted: str
    probability: float


@dataclass(frozen=True)
class _Live:
    """A live correction as the head sees it: bias-augmented features, label index, total weight."""

    phi: Tensor
    label: int
    weight: float
    sha: str
    unit: Tensor  # features / ‖features‖, for the near-duplicate test
    ln: Tensor  # `local.normalised` features: its correlation with any image, for the local features


def _live(x: Tensor, label: int, weight: float, sha: str) -> _Live:
    """The live entry of a correction whose head features are `x` (d,)."""
    norm = float(x.double().norm())
    return _Live(_augment(x[None])[0], label, weight, sha, x.double() / (norm if norm > 0 else 1.0),
                 local.normalised(x[None])[0])


@dataclass(frozen=True)
class _State:
    """Everything a prediction reads; replaced whole (one reference swap) by each correct/undo."""

    head: RankOneHead
    classes: tuple[str, ...]
    active: Tensor  # bool (C,): classes with data (base statistics or a live correction)
    live: dict[int, _Live]
    seq: int
    graph: ArchGraph
    protos: tuple[int, ...] = ()  # corrections with a local feature, in column order after [φ, 1]
    proto_ln: Tensor | None = None  # (len(protos), d) their `local.normalised` features
    psi_live: Tensor | None = None  # (len(live), len(protos)) ψ of every live correction, rows in live order


@dataclass
class Options:
    """`margin`: how far (nats of the calibrated logits) a corrected image's label must beat the
    runner-up. `min_weight`: a correction counts at least as this many samples. `max_weight`: the
    cap; a correction that needs more is reported as not holding. `duplicate_cosine`: feature cosine
    above which two images are near-duplicates. `guard_rounds`: re-check passes per update.
    `locality`: the correlation τ above which a correction's local feature fires (`evo.active.local`;
    None: no local features, the head's own features only); `local_ridge`: the ridge on them. A
    run's log keeps the values it was started with, so its replay never changes."""

    margin: float = 1.0
    min_weight: float = 1.0
    max_weight: float = 1000.0
    duplicate_cosine: float = 0.99
    guard_rounds: int = 8
    batch_size: int = 128
    locality: float | None = 0.9
    local_ridge: float = 1.0


class Corrections:
    """The corrections engine over one model version; see the module docstring."""

    def __init__(self, graph: ArchGraph, state: dict[str, Tensor], *, version: int | None = None,
                 log: CorrectionLog | None = None, **options: Any) -> None:
        settings = log.settings() if log is not None else {}
        self.options = Options(**{**options, **settings})
        local.check(self.options.locality, self.options.local_ridge)
        if log is not None and log.write and not settings:  # a new log records how it is to be replayed
            log.save_settings({"locality": self.options.locality, "local_ridge": self.options.local_ridge})
        self.version, self._log = version, log
        self._lock = threading.RLock()
        self._exit = contextlib.ExitStack()
        self.scale = float(graph.meta.get("head_scale", 1.0))
        self._delta = self.options.margin / self.scale
        meta = graph.meta.get("preprocess")
        c, h, _ = graph.input_shape
        self.preprocess = Preprocess.from_dict(meta) if meta else Preprocess(int(h), (0.5,) * c, (0.5,) * c, channels=c)
        self._net = graph.to_module().eval()
        head = _head_statistics(graph, state)
        classes = tuple(graph.classes or [])
        support = head[1].abs().sum(dim=0) > 0
        self._base_support = support
        # `open` solves once, with its log folded in (`_replay`); without a log, solve the version now
        rank = RankOneHead.solve(head[0], head[1], head[2]) if log is None else None
        self._base = head  # (G, B, λ): `_fold` solves the version plus its log from these in one go
        d = head[0].shape[0] - 1
        self._state = _State(rank, classes, support.clone(), {}, 0, graph, (),
                             torch.zeros(0, d, dtype=torch.float64), torch.zeros(0, 0, dtype=torch.float64))
        self._next_id = 1

    # ---- opening ----------------------------------------------------------------------------------
    @classmethod
    def open(cls, run_dir: str | os.PathLike, write: bool = True, version: int | None = None,
             command: str = "correct", **options: Any) -> Corrections:
        """The run's latest version (or `version`, read-only) plus the log replayed.

        `write=True` holds the run's writer lock until `close()` (recorded as `evo {command}` for
        whoever else finds the run busy); a search round holding it makes this raise `RunBusyError`.
        Corrections made on an older version and still live are applied again (re-featurised from
        their stored images) on the first writable open of a newer one.
        """
        path = Path(run_dir)
        run = Run.open(path)  # a RunError for a folder that is not a run
        exit_stack = contextlib.ExitStack()
        try:
            if run.latest() is None:  # before the lock, whose file a refused command should not leave
                raise RunError(f"run {path} has no committed version yet; learn one with `evo learn`")
            if write:
                exit_stack.enter_context(run.lock(command))
            latest = run.latest()
            if version is not None and version not in run.versions():
                raise RunError(f"run {path} has no version {version}; versions: {run.versions()}")
            if write and version not in (None, latest):
                raise CorrectionError(f"corrections go to the latest version ({latest}); "
                                      f"version {version} can only be read (write=False)")
            n = latest if version is None else version
            graph, meta, state = run.load_version(n)
            if not state:  # what `_head_statistics` reads: say why it is absent
                if meta.get("increment") is None:
                    raise CorrectionError(f"version {n} of {path} is the model before any learning: it has no "
                                          f"closed-form head to predict or correct with; use a learnt version "
                                          f"(versions: {run.versions()})")
                raise RunError(f"{run.version_dir(n) / STATE_FILE} is missing: version {n} keeps its head "
                               "statistics there; restore the run folder from a backup")
            log = CorrectionLog(path, write)
            exit_stack.callback(log.close)
            eng = cls(graph, state, version=n, log=log, **options)
            eng._exit = exit_stack
            eng._replay(rebase=n == latest, learned=[int(i) for i in meta.get(META_KEY) or []],
                        size=meta.get(SIZE_KEY))
            return eng
        except BaseException:
            exit_stack.close()
            raise

    @classmethod
    def from_learner(cls, learner: Any, **options: Any) -> Corrections:
        """An in-memory engine over a fitted `evo.Learner` using the `evo` strategy (no log, no lock)."""
        if getattr(learner, "graph_", None) is None:
            raise CorrectionError("the learner has not learned anything yet; call learner.learn(...) first")
        return cls(learner.graph_, learner.state_dict(), **options)

    def close(self) -> None:
        self._exit.close()

    def __enter__(self) -> Corrections:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- reading --------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self._state.classes)

    @property
    def model_version(self) -> str:
        """The committed version plus the log position it reflects, e.g. "v5+c17"."""
        st = self._state
        base = f"v{self.version}" if self.version is not None else "memory"
        return f"{base}+c{st.seq}" if st.seq else base

    @property
    def graph(self) -> ArchGraph:
        """The model with the corrected head written into its final Linear (scaled as committed)."""
        st = self._state
        g = st.graph.copy()
        w = self.scale * st.head.weight
        d = w.shape[0] - 1 - len(st.protos)
        weight, bias = torch.cat([w[:d], w[d + 1:]]).T.clone(), w[d].clone()
        weight[~st.active], bias[~st.active] = 0.0, INACTIVE_LOGIT
        if st.protos:
            return local.export(g, st.proto_ln * d ** 0.5, self.options.locality, weight, bias)
        dtype = g.params(g.head)["weight"].dtype
        g.set_params(g.head, weight=weight.to(dtype), bias=bias.to(dtype))
        return g

    @property
    def head_weight(self) -> Tensor:
        """W = A⁻¹B (d + 1, C), float64: the ridge solution the head holds (× head_scale)."""
        return self._state.head.weight

    def features(self, images: Any) -> Tensor:
        """The head's input features (n, d), float32, of images (arrays or paths), with the version's preprocessing.

        Each image is decoded and shrunk to the input size before the next is read, so a folder of large
        photos needs one decoded photo of memory; `images` may also be an iterator, read as it goes. The
        network is fixed for the engine's life (corrections change only the head), so features may be
        computed outside any lock and given to `predict_features`."""
        items = images if isinstance(images, Iterator) else image_items(images)
        size = feature_batch(self._net, self.options.batch_size, torch.device("cpu"))
        batch: list[Tensor] = []
        outs: list[Tensor] = []
        with torch.inference_mode():
            for im in items:  # an iterator is read lazily: a caller's fetch feeds full batches, not its chunks
                batch.append(self.preprocess(as_image(im)[None]))
                del im  # decoded images are not held while the iterator produces the next
                if len(batch) == size:
                    outs.append(self._forward(batch))
                    batch = []
            if batch:
                outs.append(self._forward(batch))
        if not outs:
            raise CorrectionError("no images given; pass at least one image")
        return torch.cat(outs)

    def _forward(self, inputs: list[Tensor]) -> Tensor:
        x = torch.cat(inputs).contiguous(memory_format=torch.channels_last)
        out = self._net.forward_features(x).float()
        if not torch.isfinite(out).all():
            raise CorrectionError("the model produced NaN/inf features for these images; its weights are broken")
        return out

    def logits(self, feats: Tensor, state: _State | None = None) -> Tensor:
        """Calibrated logits (n, C), float64, from features (n, d)."""
        st = self._state if state is None else state
        z = self.scale * st.head.outputs(self._z(st, _augment(feats), local.normalised(feats)))
        z[:, ~st.active] = INACTIVE_LOGIT
        return z

    def predict(self, images: Any) -> list[Prediction]:
        """Label, probability and top-3 for each image: uint8 (N, H, W[, C]) arrays or image paths."""
        return self.predict_features(self.features(images))

    def predict_features(self, feats: Tensor) -> list[Prediction]:
        """`predict` from `features(images)`: one snapshot of the head, never a half-updated one."""
        st = self._state
        proba = torch.softmax(self.logits(feats, st), dim=1)
        out = []
        for row in proba:
            top = torch.topk(row, min(3, len(row)))
            pairs = [(st.classes[int(i)], float(v)) for v, i in zip(top.values, top.indices, strict=True)]
            out.append(Prediction(pairs[0][0], pairs[0][1], pairs))
        return out

    def list(self) -> list[CorrectionRecord]:
        """Every correction in the log (undone ones too), with whether each live one still holds."""
        st = self._state
        rows = self._log.rows() if self._log is not None else []
        held = self._holding(st)
        return [CorrectionRecord(r.id, r.created, r.image_sha256, r.previous, r.label,
                                 st.live[r.id].weight if r.id in st.live else 0.0, held.get(r.id, False),
                                 r.undone is not None, r.source, r.external_id) for r in rows]

    def find(self, external_id: str) -> int | None:
        """The live correction made for `external_id` (e.g. a Label Studio annotation id), if any."""
        if self._log is None:
            return None
        live = self._state.live
        hits = [r.id for r in self._log.rows() if r.external_id == str(external_id) and r.id in live]
        return hits[-1] if hits else None

    # ---- correcting -----------------------------------------------------------------------------
    def correct(self, image: Any, label: str, *, source: str = "python", external_id: str | None = None,
                features: Tensor | None = None, png: bytes | None = None) -> CorrectionResult:
        """Record that `image` is a `label` and update the model so it predicts it (see the module doc).

        A label that is not a class yet adds it (`add_classes`). Returns once the correction is
        committed to the log. `features` (the image's, precomputed) skips the forward pass, and `png`
        (`to_png(image)`, precomputed) the encoding of the log's lossless copy.
        """
        t0 = time.perf_counter()
        img = as_image(image)
        label = check_label(label)
        self._require_write()
        with self._lock:
            st = self._state
            x = self.features([img])[0] if features is None else torch.as_tensor(features, dtype=torch.float32)
            previous = st.classes[int(self.logits(x[None], st)[0].argmax())]
            cid = self._log.next_id() if self._log is not None else self._next_id
            st, ops, broken, conflicts = self._apply_new(st, cid, x, label, sha256(img))
            row = {"id": cid, "sha256": sha256(img), "png": to_png(img) if png is None else png, "previous": previous,
                   "label": label,
                   "source": str(source), "external_id": None if external_id is None else str(external_id)}
            st = self._commit(st, row, [(cid, x.numpy())], ops)
            self._next_id = cid + 1
        z = self.logits(x[None], st)[0]
        proba = torch.softmax(z, dim=0)
        best = int(z.argmax())
        holds = self._holding(st).get(cid, False)
        return CorrectionResult(cid, label, previous, st.classes[best], float(proba[best]), st.live[cid].weight,
                                holds, time.perf_counter() - t0, broken, conflicts)

    def undo(self, cid: int) -> list[int]:
        """Take correction `cid` back out exactly (A −= wφφᵀ, B −= wφyᵀ with its total weight).

        Returns the live corrections that no longer hold afterwards (nothing is re-weighted, so the
        model equals one that never saw `cid`, given the other corrections' weights)."""
        self._require_write()
        if isinstance(cid, bool) or not isinstance(cid, (int, np.integer)):
            raise CorrectionError(f"correction id must be an integer; got {cid!r}")
        cid = int(cid)
        if not 0 < cid < 2**63:  # SQLite's integer range: beyond it no correction can exist
            raise CorrectionError(f"there is no correction {cid}; list them with `evo corrections RUN`")
        with self._lock:
            st = self._state
            row = self._log.row(cid) if self._log is not None else None
            if cid not in st.live:
                if (row is not None and row.undone) or (self._log is None and 0 < cid < self._next_id):
                    raise CorrectionError(f"correction {cid} was already undone; see `evo corrections`")
                raise CorrectionError(f"there is no correction {cid}; list them with `evo corrections RUN`")
            live = st.live[cid]
            st = self._apply_op(st, "undo", cid, -live.weight, live.label)
            st = self._commit(st, None, [], [("undo", cid, -live.weight, st.classes[live.label])], undone=cid)
        held = self._holding(st)
        return [i for i, ok in held.items() if not ok]

    # ---- what to label next -----------------------------------------------------------------------
    def suggest(self, pool: Any, k: int = 20, strategy: str = "margin", seed: int = 0) -> list[Suggestion]:
        """The `k` images of `pool` (a folder, image paths, or a uint8 batch) most worth a person's look."""
        fn = QUERIES.get(strategy)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise CorrectionError(f"k must be an integer >= 1; got {k!r}")
        check_int("seed", seed, 0, error=CorrectionError)
        paths = None
        if isinstance(pool, (str, os.PathLike)) or (isinstance(pool, (list, tuple)) and pool
                                                     and isinstance(pool[0], (str, os.PathLike))):
            names = [pool] if isinstance(pool, (str, os.PathLike)) else list(pool)
            paths = image_files(names)
            if not paths:
                raise CorrectionError(f"pool {', '.join(map(str, names))} holds no images; point --pool at a "
                                      "folder of .png/.jpg files")
            pool = paths
        feats = self.features(pool)
        st = self._state
        proba = torch.softmax(self.logits(feats, st), dim=1)
        order, scores = fn(proba, feats, min(k, len(feats)), np.random.default_rng(seed))
        best = proba.argmax(dim=1)
        return [Suggestion(int(i), None if paths is None else str(paths[i]), float(s), st.classes[int(best[i])],
                           float(proba[i, best[i]])) for i, s in zip(order, scores, strict=True)]

    # ---- internals ------------------------------------------------------------------------------
    def _require_write(self) -> None:
        if self._log is not None and not self._log.write:
            raise CorrectionError("this engine was opened read-only; open it with write=True to correct or undo")

    def _z(self, st: _State, phi: Tensor, ln: Tensor) -> Tensor:
        """Rows [φ, 1, ψ]: bias-augmented features and the live local features (`evo.active.local`)."""
        if not st.protos:
            return phi
        return torch.cat([phi, local.psi(ln, st.proto_ln, self.options.locality)], dim=1)

    def _z_live(self, st: _State, ids: Sequence[int]) -> Tensor:
        """Rows [φ, 1, ψ] of live corrections (ψ from the state's cache, kept by add/undo)."""
        order = {c: n for n, c in enumerate(st.live)}
        rows = [order[i] for i in ids]
        return torch.cat([torch.stack([st.live[i].phi for i in ids]), st.psi_live[rows]], dim=1)

    def _with_live(self, st: _State, cid: int, entry: _Live) -> _State:
        """`entry` live as correction `cid`, its ψ row (over the current local features) cached."""
        row = local.psi(entry.ln[None], st.proto_ln, self.options.locality)
        return replace(st, live={**st.live, cid: entry}, psi_live=torch.cat([st.psi_live, row]))

    def _apply_op(self, st: _State, kind: str, cid: int, w: float, label: int, in_place: bool = False) -> _State:
        """One logged rank-one change (the only way the head moves, live or in a replay). `in_place`
        where nobody else can see the head yet (a replay on opening, or a head this update already
        copied). An undo also drops the correction's local feature, cross terms included."""
        live = dict(st.live)
        z = self._z_live(st, [cid])[0]
        if kind == "undo":
            row = list(st.live).index(cid)
            del live[cid]
            st = replace(st, psi_live=torch.cat([st.psi_live[:row], st.psi_live[row + 1:]]))
        else:
            old = live[cid]
            live[cid] = replace(old, weight=old.weight + w)
        head = st.head.updated(z, label, w, in_place=in_place)
        if kind == "undo" and cid in st.protos:
            j = st.protos.index(cid)
            head = head.without_column(head.inverse.shape[0] - len(st.protos) + j)
            keep = [k for k in range(len(st.protos)) if k != j]
            st = replace(st, protos=tuple(st.protos[k] for k in keep), proto_ln=st.proto_ln[keep],
                         psi_live=st.psi_live[:, keep])
        labels = {v.label for v in live.values()}
        active = self._base_support.clone()
        if len(active) < len(st.classes):
            active = torch.cat([active, torch.zeros(len(st.classes) - len(active), dtype=torch.bool)])
        active[list(labels)] = True
        return replace(st, head=head, live=live, active=active)

    def _add_proto(self, st: _State, cid: int) -> _State:
        """Correction `cid`'s local feature as a new column: its ridge, and its cross terms with every
        live correction at its current weight (the base statistics have none)."""
        if self.options.locality is None:
            return st
        e = st.live[cid]
        ids = list(st.live)
        z = self._z_live(st, ids)
        col = local.psi(torch.stack([st.live[i].ln for i in ids]), e.ln[None], self.options.locality)
        w = torch.tensor([st.live[i].weight for i in ids], dtype=torch.float64) * col[:, 0]
        y = torch.zeros(len(ids), st.head.n_classes, dtype=torch.float64)
        y[torch.arange(len(ids)), [st.live[i].label for i in ids]] = 1.0
        head = st.head.with_column(z.T @ w, self.options.local_ridge + float(w @ col[:, 0]), y.T @ w)
        return replace(st, head=head, protos=(*st.protos, cid), proto_ln=torch.cat([st.proto_ln, e.ln[None]]),
                       psi_live=torch.cat([st.psi_live, col], dim=1))

    def _with_class(self, st: _State, label: str) -> _State:
        graph = evo.ops.apply(st.graph, "add_classes", names=[label])
        return replace(st, head=st.head.with_class(), classes=(*st.classes, label), graph=graph,
                       active=torch.cat([st.active, torch.zeros(1, dtype=torch.bool)]))

    def _apply_new(self, st: _State, cid: int, x: Tensor, label: str, sha: str):
        """Add correction `cid` (features x) at its needed weight, then run the guard."""
        ops: list[tuple[str, int, float | None, str]] = []
        if label not in st.classes:
            st = self._with_class(st, label)
            ops.append(("class", None, None, label))
        y = st.classes.index(label)
        entry = _live(x, y, 0.0, sha)
        conflicts = [(cid, j) for j in self._duplicates(st, sha, entry.unit, y)]
        before = st.head
        st = self._add_proto(self._with_live(st, cid, entry), cid)
        active = st.active.clone()
        active[y] = True
        z = self._z_live(st, [cid])[0]
        need = weight_needed(st.head.outputs(z[None])[0], y, st.head.leverage(z), self._delta, active)
        w = min(max(self.options.min_weight, need), self.options.max_weight)
        st = self._apply_op(st, "add", cid, w, y, in_place=st.head is not before)  # a new head: ours alone
        ops.append(("add", cid, w, label))
        st, more, broken, found = self._guard(st, cid, owned=True)
        ops += more
        for pair in found:
            if pair not in conflicts and pair[::-1] not in conflicts:
                conflicts.append(pair)
        return st, ops, broken, conflicts

    def _duplicates(self, st: _State, sha: str, unit: Tensor, label: int, skip: int | None = None) -> list[int]:
        """Live corrections of another label whose image is the same (hash) or nearly (feature cosine)."""
        out = []
        for j, e in st.live.items():
            if j != skip and e.label != label and (e.sha == sha or float(e.unit @ unit) > self.options.duplicate_cosine):
                out.append(j)
        return out

    def _holding(self, st: _State) -> dict[int, bool]:
        if not st.live:
            return {}
        ids = list(st.live)
        z = _masked(st.head.outputs(self._z_live(st, ids)), st.active)
        best = z.argmax(dim=1)
        return {i: int(best[n]) == st.live[i].label for n, i in enumerate(ids)}

    def _guard(self, st: _State, culprit: int | None, owned: bool = False):
        """Re-check every live correction; re-weight those that flipped; report those that cannot hold.
        `owned`: `st.head` is this update's own copy (re-weight it in place)."""
        ops, conflicts, given_up = [], [], set()
        for _ in range(self.options.guard_rounds):
            failing = [i for i, ok in self._holding(st).items() if not ok and i not in given_up]
            if not failing:
                break
            for i in failing:
                e = st.live[i]
                z = self._z_live(st, [i])[0]
                p = st.head.outputs(z[None])[0]
                if int(_masked(p[None], st.active)[0].argmax()) == e.label:
                    continue  # an earlier re-weighting in this pass fixed it
                dup = self._duplicates(st, e.sha, e.unit, e.label, skip=i)
                need = weight_needed(p, e.label, st.head.leverage(z), self._delta, st.active)
                if dup or e.weight + need > self.options.max_weight:
                    given_up.add(i)
                    other = dup[-1] if dup else (culprit if i != culprit else self._nearest_other(st, i))
                    if other is not None:
                        conflicts.append((i, other))
                    continue
                st = self._apply_op(st, "reweight", i, need, e.label, in_place=owned)
                owned = True
                ops.append(("reweight", i, need, st.classes[e.label]))
        broken = sorted(i for i, ok in self._holding(st).items() if not ok and i != culprit)
        return st, ops, broken, conflicts

    def _nearest_other(self, st: _State, i: int) -> int | None:
        e = st.live[i]
        others = [(float(o.unit @ e.unit), j) for j, o in st.live.items() if j != i and o.label != e.label]
        return max(others)[1] if others else None

    def _commit(self, st: _State, row: dict | None, feats: list, ops: list, undone: int | None = None) -> _State:
        """Write the action to the log (acknowledged on return), then swap the state in."""
        if self._log is not None:
            _, seq = self._log.commit(self.version, row, feats, ops, undone=undone)
        else:
            seq = st.seq + len(ops)
        st = replace(st, seq=seq)
        self._state = st
        return st

    def _replay(self, rebase: bool, learned: list[int] = (), size: list[int] | None = None) -> None:
        """The version plus its log: the corrections this version learned (weight-1 samples already in
        its statistics), then the log's ops for this version folded in order into the live set and
        their weights, and the head solved once from the result (`_fold`: the same system the
        rank-one steps built, one factorisation instead of one copy per step). Then live corrections
        made on an older version (the run moved on) are re-applied through the normal path, and
        learned ones that do not hold are topped up, logged when writable."""
        log, st = self._log, self._state
        rows = {r.id: r for r in log.rows()}
        feats = log.features(self.version)
        xs, fresh = self._learned_features(rows, feats, learned, size)
        ops = log.ops(self.version)
        if xs or ops:
            live, classes, seq = {}, list(st.classes), st.seq
            for cid, (x, label) in xs.items():
                live[cid] = _live(x, classes.index(label), 1.0, rows[cid].image_sha256)
            for op in ops:
                if op.kind == "class":
                    classes.append(op.label)
                elif op.kind == "add":
                    live[op.cid] = _live(torch.from_numpy(feats[op.cid]), classes.index(op.label), 0.0 + op.weight,
                                         rows[op.cid].image_sha256)
                elif op.kind == "reweight":
                    live[op.cid] = replace(live[op.cid], weight=live[op.cid].weight + op.weight)
                else:
                    del live[op.cid]
                seq = op.seq
            self._state = self._fold(st, live, classes, xs, seq)
        else:
            self._state = replace(st, head=RankOneHead.solve(*self._base))
        self._next_id = log.next_id()
        if rebase:
            self._rebase(rows, ops, set(learned), fresh)

    def _fold(self, st: _State, live: dict[int, _Live], classes: list[str],
              learned: dict[int, tuple[Tensor, str]], seq: int) -> _State:
        """The state whose head solves [[G + λD, 0], [0, λ_ψ I]] + Σ w z zᵀ over the live corrections
        (z = [φ, 1, ψ], one local feature each), the learned samples' weight 1 taken out of G first."""
        gram, xty, ridge = self._base
        d1, c, ids = gram.shape[0], len(classes), list(live)
        ln = torch.stack([live[i].ln for i in ids]) if ids else torch.zeros(0, d1 - 1, dtype=torch.float64)
        protos = ids if self.options.locality is not None else []
        psi = local.psi(ln, ln[:len(protos)], self.options.locality)
        m = len(protos)
        a = torch.zeros(d1 + m, d1 + m, dtype=torch.float64)
        a[:d1, :d1] = gram
        a[range(d1 - 1), range(d1 - 1)] += ridge
        a[range(d1, d1 + m), range(d1, d1 + m)] = self.options.local_ridge
        b = torch.zeros(d1 + m, c, dtype=torch.float64)
        b[:d1, :xty.shape[1]] = xty
        for x, label in learned.values():  # in the statistics at weight 1; back below at their full weight
            phi = _augment(x[None])[0]
            a[:d1, :d1] -= torch.outer(phi, phi)
            b[:d1, classes.index(label)] -= phi
        if ids:
            z = torch.cat([torch.stack([live[i].phi for i in ids]), psi], dim=1)
            w = torch.tensor([live[i].weight for i in ids], dtype=torch.float64)
            y = torch.zeros(len(ids), c, dtype=torch.float64)
            y[torch.arange(len(ids)), [live[i].label for i in ids]] = 1.0
            a += z.T @ (w[:, None] * z)
            b += z.T @ (w[:, None] * y)
        new = classes[len(st.classes):]
        graph = evo.ops.apply(st.graph, "add_classes", names=new) if new else st.graph
        active = torch.cat([self._base_support, torch.zeros(c - len(self._base_support), dtype=torch.bool)])
        active[[e.label for e in live.values()]] = True
        return replace(st, head=RankOneHead.from_system(a, b), classes=tuple(classes), active=active, live=live,
                       seq=seq, graph=graph, protos=tuple(protos), proto_ln=ln[:m], psi_live=psi)

    def _learned_features(self, rows: dict[int, Row], feats: dict[int, np.ndarray], learned: list[int],
                          size: list[int] | None) -> tuple[dict[int, tuple[Tensor, str]], list[tuple[int, np.ndarray]]]:
        """The head features of the corrections the version learned: the log's for this version, or
        computed from the image as the round saw it (then returned in `fresh`, to be logged)."""
        xs, fresh = {}, []
        for cid in learned:
            r = rows.get(cid)
            if r is None or r.label not in self._state.classes:
                raise CorrectionError(f"version {self.version} learned correction {cid}, which "
                                      f"{'the log lacks' if r is None else 'has a label the version lacks'}; "
                                      "this corrections.sqlite does not belong to this run")
            if cid in feats:
                x = torch.from_numpy(feats[cid])
            else:
                img = learned_image(self._log.image_png(cid), size) if size else from_png(self._log.image_png(cid))
                x = self.features([img])[0]
                fresh.append((cid, x.numpy()))
            xs[cid] = (x, r.label)
        return xs, fresh

    def _rebase(self, rows: dict[int, Row], ops_here: list, learned: set[int],
                fresh: list[tuple[int, np.ndarray]]) -> None:
        """`ops_here`: this version's logged ops, as `_replay` read them (read once per open)."""
        st = self._state
        if fresh:  # the first open of this version since its round learned them: make them hold
            st, ops, _, _ = self._guard(st, None)
            if self._log.write and (ops or fresh):
                st = self._commit(st, None, fresh, ops)
            self._state = st
        done = {op.cid for op in ops_here if op.cid is not None} | learned
        for r in rows.values():
            if r.undone is None and r.id not in done and r.version < self.version:
                img = from_png(self._log.image_png(r.id))
                x = self.features([img])[0]
                st, ops, _, _ = self._apply_new(st, r.id, x, r.label, r.image_sha256)
                if self._log.write:
                    st = self._commit(st, None, [(r.id, x.numpy())], ops)
                else:
                    self._state = st
        self._state = st


def _augment(x: Tensor) -> Tensor:
    """Bias-augmented float64 rows [x 1]."""
    x = x.to(torch.float64)
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=torch.float64)], dim=1)


def _masked(z: Tensor, active: Tensor) -> Tensor:
    z = z.clone()
    z[:, ~active] = -torch.inf
    return z


def _head_statistics(graph: ArchGraph, state: dict[str, Tensor]) -> tuple[Tensor, Tensor, float]:
    """(G, B, λ) of the head's own features, read off the version's strategy state."""
    st = sub_state("strategy", state)
    if "head.gram" not in st or "ridge" not in st:
        raise CorrectionError("this model version keeps no closed-form head statistics; corrections need a run "
                              "learnt with the `evo` strategy (e.g. `evo learn MODEL --data DIR`)")
    if "head.projection" in st:
        raise CorrectionError("corrections do not support a head with a random projection yet")
    head = head_taps(graph)
    layout = from_meta(graph) or head
    gram, xty = apply_map(head_map(graph, head, layout), st["head.gram"].double(), st["head.xty"].double())
    d, c = graph.attrs(graph.head)["in_features"], graph.attrs(graph.head)["out_features"]
    if tuple(gram.shape) != (d + 1, d + 1) or tuple(xty.shape) != (d + 1, c):
        raise CorrectionError(f"the version's head statistics ({tuple(xty.shape)}) do not match its head "
                              f"({d} features, {c} classes); the run is inconsistent")
    return gram, xty, float(st["ridge"][0])


def predict_paths(eng: Corrections, paths: Sequence[str | os.PathLike]) -> list[tuple[str, Prediction]]:
    """Predictions for image files and folders (the CLI's `evo predict`)."""
    files = image_files(list(paths))
    if not files:
        raise CorrectionError(f"no images found in {', '.join(map(str, paths))}")
    return list(zip(map(str, files), eng.predict(files), strict=True))
