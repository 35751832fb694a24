"""The growth-operator contract: pure (parent in, child out), site listing, declared cost delta."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from evo.errors import ConfigError, InvalidSiteError
from evo.graph.archgraph import ArchGraph
from evo.registry import Registry

Site = dict[str, Any]


@dataclass(frozen=True)
class Delta:
    """What an operator adds: trainable parameters and forward FLOPs per image."""

    params: int
    flops: int

    def to_dict(self) -> dict[str, int]:
        return {"params": self.params, "flops": self.flops}


class GrowthOp:
    """Base of every operator. Subclasses fill `sites` and `grow`; the base owns copying and checking.

    `grow` receives a private copy of the parent and edits it; tensors must be replaced, never
    mutated in place (they are shared with the parent).
    """

    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}

    def sites(self, graph: ArchGraph) -> list[Site]:
        raise NotImplementedError

    def grow(self, graph: ArchGraph, site: Site, **params: Any) -> None:
        raise NotImplementedError

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Merge with defaults and refuse unknown names; subclasses add range checks."""
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ConfigError(f"operator {self.name!r} has no parameter(s) {unknown}; "
                              f"it takes {sorted(self.defaults) or 'none'}")
        return {**self.defaults, **params}

    def check_site(self, graph: ArchGraph, site: Site) -> Site:
        """Refuse a site that `sites` would not list; returns the canonical site."""
        valid = self.sites(graph)
        if site not in valid:
            hint = f"e.g. {valid[0]}" if valid else "this graph has none"
            raise InvalidSiteError(f"{self.name} does not apply at {site!r}; list valid sites with "
                                   f"evo.ops.sites(graph, {self.name!r}) ({len(valid)} sites, {hint})")
        return site

    def apply(self, graph: ArchGraph, site: Site, **params: Any) -> ArchGraph:
        check_graph(graph, self.name)
        params = self.check_params(params)
        site = self.check_site(graph, site)
        child = graph.copy()
        self.grow(child, site, **params)
        child.validate()
        recorded = {k: v for k, v in params.items() if not isinstance(v, torch.Tensor)}  # data is not a setting
        child.meta.setdefault("history", []).append({"op": self.name, "site": site, "params": recorded})
        return child

    def delta(self, graph: ArchGraph, site: Site, **params: Any) -> Delta:
        """Parameter and FLOP delta of applying this op, measured on the meta device (exact, no compute)."""
        child = self.apply(graph, site, **params)
        return Delta(child.num_params() - graph.num_params(), child.flops() - graph.flops())


def check_graph(graph: Any, op: str) -> None:
    """Refuse anything but an ArchGraph where an operator reads one (e.g. a torch module or None)."""
    if not isinstance(graph, ArchGraph):
        raise ConfigError(f"growth operator {op!r} works on an evo ArchGraph (evo.zoo.load(...) or "
                          f"evo.graph.from_module(net, (3, H, W))); got {type(graph).__name__}")


OPS: Registry[GrowthOp] = Registry("growth operator")


def register(cls: type[GrowthOp]) -> type[GrowthOp]:
    """Class decorator: register one instance of a GrowthOp subclass under its `name`."""
    OPS.add(cls.name, cls())
    return cls
