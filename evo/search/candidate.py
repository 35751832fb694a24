"""A candidate: a sequence of growth ops (with sites and params) plus training settings, sampled define-by-run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import evo.ops as ops
from evo.errors import InvalidSiteError
from evo.graph.archgraph import ArchGraph
from evo.search.space import SearchSpace


@dataclass(frozen=True)
class Candidate:
    growth: list[dict[str, Any]] = field(default_factory=list)  # [{"op", "site", "params"}]
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """A readable name for progress lines and the Ray dashboard, e.g. 'widen(layer1)+deepen(relu)'."""
        growth = "+".join(f"{g['op']}({','.join(str(v) for v in g['site'].values())})" for g in self.growth)
        strategy = self.training.get("strategy", "evo")
        return (growth or "no-growth") + ("" if strategy == "evo" else f" [{strategy}]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key(self) -> str:
        """What the candidate computes: its growth plus the training knobs its strategy reads (the fast
        path ignores epochs and lr, so two no-growth `evo` candidates are the same candidate)."""
        from evo.learn.strategies import option_defaults

        strategy = self.training.get("strategy", "evo")
        read = set(option_defaults(strategy)) | {"strategy"}
        training = {k: v for k, v in self.training.items() if k in read}
        return json.dumps({"growth": self.growth, "training": training}, sort_keys=True, default=str)

    def apply(self, graph: ArchGraph) -> ArchGraph:
        for step in self.growth:
            graph = ops.apply(graph, step["op"], site=step["site"], **step["params"])
        return graph


def growth_base(parent: ArchGraph, parent_meta: dict[str, Any], space: SearchSpace) -> ArchGraph:
    """The graph a round's growth applies to.

    At version 0 (nothing learned yet), the parent as the space's strategies prepare it
    (`Strategy.prepare`: the closed-form ones rewire the head onto their multi-layer taps), so growth
    such as `add_tap` acts on the features the head will read, and round 0 may choose them with no
    old statistics to lose. When the strategies would prepare it differently, or later, it is the
    parent itself.
    """
    if parent_meta.get("increment") is not None:
        return parent
    from evo.learn.strategies import make_strategy, option_defaults

    strategy = space.training.get("strategy")
    prepared = []
    for name in (strategy.values() if strategy is not None else ("evo",)):
        fixed = {k: r.values()[0] for k, r in space.training.items()
                 if k != "strategy" and k in option_defaults(name) and r.choices is not None}
        prepared.append(make_strategy(name, **fixed).prepare(parent))
    shapes = {_structure(g) for g in prepared}
    return prepared[0] if len(shapes) == 1 else parent


def _structure(graph: ArchGraph) -> tuple:
    return tuple(graph.nodes()), tuple(sorted(graph.g.edges()))


def candidate_sites(graph: ArchGraph, op: str, cut: str | None) -> list[dict[str, Any]]:
    """Where the search may apply `op`: its sites, minus those below a latent store's cut (that growth
    would be refused, so it is never proposed). The one list trial sampling and enqueued trials index."""
    sites = ops.sites(graph, op)
    if cut is None:
        return sites
    from evo.learn.latent import sites_above

    return sites_above(graph, cut, op, sites)


def suggest_candidate(trial, space: SearchSpace, parent: ArchGraph, min_ops: int = 0,
                      cut: str | None = None) -> tuple[Candidate, ArchGraph]:
    """Sample a candidate with Optuna's define-by-run API; returns it with the grown (untrained) graph.

    Sites are sampled as a fraction of the current site list, because the list depends on the ops
    applied before it; the concrete site is stored as a user attribute so every trial is replayable.
    `min_ops` ops at least (1: the random-growth baseline, or a space's `min_ops`); an op that finds no
    site then makes the candidate invalid rather than a silent no-growth. `cut`: the latent store's cut
    node, below which no site is offered.
    """
    n_ops = trial.suggest_int("n_ops", min(min_ops, space.max_ops), space.max_ops) \
        if space.operators and space.max_ops else 0
    graph, growth, siteless = parent, [], []
    for i in range(n_ops):
        name = trial.suggest_categorical(f"op_{i}", sorted(space.operators))
        sites = candidate_sites(graph, name, cut)
        u = trial.suggest_float(f"site_{i}", 0.0, 1.0)
        if not sites:
            siteless.append(name)
            continue
        site = sites[min(int(u * len(sites)), len(sites) - 1)]
        params = {k: r.suggest(trial, f"{name}_{i}_{k}") for k, r in space.operators[name].items()}
        graph = ops.apply(graph, name, site=site, **params)
        growth.append({"op": name, "site": site, "params": params})
    if len(growth) < min_ops:
        where = " above the latent cut" if cut is not None else ""
        raise InvalidSiteError(f"{', '.join(siteless)} has no site{where} in this model, and this candidate must grow "
                               f"(min_ops {min_ops}); drop the operator from the space or lower min_ops")
    from evo.learn.strategies import canonical_training

    # what the knobs amount to: a fine-tune of nothing but the head is the fast path, and is deduplicated as such
    training = canonical_training({k: r.suggest(trial, f"train_{k}") for k, r in space.training.items()},
                                  grown=bool(growth))
    cand = Candidate(growth, training)
    trial.set_user_attr("candidate", cand.to_dict())
    return cand, graph
