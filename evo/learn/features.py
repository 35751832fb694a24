"""Which taps the closed-form head reads: the learning policy over `evo.graph.taps`' surgery.

`auto_taps` picks, by default, the last block output at stride 8 and at stride 16, each pooled to
4×4: the most accurate taps whose statistics keep an increment well under joint retraining's cost
(the experiment that chose them, and its figures, are in BENCHMARKS.md, "Incremental learning").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from evo.errors import ConfigError
from evo.graph.archgraph import ArchGraph
from evo.graph.taps import Tap, block_outputs, is_tapped, tap_graph

DEFAULT_LEVELS: tuple[tuple[int, int], ...] = ((8, 4), (16, 4))  # (stride, pooled grid side)


def auto_taps(graph: ArchGraph, levels: Sequence[tuple[int, int]] = DEFAULT_LEVELS) -> list[Tap]:
    """The last block output at each (stride, grid) level of `levels`.

    A network too shallow for those strides gets its two coarsest spatial levels (side >= 2)
    pooled to at most 4×4; one without spatial block outputs gets the head's current input.
    """
    _, height, _ = _chw(graph, graph.input)
    outs = [n for n in block_outputs(graph) if len(graph.shape(n)) == 3]
    taps = []
    for stride, grid in levels:
        side = math.ceil(height / stride)
        at = [n for n in outs if graph.shape(n)[1] == side]
        if at:
            taps.append(Tap(at[-1], min(grid, side)))
    if not taps:
        sides = sorted({graph.shape(n)[1] for n in outs if graph.shape(n)[1] >= 2})[:2]
        for side in sorted(sides, reverse=True):
            taps.append(Tap([n for n in outs if graph.shape(n)[1] == side][-1], min(4, side)))
    return taps or [Tap(graph.features, 1)]


def _chw(graph: ArchGraph, node: str) -> tuple[int, int, int]:
    shape = graph.shape(node)
    if len(shape) != 3:
        raise ConfigError(f"node {node!r} has shape {shape}; expected (channels, height, width)")
    return shape  # type: ignore[return-value]


def parse_taps(graph: ArchGraph, taps: str | Sequence[Tap | tuple[str, int] | str],
               levels: Sequence[tuple[int, int]] = DEFAULT_LEVELS) -> list[Tap]:
    """'auto' (`auto_taps` at `levels`), 'features' (the head's current input), 'auto+features' (both:
    the head then also reads the top of the network, so training through it reaches every layer above
    the coarsest tap), or a list of Tap / (node, grid) / node names."""
    if taps == "auto":
        return auto_taps(graph, levels)
    if taps == "features":
        return [Tap(graph.features, 1)]
    if taps == "auto+features":
        auto = auto_taps(graph, levels)
        return auto + [Tap(graph.features, 1)] if Tap(graph.features, 1) not in auto else auto
    if isinstance(taps, str) or not isinstance(taps, Sequence) or not taps:
        raise ConfigError("taps must be 'auto', 'features', 'auto+features' or a non-empty list of (node, grid); "
                          f"got {taps!r}")
    out = []
    for t in taps:
        if not isinstance(t, (Tap, str)) and not (isinstance(t, Sequence) and len(t) == 2):
            raise ConfigError(f"each tap must be a node name or a (node, grid) pair; got {t!r} in {taps!r}")
        tap = t if isinstance(t, Tap) else Tap(t) if isinstance(t, str) else Tap(*t)
        if tap.node not in graph:
            raise ConfigError(f"tap node {tap.node!r} is not in the graph; pick one of its nodes, e.g. "
                              f"{block_outputs(graph)[-3:]}")
        if isinstance(tap.grid, bool) or not isinstance(tap.grid, int) or tap.grid < 1:
            raise ConfigError(f"tap grid must be an int >= 1; got {tap.grid!r} for {tap.node!r}")
        out.append(tap)
    return out


__all__ = ["DEFAULT_LEVELS", "Tap", "auto_taps", "is_tapped", "parse_taps", "tap_graph"]
