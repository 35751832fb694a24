"""Build a space's data stream the same way in the driver and in every worker (seeded, so identical)."""

from __future__ import annotations

import functools
import json

from evo.data import scenarios
from evo.errors import ConfigError
from evo.search.space import SearchSpace

_BUILDERS = {"class_incremental": scenarios.class_incremental, "data_incremental": scenarios.data_incremental,
             "mixed": scenarios.mixed, "domain_incremental": scenarios.domain_incremental}


def stream_for(space: SearchSpace | dict) -> scenarios.Stream:
    cfg = space.scenario if isinstance(space, SearchSpace) else space
    return _cached(json.dumps(cfg, sort_keys=True))


@functools.lru_cache(maxsize=4)
def _cached(cfg_json: str) -> scenarios.Stream:
    cfg = json.loads(cfg_json)
    kind = cfg.pop("kind", "class_incremental")
    source = cfg.pop("source")
    try:
        if kind == "domain_incremental":
            return _BUILDERS[kind](source if isinstance(source, list) else [source], **cfg)
        return _BUILDERS[kind](source, **cfg)
    except TypeError as e:  # an option the scenario does not take
        raise ConfigError(f"scenario: {e}; see evo.data.{kind} for its options") from None
