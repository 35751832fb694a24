"""`Learner`: keep a model learning from increments, with metrics and measured cost per increment.

    stream = evo.data.class_incremental("fashion-mnist", increments=5, seed=0)
    learner = evo.Learner(evo.zoo.load("efficientnet_lite0", pretrained=True, input_size=64))
    for inc in stream:
        print(learner.learn(inc))            # one line: accuracy, forgetting, FLOPs, seconds
    names, probs = learner.predict(images)   # uint8 (N, H, W, 3)

scikit-learn style: construction only stores its arguments; `learn` does the work and returns an
`IncrementReport`; learned state ends in `_` (`graph_`, `classes_`, `memory_`, `reports_`).
Deliberate break from scikit-learn: the class set GROWS between `learn` calls (scikit-learn's
`partial_fit` fixes `classes` on the first call). New classes enter the model through the
`add_classes` growth operator, so the logits of known classes are unchanged before training.

The growth search calls the same API once per candidate: `learner.with_graph(candidate)` gives an
independent learner that continues from this one's memory and statistics on the grown graph, and
`learn(increment)` returns the trained graph (`graph_`), its metrics and its cost.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from evo.checks import check_int, check_memory
from evo.data.dataset import ImageSet, concat
from evo.data.scenarios import Increment
from evo.data.transforms import Preprocess
from evo.errors import ConfigError, DataError, EvoError
from evo.graph.archgraph import ArchGraph
from evo.learn.cost import Cost, CostMeter, forward_flops
from evo.learn.device import resolve_device
from evo.learn.memory import SELECTORS, ExemplarMemory
from evo.learn.metrics import AccuracyMatrix
from evo.learn.strategies import Context, Strategy, make_strategy
from evo.learn.strategies.base import sub_state, tensor_state
from evo.learn.train import run_batches

HEAD_MODES = ("auto", "reset", "keep")


@dataclass(frozen=True)
class IncrementReport:
    """What one `learn` call did and cost.

    `row[j]`: accuracy on the classes of increment j after this one (a row of the accuracy matrix);
    `accuracy`: on the pooled test set of all classes seen so far. Metrics are fractions in [0, 1]
    and None when the increment brought no test data. `cost` is the training cost (features,
    statistics, solves, SGD steps, memory selection); evaluation is timed apart (`eval_seconds`).
    """

    index: int
    strategy: str
    new_classes: list[str]
    n_classes: int
    n_train: int
    row: list[float] | None
    accuracy: float | None
    average_incremental_accuracy: float | None
    forgetting: float | None
    bwt: float | None
    cost: Cost
    eval_seconds: float
    memory_size: int
    info: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        def pct(v: float | None) -> str:
            return "  n/a " if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:5.2f}%"

        return (f"[{self.strategy}] increment {self.index}: +{len(self.new_classes)} classes "
                f"({self.n_classes} total, {self.n_train} images) | acc {pct(self.accuracy)} "
                f"avg-inc {pct(self.average_incremental_accuracy)} forgetting {pct(self.forgetting)} | "
                f"{self.cost.flops / 1e12:.3f} TFLOPs {self.cost.seconds:.1f}s "
                f"peak {self.cost.peak_mem_bytes / 2**30:.2f} GiB | memory {self.memory_size}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cost"] = self.cost.to_dict()
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


class Learner:
    """Learns increments (new samples, new classes, or both) into one model, measuring each one.

    Parameters
    ----------
    graph : ArchGraph
        The starting model. Its final Linear is the head; `meta["preprocess"]` (input_size, mean,
        std) defines the input pipeline (default: the graph's input size, mean = std = 0.5).
    memory : int
        Exemplar budget in images (class-balanced), kept only by strategies that replay.
    strategy : str or Strategy
        A registered strategy name (`evo.learn.strategies.list_strategies()`) or an instance.
    head : 'auto', 'reset' or 'keep'
        On the first increment: 'reset' replaces the head by one for the increment's classes;
        'keep' keeps the model's classes (new ones are added); 'auto' resets when none of the
        model's classes occur in the increment (a pretrained backbone), and keeps otherwise.
    selector : 'herding' or 'reservoir'
        How the memory picks exemplars.
    progress : bool
        tqdm bars during training and feature extraction.
    eval_batch_size : int
        Batch size for evaluation and prediction.
    device : 'cpu', 'cuda' or 'cuda:N'
        Where features, training and the closed-form head compute (`evo.learn.device`: AMP on
        CUDA, statistics in fp64); the graph and the saved state stay on the CPU.

    latents : StoreConfig, LatentStore or None
        Keep every training image's activation at a frozen cut (`evo.learn.latent`), so that a strategy
        such as 'evo_latent' can train above the cut on everything seen. Each `learn` encodes its
        increment below the cut once (unless the store was staged for it, `use_latents`).
    **options
        Passed to the strategy (e.g. `epochs=3, trainable=2, lr=0.01`, or `taps=..., ridge=...`).
    """

    def __init__(self, graph: ArchGraph, memory: int = 500, strategy: str | Strategy = "evo", *,
                 head: str = "auto", selector: str = "herding", progress: bool = True,
                 eval_batch_size: int = 256, seed: int = 0, device: str | torch.device = "cpu",
                 latents: Any = None, **options: Any) -> None:
        if not isinstance(graph, ArchGraph):
            raise ConfigError(f"Learner needs an ArchGraph (e.g. evo.zoo.load(...)); got {type(graph).__name__}")
        if graph.head is None:
            raise ConfigError("Learner needs a graph whose output comes from a Linear head; add a final nn.Linear")
        if head not in HEAD_MODES:
            raise ConfigError(f"Learner head must be one of {list(HEAD_MODES)}; got {head!r}")
        check_memory(memory)
        check_int("Learner eval_batch_size", eval_batch_size)
        check_int("Learner seed", seed, 0)
        SELECTORS.get(selector)
        self.graph, self.memory, self.head, self.selector = graph, memory, head, selector
        self.progress, self.eval_batch_size, self.seed = bool(progress), eval_batch_size, seed
        self.device = resolve_device(device)
        self.strategy = make_strategy(strategy, **options)
        self.latents = latents
        self._reset()

    def _reset(self) -> None:
        self.graph_: ArchGraph | None = None
        self.classes_: list[str] = []
        self.memory_: ExemplarMemory | None = (
            ExemplarMemory(self.memory, self.selector, self.seed) if self.strategy.uses_memory else None)
        self.reports_: list[IncrementReport] = []
        self.accuracy_matrix_ = AccuracyMatrix()
        self.cost_ = Cost()
        self._backbone_changed = False
        self._stats_graph: ArchGraph | None = None  # the graph the strategy's state describes, after with_graph
        self._first_index = 0  # increments learned before this learner was restored (load_state_dict)
        self.latents_, self._latents_staged = _as_store(self.latents), False

    # -- learning -----------------------------------------------------------------------------

    def learn(self, data: Increment | ImageSet, corrections: ImageSet | None = None,
              forget: ImageSet | None = None) -> IncrementReport:
        """Learn one increment (an `evo.data.Increment`, or a labelled `ImageSet` without test data).

        `corrections`: images a user labelled (`evo.active`); they are learned with the increment
        and kept in the exemplar memory before any other exemplar of their class. `forget`:
        corrections learned by an earlier increment and since undone; they leave the memory, and
        a statistics strategy takes them out of its sums (exact when its statistics are kept).
        Returns the report (also appended to `reports_`). On any error the learner is unchanged.
        """
        train, tests = _unpack(data)
        for what, value in (("corrections", corrections), ("forget", forget)):
            if value is not None and not isinstance(value, ImageSet):
                raise DataError(f"learn: {what} must be an evo.data.ImageSet or None; got {type(value).__name__}. "
                                "Build one with evo.data.ImageSet.from_arrays(images, labels, classes)")
        priority = None
        if corrections is not None and len(corrections):
            train, priority = with_corrections(train, corrections)
        forget = forget if forget is not None and len(forget) else None
        _check_images(train.images, "increment training images")
        first = self.graph_ is None
        known = self._initial_classes(train) if first else self.classes_
        new = [c for c in train.present_classes() if c not in known]
        classes = known + new
        labels = _map_labels(train, classes)
        index = self._first_index + len(self.reports_)
        preprocess = self.preprocess
        strategy = self.strategy.clone()  # work on copies: an error leaves the learner unchanged
        graph = self._grow(new, known, strategy)
        meter = CostMeter(self.device)
        latents = self._staged_latents(graph, train, preprocess, meter)
        memory = self.memory_
        if forget is not None and memory is not None and len(memory):
            memory = memory.without(_matches(memory.images, forget.images))
        ctx = Context(graph=graph, parent=self.graph_, images=train.images, labels=labels, classes=classes,
                      new_classes=[classes.index(c) for c in new], memory=memory, preprocess=preprocess,
                      meter=meter, progress=self.progress, device=self.device, latents=latents,
                      backbone_changed=self._backbone_changed, index=index,
                      stats_graph=self._stats_graph if self._backbone_changed else None, priority=priority,
                      forget=None if forget is None else _forget_set(forget, train, classes))
        with ctx.meter:
            result = strategy.learn(ctx)
            memory = self._updated_memory(result, ctx)
        t0 = time.perf_counter()
        row, seen = self._evaluate(result.graph, classes, tests, preprocess)
        eval_seconds = time.perf_counter() - t0
        # commit
        self.strategy, self.graph_, self.classes_, self.memory_ = strategy, result.graph, classes, memory
        self._backbone_changed, self._stats_graph = False, None
        self.latents_, self._latents_staged = latents, False
        in_matrix = row is not None and len(row) == len(self.accuracy_matrix_) + 1
        if in_matrix:
            self.accuracy_matrix_.append(row, seen)
        report = self._report(index, new, len(labels), row, seen, in_matrix, ctx.meter.cost, eval_seconds,
                              result.info)
        self.reports_.append(report)
        self.cost_ = self.cost_ + report.cost
        return report

    def use_latents(self, store: Any, staged: bool = True) -> Learner:
        """Use `store` (a LatentStore) from now on; `staged`: its `current` part already holds the next
        increment's latents (a search round encodes them once for all its candidates)."""
        self.latents_, self._latents_staged = store, staged
        return self

    def _staged_latents(self, graph: ArchGraph, train: ImageSet, preprocess: Preprocess, meter: CostMeter):
        """The latent store holding this increment's part: staged already, or encoded here below the cut."""
        from evo.learn.latent import cut_node, encode_part

        store = self.latents_
        if store is None or self._latents_staged:
            return store
        cut = store.cut or cut_node(graph, store.config.cut)
        with meter:
            part = encode_part(graph, cut, train.images, train.labels, list(train.classes), store.next_key(),
                               store.config.codec, preprocess, meter, self.eval_batch_size)
        return store.with_part(part)

    def _initial_classes(self, train: ImageSet) -> list[str]:
        """Classes the model keeps on the first increment: none after a head reset, else its own."""
        own = self.graph.classes or [f"class_{i}" for i in range(self.graph.attrs(self.graph.head)["out_features"])]
        if self.head == "reset" or (self.head == "auto" and not set(own) & set(train.present_classes())):
            return []
        return list(own)

    def _grow(self, new: list[str], known: list[str], strategy: Strategy) -> ArchGraph:
        """The graph to train: the current one with head units for `new` (first call: prepared)."""
        import evo.ops

        if self.graph_ is not None:
            return evo.ops.apply(self.graph_, "add_classes", names=new) if new else self.graph_
        g = self.graph.copy()
        g.meta["preprocess"] = self.preprocess.to_dict()
        if known:
            g.meta["classes"] = list(known)
            if new:
                g = evo.ops.apply(g, "add_classes", names=new)
        else:
            if not new:
                raise DataError("the first increment has no labelled samples; pass training data")
            g = reset_head(g, new)
        return strategy.prepare(g)

    def _updated_memory(self, result, ctx: Context) -> ExemplarMemory | None:
        if self.memory_ is None:
            return None
        mem = ExemplarMemory(self.memory_.budget, self.memory_.selector, self.memory_.seed)
        mem.load_state_dict(ctx.memory.state_dict())  # the learner's, less any forgotten correction
        feats = None
        if SELECTORS.get(mem.selector).needs_features:
            feats = result.features
            net = result.graph.to_module().eval()
            fpi = forward_flops(_FeatureNet(net), torch.empty((1, *result.graph.input_shape)))
            if feats is None:
                feats = run_batches(net, ctx.images, ctx.preprocess, _features, ctx.meter,
                                    self.eval_batch_size, fpi, ctx.progress, "features (memory)", self.device)
            stale = mem.features is None or mem.features.shape[1] != feats.shape[1] or ctx.backbone_changed
            if len(mem) and (stale or result.features is None):
                # the feature space changed: refresh the stored exemplars' features, keep their ranks
                state = mem.state_dict()
                state["features"] = run_batches(net, mem.images, ctx.preprocess, _features, ctx.meter,
                                                self.eval_batch_size, fpi, False, device=self.device).numpy()
                mem.load_state_dict(state)
        mem.update(ctx.images, ctx.labels, None if feats is None else feats.numpy(), priority=ctx.priority)
        return mem

    def with_graph(self, graph: ArchGraph) -> Learner:
        """An independent copy of this learner whose model is `graph` (e.g. a grown candidate).

        `graph` must have the learner's classes. The memory and strategy state are copied; the
        backbone is treated as changed: a statistics-based strategy checks its features against
        this learner's graph and keeps its statistics only where they still hold.
        """
        if self.graph_ is None:
            raise ConfigError("with_graph needs a learner that has learned at least one increment")
        if not isinstance(graph, ArchGraph):
            raise ConfigError(f"with_graph needs an ArchGraph (e.g. a grown copy of learner.graph_); got "
                              f"{type(graph).__name__}")
        if graph.classes != self.classes_:
            raise ConfigError(f"with_graph: the graph's classes {graph.classes[:5]}... differ from the "
                              f"learner's {self.classes_[:5]}...; grow the learner's own graph_")
        other = Learner.__new__(Learner)
        other.__dict__.update(self.__dict__)
        other.strategy = self.strategy.clone()
        other.graph_ = graph
        other.classes_ = list(self.classes_)
        other.reports_ = list(self.reports_)
        other.accuracy_matrix_ = AccuracyMatrix.from_dict(self.accuracy_matrix_.to_dict())
        if self.memory_ is not None:
            other.memory_ = ExemplarMemory(self.memory_.budget, self.memory_.selector, self.memory_.seed)
            other.memory_.load_state_dict(self.memory_.state_dict())
        other._backbone_changed = True
        other._stats_graph = self.graph_ if not self._backbone_changed else self._stats_graph
        return other

    # -- evaluation and prediction -------------------------------------------------------------

    @property
    def preprocess(self) -> Preprocess:
        """The model version's input pipeline (from graph meta, else the graph's input size, mean=std=0.5)."""
        g = self.graph_ if self.graph_ is not None else self.graph
        meta = g.meta.get("preprocess")
        if meta:
            return Preprocess.from_dict(meta)
        c, h, _ = g.input_shape
        return Preprocess(int(h), (0.5,) * c, (0.5,) * c, channels=int(c))

    def _require_fitted(self) -> None:
        if self.graph_ is None:
            raise ConfigError("this Learner has not learned anything yet; call learn(increment) first")

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (N, n_classes) for uint8 (N, H, W, C) images, columns in `classes_` order."""
        self._require_fitted()
        images = _as_images(images)
        net = self.graph_.to_module().eval()
        logits = run_batches(net, images, self.preprocess, _logits, None, self.eval_batch_size, None,
                             self.progress and len(images) > 4 * self.eval_batch_size, "predict", self.device)
        return torch.softmax(logits.double(), dim=1).numpy()

    def predict(self, images: np.ndarray) -> tuple[list[str], np.ndarray]:
        """(class names, probability of that class) for uint8 (N, H, W, C) or (N, H, W) images."""
        proba = self.predict_proba(images)
        best = proba.argmax(axis=1)
        return [self.classes_[i] for i in best], proba[np.arange(len(best)), best]

    def score(self, data: ImageSet) -> float:
        """Accuracy on a labelled ImageSet (its classes must all be known to the model)."""
        self._require_fitted()
        if not isinstance(data, ImageSet):
            raise DataError(f"score needs an evo.data.ImageSet; got {type(data).__name__}")
        pred = self._predict_indices(self.graph_, data.images, self.preprocess)
        return float((pred == _map_labels(data, self.classes_, "test")).mean())

    def _predict_indices(self, graph: ArchGraph, images: np.ndarray, preprocess: Preprocess) -> np.ndarray:
        if len(images) == 0:
            return np.empty(0, dtype=np.int64)
        net = graph.to_module().eval()
        logits = run_batches(net, images, preprocess, _logits, None, self.eval_batch_size, None,
                             self.progress, "evaluate", self.device)
        return logits.argmax(dim=1).numpy()

    def _evaluate(self, graph: ArchGraph, classes: list[str], tests: tuple[ImageSet, list[ImageSet]] | None,
                  preprocess: Preprocess) -> tuple[list[float] | None, float | None]:
        """Row of the accuracy matrix and pooled accuracy; one pass over the pooled test set."""
        if tests is None:
            return None, None
        pooled, per_inc = tests
        if len(pooled) == 0:
            return None, None
        truth = _map_labels(pooled, classes, "test")
        pred = self._predict_indices(graph, pooled.images, preprocess)
        correct = pred == truth
        row = []
        for part in per_inc:
            members = np.isin(np.asarray(pooled.classes)[pooled.labels], part.present_classes())
            if members.sum() == len(part) and len(part):
                row.append(float(correct[members].mean()))
            elif len(part):  # not a sub-list of the pooled set: evaluate it on its own
                p = self._predict_indices(graph, part.images, preprocess)
                row.append(float((p == _map_labels(part, classes, "test")).mean()))
            else:
                row.append(float("nan"))
        if any(math.isnan(v) for v in row):
            raise DataError("an increment's test set is empty; give every increment test data (per_class_test >= 1)")
        return row, float(correct.mean())

    def _report(self, index, new, n_train, row, seen, have, cost, eval_seconds, info) -> IncrementReport:
        m = self.accuracy_matrix_

        def metric(fn) -> float | None:
            v = fn() if have else None
            return None if v is None or math.isnan(v) else v

        return IncrementReport(
            index=index, strategy=self.strategy.name, new_classes=list(new), n_classes=len(self.classes_),
            n_train=n_train, row=row, accuracy=seen,
            average_incremental_accuracy=metric(m.average_incremental_accuracy),
            forgetting=metric(m.forgetting), bwt=metric(m.bwt), cost=cost, eval_seconds=eval_seconds,
            memory_size=len(self.memory_) if self.memory_ is not None else 0, info=dict(info or {}))

    # -- persistence ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Tensor]:
        """Learned state besides the graph, as plain tensors (safetensors-friendly, no pickle):
        `memory.*` (exemplar images, labels, ranks, features) and `strategy.*` (e.g. ridge statistics).
        Store it next to `graph_`, whose meta holds the classes and preprocessing."""
        sd: dict[str, Tensor] = {}
        if self.memory_ is not None:
            sd |= tensor_state("memory", self.memory_.state_dict())
        sd |= tensor_state("strategy", self.strategy.state_dict())
        sd["learner.increments"] = torch.tensor([self._first_index + len(self.reports_)], dtype=torch.int64)
        return sd

    def load_state_dict(self, state: Mapping[str, Tensor], graph: ArchGraph) -> Learner:
        """Restore a learner saved as (`graph_`, `state_dict()`): continue learning from that version.
        A state that does not load leaves this learner as it was."""
        if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
            raise ConfigError("load_state_dict needs the mapping of tensors that Learner.state_dict() returned "
                              f"(e.g. safetensors.torch.load_file(path)); got {type(state).__name__}")
        if not isinstance(graph, ArchGraph) or graph.head is None or not graph.classes:
            raise ConfigError("load_state_dict needs the saved graph_ (an ArchGraph with meta['classes'])")
        first_index = 0  # saved before it was recorded: counts restart at 0
        if "learner.increments" in state:
            n = state["learner.increments"]
            if n.numel() != 1 or n.is_floating_point() or n.dtype == torch.bool or int(n.flatten()[0]) < 0:
                raise ConfigError(f"state 'learner.increments' must hold one integer >= 0; got {n.tolist()!r}. "
                                  "Was the state saved by Learner.state_dict()?")
            first_index = int(n.flatten()[0])
        memory = ExemplarMemory(self.memory, self.selector, self.seed) if self.strategy.uses_memory else None
        strategy = self.strategy.clone()  # loaded on copies: a state that fails to load changes nothing
        try:
            if memory is not None:
                mem = {k: v.numpy() for k, v in sub_state("memory", state).items()}
                if mem:
                    memory.load_state_dict(mem)
            strategy.load_state_dict(sub_state("strategy", state))
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
            raise ConfigError(f"load_state_dict: the state does not load into this {self.strategy.name!r} learner "
                              f"({type(e).__name__}: {e}); pass the state_dict() of a learner with the same "
                              "strategy and memory") from None
        self._reset()
        self.strategy, self.memory_ = strategy, memory
        self.graph_, self.classes_ = graph, list(graph.classes)
        self._first_index = first_index
        return self

    def __repr__(self) -> str:
        learned = f", {len(self.classes_)} classes learned" if self.graph_ is not None else ""
        return f"Learner({self.graph!r}, memory={self.memory}, strategy={self.strategy!r}{learned})"


# -- helpers -----------------------------------------------------------------------------------


class _FeatureNet(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.forward_features(x)


def _features(net: torch.nn.Module, x: Tensor) -> Tensor:
    return net.forward_features(x)


def _as_store(latents: Any):
    """A LatentStore from the Learner's `latents` argument (None, a StoreConfig, or a store)."""
    from evo.learn.latent import LatentStore, StoreConfig

    if latents is None or isinstance(latents, LatentStore):
        return latents
    if isinstance(latents, StoreConfig):
        return LatentStore(latents)
    raise ConfigError(f"Learner latents must be None, an evo.learn.latent.StoreConfig or LatentStore; got "
                      f"{type(latents).__name__}")


def _logits(net: torch.nn.Module, x: Tensor) -> Tensor:
    return net(x)


def reset_head(graph: ArchGraph, classes: Sequence[str]) -> ArchGraph:
    """A copy whose head predicts exactly `classes` (fresh rows: zero weight and bias)."""
    g = graph.copy()
    head = g.head
    d = g.attrs(head)["in_features"]
    g.node(head)["attrs"] = {**g.attrs(head), "out_features": len(classes), "bias": True}
    g.node(head)["params"] = {"weight": torch.zeros(len(classes), d), "bias": torch.zeros(len(classes))}
    g.meta["classes"] = list(classes)
    return g.validate()


def _unpack(data: Any) -> tuple[ImageSet, tuple[ImageSet, list[ImageSet]] | None]:
    if isinstance(data, Increment):
        train, tests = data.train, (data.test, list(data.test_by_increment))
    elif isinstance(data, ImageSet):
        train, tests = data, None
    else:
        raise DataError(f"learn takes an evo.data.Increment or a labelled evo.data.ImageSet; got "
                        f"{type(data).__name__}. Build one with evo.data.ImageSet.from_arrays(images, labels, classes)")
    if len(train) == 0:
        raise DataError("the increment has no training images; skip it or add labelled samples")
    return train, tests


def with_corrections(train: ImageSet, corrections: ImageSet | None) -> tuple[ImageSet, np.ndarray]:
    """The increment's training set with the corrections appended, and the mask of the appended rows:
    what `Learner.learn(train, corrections=)` learns, in that order (a search stages its latents so)."""
    if corrections is None or not len(corrections):
        return train, np.zeros(len(train), bool)
    if not isinstance(corrections, ImageSet):
        raise DataError(f"corrections must be an evo.data.ImageSet; got {type(corrections).__name__}")
    _check_images(corrections.images, "corrections")
    if corrections.image_size != train.image_size:
        corrections = corrections.resized(train.image_size)
    classes = list(dict.fromkeys([*train.classes, *corrections.classes]))
    both = concat([train.relabel(classes), corrections.relabel(classes)])
    both = ImageSet(both.images, both.labels, classes, train.skipped)  # corrections have no clip/group id
    return both, np.arange(len(both)) >= len(train)


def _matches(items: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Which stored items equal (pixel for pixel, after resizing to the items' size) one of `images`."""
    from evo.data.transforms import resize_uint8

    if items.ndim != 4 or not len(images):
        return np.zeros(len(items), bool)
    if images.shape[1:3] != items.shape[1:3]:
        images = resize_uint8(images, tuple(items.shape[1:3]))
    keys = {im.tobytes() for im in images}
    return np.array([it.tobytes() in keys for it in items], dtype=bool)


def _forget_set(forget: ImageSet, train: ImageSet, classes: list[str]) -> ImageSet:
    """The undone corrections at the training images' size, labelled in the model's class order."""
    _check_images(forget.images, "forget")
    if forget.image_size != train.image_size:
        forget = forget.resized(train.image_size)
    unknown = [c for c in forget.present_classes() if c not in classes]
    if unknown:
        raise DataError(f"forget: labels {unknown} are not classes of this model; nothing learned them")
    return ImageSet(forget.images, _map_labels(forget, classes, "forget"), classes)


def _map_labels(data: ImageSet, classes: list[str], what: str = "training") -> np.ndarray:
    """The set's labels as indices into `classes`; a class the model does not know is a DataError."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in data.present_classes() if c not in index]
    if unknown:
        raise DataError(f"{what} labels {unknown} are not classes of this model ({len(classes)} known: "
                        f"{classes[:6]}{'...' if len(classes) > 6 else ''}); learn them first or drop them")
    lut = np.array([index.get(c, -1) for c in data.classes], dtype=np.int64)
    return lut[np.asarray(data.labels)]


def _check_images(images: np.ndarray, what: str) -> None:
    if images.dtype != np.uint8:
        raise DataError(f"{what} must be uint8 (0..255); got {images.dtype}")


def _as_images(images: Any) -> np.ndarray:
    """uint8 (N, H, W, C); float input (which may hold NaN) is refused with the fix."""
    if isinstance(images, Tensor):
        images = images.detach().cpu().numpy()
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        bad = ""
        if np.issubdtype(arr.dtype, np.floating) and arr.size and not np.isfinite(arr).all():
            bad = " and holds NaN/inf"
        raise DataError(f"images must be uint8 (N, H, W, C) with values 0..255; got {arr.dtype}{bad}. "
                        "Convert with np.clip(x, 0, 255).astype(np.uint8) after removing invalid pixels")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4) or len(arr) == 0 or 0 in arr.shape[1:3]:
        raise DataError(f"images must be a non-empty (N, H, W) or (N, H, W, 1|3|4) array with H, W >= 1; got shape "
                        f"{arr.shape}")
    if arr.shape[-1] == 4:
        arr = arr[..., :3]
    return arr


__all__ = ["EvoError", "IncrementReport", "Learner", "reset_head"]
