"""Function-preserving growth operators, registered by name: `apply(graph, name, site=..., **params)`."""

from __future__ import annotations

from typing import Any

from evo.graph.archgraph import ArchGraph
from evo.ops.base import OPS, Delta, GrowthOp, Site, check_graph, register

# Importing each operator module registers it.
from evo.ops import add_branch, add_classes, add_tap, deepen, scale_width, widen  # noqa: E402,F401  isort: skip


def list_ops() -> list[str]:
    return OPS.names()


def get_op(name: str) -> GrowthOp:
    return OPS.get(name)


def sites(graph: ArchGraph, name: str) -> list[Site]:
    """Where operator `name` applies in `graph` (JSON-safe dicts, usable as `site=`)."""
    op = OPS.get(name)
    check_graph(graph, op.name)
    return op.sites(graph)


def apply(graph: ArchGraph, name: str, site: Site | None = None, **params: Any) -> ArchGraph:
    """Apply operator `name` at `site` to a copy of `graph`; the parent is left untouched."""
    op = OPS.get(name)
    check_graph(graph, op.name)
    if site is None:
        found = op.sites(graph)
        if len(found) != 1:
            from evo.errors import InvalidSiteError

            raise InvalidSiteError(f"{name} applies at {len(found)} sites here; pass site= (see evo.ops.sites)")
        site = found[0]
    return op.apply(graph, site, **params)


def delta(graph: ArchGraph, name: str, site: Site, **params: Any) -> Delta:
    return OPS.get(name).delta(graph, site, **params)


__all__ = ["OPS", "Delta", "GrowthOp", "Site", "apply", "delta", "get_op", "list_ops", "register", "sites"]
