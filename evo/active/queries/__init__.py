"""Query strategies for `suggest`: which unlabelled images are most worth a person's look.

Each is a function `(proba (n, C), features (n, d), k, rng) -> (indices, scores)` returning the k
chosen pool indices, best first, registered by name in `QUERIES` (one file each).
"""

from evo.active.queries import diverse, entropy, margin, random  # noqa: F401, E402  (register the strategies)
from evo.active.queries.base import QUERIES, QueryFn, register_query

__all__ = ["QUERIES", "QueryFn", "register_query"]
