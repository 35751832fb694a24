"""scale_width: Net2WiderNet on every channel group after a block, by one factor (function-preserving).

One `widen` adds units to one channel group, and a network that ran out of capacity rarely lacks it in
one layer only: a narrow CNN learning class after class needs every stage wider, as EfficientNet's
width multiplier scales all stages together. This operator is that compound move in one step, so a
search can propose it as one candidate instead of needing as many ops per round as the net has groups.

A site is `{"after": <node>}`: the model's input or a backbone block output. Every channel group that
`widen` can widen exactly and whose producers all lie after that node is widened by `factor` (each with
its own seed, so the copies of different groups break symmetry independently); `init` is `widen`'s
(copies, or fresh units whose outputs start at weight 0; `noise` has no effect on fresh units). Groups
before the node are left alone, which keeps a frozen part (a latent store's cut) untouched. Exactness
is `widen`'s, per group.
"""

from __future__ import annotations

from typing import Any, Literal

import networkx as nx

from evo.errors import ConfigError, InvalidSiteError
from evo.graph.archgraph import ArchGraph
from evo.graph.taps import backbone_outputs
from evo.ops._channels import ChannelSpaces
from evo.ops.base import GrowthOp, Site, register
from evo.ops.widen import Widen


@register
class ScaleWidth(GrowthOp):
    name = "scale_width"
    defaults = {"factor": 1.5, "noise": 0.0, "seed": 0, "init": "copy"}

    def sites(self, graph: ArchGraph) -> list[Site]:
        groups = _widenable(graph)  # one channel analysis for every candidate site
        return [{"after": n} for n in [graph.input, *backbone_outputs(graph)] if _groups_after(graph, n, groups)]

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        merged = super().check_params(params)
        try:
            Widen().check_params({k: merged[k] for k in ("factor", "noise", "seed", "init")})
        except ConfigError as e:  # the same rules, named for this operator
            raise ConfigError(str(e).replace("widen ", "scale_width ", 1)) from None
        return merged

    def check_site(self, graph: ArchGraph, site: Site) -> Site:
        if not isinstance(site, dict) or set(site) != {"after"} or not isinstance(site["after"], str):
            raise InvalidSiteError(f"a scale_width site is {{'after': <input or block output>}}, got {site!r}; "
                                   "list valid sites with evo.ops.sites(graph, 'scale_width')")
        return super().check_site(graph, site)

    def grow(self, graph: ArchGraph, site: Site, factor: float = 1.5, noise: float = 0.0, seed: int = 0,
             init: Literal["copy", "fresh"] = "copy") -> None:
        widen = Widen()
        for i, group in enumerate(_groups_after(graph, site["after"], _widenable(graph))):  # each widen sets the shapes it changes
            widen.grow(graph, {"group": group}, factor=factor, noise=noise, seed=seed + 7919 * i, init=init)


def _widenable(graph: ArchGraph) -> list[list[str]]:
    """Every channel group `widen` can widen exactly: its producers in topological order."""
    return list(ChannelSpaces(graph).groups().values())


def _groups_after(graph: ArchGraph, node: str, groups: list[list[str]]) -> list[str]:
    """The groups (named by their first producer) whose producers all lie after `node`: a group tied
    across it (a residual trunk that starts before it) stays as it is."""
    after = nx.descendants(graph.g, node)
    return [producers[0] for producers in groups if all(p in after for p in producers)]
