"""Argument checks every layer shares, torch-free so that the CLI can refuse bad input before torch loads.

One owner for the words of each check: "NAME must be an integer >= LOW; got VALUE" reads the same
whether the Learner, a strategy option, a search space or `evo learn` raises it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from evo.errors import ConfigError, EvoError


def check_int(name: str, value: Any, low: int = 1, high: int | None = None,
              error: type[EvoError] = ConfigError) -> int:
    """`value` as an int if it is one (numpy ints too, bools not) in [low, high); else `error` naming it."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value >= high):
        upper = f" and < {high}" if high is not None else ""
        raise error(f"{name} must be an integer >= {low}{upper}; got {value!r}")
    return int(value)


def check_memory(memory: Any) -> int:
    """The Learner's exemplar memory: a number of images."""
    return check_int("Learner memory (exemplar images)", memory)
