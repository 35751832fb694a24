"""evo.active: corrections (durable log, rank-one update/undo of the closed-form head, the regression
guard) and query strategies. Imports evo.learn, evo.runs, evo.data, evo.graph, evo.ops; never evo.search
or evo.serve, and evo.learn never imports it."""

from __future__ import annotations

import importlib
from typing import Any

# names load on first use, so that the CLI's parser (which lists QUERIES) does not import torch
_LAZY_NAMES = {**dict.fromkeys(("CorrectionRecord", "CorrectionResult", "Corrections", "Prediction", "Suggestion"),
                               "evo.active.engine"),
               "CorrectionError": "evo.active.errors", "QUERIES": "evo.active.queries", "RunBusyError": "evo.runs"}
__all__ = sorted(_LAZY_NAMES)


def __getattr__(name: str) -> Any:
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    raise AttributeError(f"module 'evo.active' has no attribute {name!r}")
