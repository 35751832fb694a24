"""`joint`: retrain on all data seen so far — the accuracy upper bound and the cost reference.

Every increment restarts from the model the learner was given (pretrained backbone, fresh head
rows) and trains on the union of all increments so far, which this strategy keeps in full
(its `state_dict` holds them, so it is not a bounded-memory method).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from evo.graph.archgraph import ArchGraph
from evo.learn.strategies.base import Context, Workload, register_strategy
from evo.learn.strategies.sgd import SGDStrategy, init_new_rows


@register_strategy("joint")
class Joint(SGDStrategy):
    """Keeps every training sample; retrains the initial model on all of them each increment."""

    uses_memory = False

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.images_: np.ndarray | None = None
        self.labels_ = np.empty(0, dtype=np.int64)
        self.initial_: ArchGraph | None = None

    def prepare(self, graph: ArchGraph) -> ArchGraph:
        self.initial_ = graph
        return graph

    def training_rows(self, work: Workload) -> int:
        return work.n_train + work.n_seen

    def training_set(self, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        self.images_ = ctx.images.copy() if self.images_ is None else np.concatenate([self.images_, ctx.images])
        self.labels_ = np.concatenate([self.labels_, ctx.labels]).astype(np.int64)
        return self.images_, self.labels_

    def start_graph(self, ctx: Context) -> ArchGraph:
        """The initial backbone with a head for every class so far: old rows are re-initialised too."""
        start = ctx.graph.copy()
        if self.initial_ is not None:
            ps = {n: self.initial_.params(n) for n in self.initial_.nodes() if n != self.initial_.head}
            for n, p in ps.items():
                if n in start and {k: v.shape for k, v in p.items()} == {k: v.shape for k, v in start.params(n).items()}:
                    start.node(n)["params"] = dict(p)
        return init_new_rows(start, [i for i in range(len(ctx.classes)) if i not in ctx.new_classes],
                             self.options.seed + 1000 + ctx.index)

    def state_dict(self) -> dict[str, Tensor]:
        if self.images_ is None:
            return {}
        return {"images": torch.from_numpy(self.images_.copy()), "labels": torch.from_numpy(self.labels_.copy())}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> Joint:
        if "images" in state:
            self.images_ = np.asarray(state["images"]).copy()
            self.labels_ = np.asarray(state["labels"]).astype(np.int64)
        return self
