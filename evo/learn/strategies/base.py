"""The strategy contract: the Learner owns the loop, a strategy fills one hook, `learn(ctx)`.

The Learner validates the increment, maps its labels onto the model's class list, grows the head
through the `add_classes` operator, meters the cost, updates the exemplar memory and evaluates.
A strategy only decides how the prepared graph is trained on the increment and returns the trained
graph (plus, when it already computed them, the new graph's features of the increment's images,
which the memory's herding selector reuses instead of paying for another pass).

Options are declared as a dataclass (`Options`) so that unknown names and bad values fail at
construction with the parameter named, and unset (None) options fall through to the defaults.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from evo.data.transforms import Preprocess
from evo.errors import ConfigError
from evo.graph.archgraph import ArchGraph
from evo.learn.cost import CostMeter
from evo.learn.memory import ExemplarMemory
from evo.registry import Registry


@dataclass
class Context:
    """Everything a strategy may read while learning one increment.

    `graph` already has a head unit for every class in `classes` (new rows are placeholders:
    re-initialise them); `parent` is the model before this increment (None on the first one).
    `images`/`labels` are the increment's training data, labels indexing `classes`.
    `memory` holds exemplars of earlier increments (not yet updated with this one).
    `backbone_changed` is True when the graph's feature extractor is not the one the strategy's
    saved state was computed with (a grown candidate from the search, or a new model);
    `stats_graph` is then that earlier graph, when known, so a strategy can check what changed.
    """

    graph: ArchGraph
    parent: ArchGraph | None
    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    new_classes: list[int]
    memory: ExemplarMemory | None
    preprocess: Any
    meter: CostMeter
    progress: bool = True
    backbone_changed: bool = False
    index: int = 0
    stats_graph: ArchGraph | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    latents: Any = None  # evo.learn.latent.LatentStore whose `current` part is this increment's (or None)
    priority: np.ndarray | None = None  # bool per training image: a user's correction, kept first in memory
    forget: Any = None  # ImageSet of corrections learnt earlier and since undone: statistics take them out


@dataclass(frozen=True)
class Workload:
    """What a strategy is asked to price (`Strategy.price`): learning one increment.

    `n_memory` is the exemplars the memory may hold (bounded by `n_seen`, the training images of
    earlier increments); `first`: the first increment, whose graph is not prepared yet; `grown`:
    the graph was grown from the one the strategy's learned state describes; `cut`: the node of the latent store's cut (None without a
    store); `n_seen` then also bounds the stored latents.
    """

    n_train: int
    n_classes: int
    n_memory: int = 0
    n_seen: int = 0
    first: bool = False
    grown: bool = False
    cut: str | None = None  # the latent store's cut node, when the run keeps one
    n_forget: int = 0  # images learned earlier that the statistics take out again (one forward pass each)


@dataclass
class Result:
    """What `learn` returns: the trained graph, and optionally its features of `ctx.images`."""

    graph: ArchGraph
    features: Tensor | None = None
    info: dict[str, Any] | None = None


class Strategy:
    """Base of every strategy. Subclasses set `name`, an `Options` dataclass, and `learn`.

    `uses_memory`: whether the Learner keeps an exemplar memory for this strategy (naive, EWC and
    LwF do not replay, so none is kept or charged). Extra learned state (ridge statistics, Fisher
    information, stored data) goes through `state_dict`/`load_state_dict` as plain tensors.
    """

    name: ClassVar[str] = ""
    uses_memory: ClassVar[bool] = True
    needs_latents: ClassVar[bool] = False  # trains on a latent store: Learner(..., latents=StoreConfig(...))

    @dataclass
    class Options:
        pass

    def __init__(self, **options: Any) -> None:
        self.options = build_options(self.Options, self.name, options)

    def learn(self, ctx: Context) -> Result:
        raise NotImplementedError

    def price(self, graph: ArchGraph, work: Workload) -> int:
        """FLOPs that `learn` may spend on `work` with `graph` (an upper bound of what the meter
        measures, memory upkeep included), from shapes alone: nothing runs. The growth search
        admits candidates by it. Each strategy prices the compute it spends, beside that code."""
        raise NotImplementedError(f"strategy {self.name!r} does not price its work; implement price()")

    @classmethod
    def computes(cls, options: Mapping[str, Any], grown: bool = False) -> str:
        """The strategy whose computation these options amount to (on a graph that `grown` says growth
        changed): this one, unless they leave it nothing to do beyond another's (the search then runs,
        prices and deduplicates it as that one)."""
        return cls.name

    def same_result(self, old: ArchGraph, new: ArchGraph, images: np.ndarray, preprocess: Preprocess,
                    meter: CostMeter | None = None) -> bool:
        """Whether learning with `new` gives what learning with `old` does, checked on `images` (a few
        suffice): true only for a strategy whose result depends on the graph solely through features that
        growth left unchanged. The growth search skips such a candidate (default: False, never skipped)."""
        return False

    def prepare(self, graph: ArchGraph) -> ArchGraph:
        """Called once with the first graph, before its head is fitted; may rewrite it (default: as is)."""
        return graph

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> Strategy:
        return self

    def clone(self) -> Strategy:
        """An independent copy: same options, copied learned state (callables in options are shared)."""
        return copy.deepcopy(self)

    def options_dict(self) -> dict[str, Any]:
        return asdict(self.options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.options_dict().items())})"


def build_options(cls: type, owner: str, options: Mapping[str, Any]) -> Any:
    """Instantiate an options dataclass, refusing unknown names (listing the valid ones)."""
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"strategy {owner!r} has no option(s) {unknown}; valid options: {known}")
    return cls(**{k: v for k, v in options.items() if v is not None})


STRATEGIES: Registry[type[Strategy]] = Registry("learning strategy")


def register_strategy(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: register a Strategy subclass under `name` (a duplicate name raises)."""

    def deco(cls: type[Strategy]) -> type[Strategy]:
        cls.name = name
        STRATEGIES.add(name, cls)
        return cls

    return deco


def make_strategy(name: str | Strategy, **options: Any) -> Strategy:
    """A strategy instance from its registered name (unknown names list the valid ones)."""
    if isinstance(name, Strategy):
        if options:
            raise ConfigError("pass options to the strategy's constructor, not alongside an instance")
        return name
    if not isinstance(name, str):
        raise ConfigError(f"strategy must be a registered name or a Strategy; got {type(name).__name__}")
    return STRATEGIES.get(name)(**options)


def option_defaults(name: str) -> dict[str, Any]:
    """The options a registered strategy takes, with their defaults (what a config may set for it)."""
    from dataclasses import MISSING, fields

    return {f.name: (f.default if f.default is not MISSING else None) for f in fields(STRATEGIES.get(name).Options)}


def canonical_training(settings: Mapping[str, Any], grown: bool = False) -> dict[str, Any]:
    """`settings` (a candidate's training values; `grown`: the candidate grows) as the strategy that they
    amount to (`Strategy.computes`), keeping only the options it reads: two settings that compute the
    same thing then read the same, and the committed version records what ran."""
    name, options = split_settings(settings)
    same = STRATEGIES.get(name).computes(options, grown)
    if same == name:
        return dict(settings)
    read = option_defaults(same)
    return {"strategy": same, **{k: v for k, v in settings.items() if k in read}}


def head_growth_flops(graph: ArchGraph, n_classes: int) -> int:
    """Forward FLOPs per image that `add_classes` adds to the head when it grows to `n_classes`
    (a training step costs at most 3×: forward, weight and input gradients). Prices add these
    instead of building the grown graph."""
    head = graph.head
    if head is None:
        return 0
    return 2 * graph.attrs(head)["in_features"] * max(n_classes - graph.attrs(head)["out_features"], 0)


def split_settings(settings: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(strategy name, the options it accepts) from a flat settings mapping such as a search
    candidate's training values: `strategy` (default 'evo') plus any options; a setting the chosen
    strategy has no option for is left out (a space's knob applies to the strategies that have it;
    the space refuses a knob that none of its strategies has)."""
    name = settings.get("strategy", "evo")
    accepted = option_defaults(name)
    return name, {k: v for k, v in settings.items() if k != "strategy" and k in accepted}


def tensor_state(prefix: str, state: Mapping[str, Any]) -> dict[str, Tensor]:
    """Prefix keys and turn numpy arrays into tensors (for nesting one state dict in another)."""
    return {f"{prefix}.{k}": torch.as_tensor(np.asarray(v)) if not isinstance(v, Tensor) else v
            for k, v in state.items()}


def sub_state(prefix: str, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The entries of `state` under `prefix.` with the prefix removed."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
