"""evo: keep a trained CNN learning by function-preserving growth, incremental learning and corrections.

Subpackages load on first use (`evo.zoo`, `evo.ops`, ...), so `import evo` stays cheap for the CLI.
"""

from __future__ import annotations

import importlib
from typing import Any

from evo.errors import EvoError

__version__ = "0.1.0"
_SUBPACKAGES = {"graph", "ops", "zoo", "data", "learn", "search", "active", "runs"}
_LAZY_NAMES = {"Learner": "evo.learn"}
__all__ = ["EvoError", "__version__", *sorted(_SUBPACKAGES), *sorted(_LAZY_NAMES)]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"evo.{name}")
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    raise AttributeError(f"module 'evo' has no attribute {name!r}")
