"""The architecture graph: import, compile, shape inference, cost, save/load."""

from evo.graph.archgraph import ArchGraph
from evo.graph.compile import EvoNet
from evo.graph.io import load, save
from evo.graph.trace import from_module

__all__ = ["ArchGraph", "EvoNet", "from_module", "load", "save"]
