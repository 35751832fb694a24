"""The growth search: YAML spaces → Optuna (ask/tell) → Ray workers → the best feasible candidate is committed."""

from evo.search.space import SearchSpace, SpaceError, load_space, parse_space

__all__ = ["SearchSpace", "SpaceError", "load_space", "parse_space"]
