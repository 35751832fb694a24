"""Data sources, registered by name in SOURCES; `load_source` also accepts a folder or a .csv path."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from evo.data.sources import digits, fashion_mnist, folder, manifest  # noqa: F401  (registers the sources)
from evo.data.sources.base import SOURCES, Split
from evo.errors import ConfigError, DataError

BUILTIN = "builtin:"


def _takes_path(name: str) -> bool:
    return "path" in inspect.signature(SOURCES.get(name)).parameters


def builtin_names() -> list[str]:
    """Registered sources that need no path (datasets shipped by a package)."""
    return [n for n in SOURCES.names() if not _takes_path(n)]


def _resolve(source: str | os.PathLike, names: bool) -> tuple[str, dict[str, Any]]:
    """`builtin:NAME` → that dataset; a path that exists is a path (a folder → `folder`, a .csv →
    `csv`); a bare registered name (search spaces, Python) only when `names` and no such path exists."""
    builtins = ", ".join(BUILTIN + n for n in builtin_names())
    if isinstance(source, str) and source.startswith(BUILTIN):
        name = source[len(BUILTIN):]
        if name not in SOURCES or _takes_path(name):
            raise DataError(f"{source!r}: no built-in dataset {name!r}; built-in datasets: {builtins}")
        return name, {}
    path = Path(source)
    if path.exists():
        if path.is_dir():
            return "folder", {"path": path}
        if path.suffix.lower() == ".csv":
            return "csv", {"path": path}
        raise DataError(f"{path} is a file but not a .csv manifest; pass an image folder (one subfolder per class) "
                        "or a CSV of path,label rows")
    if path.suffix.lower() == ".csv":
        raise DataError(f"manifest {path} does not exist")
    if names and isinstance(source, str) and source in SOURCES:
        return source, {}  # a path-taking source (folder, csv) then needs its `path=` option
    raise DataError(f"{str(source)!r} is not an image folder or .csv manifest that exists; built-in datasets are "
                    f"named {builtins}")


def load_source(source: str | os.PathLike, names: bool = True, **options: Any) -> Split:
    """(train, test) ImageSets from `builtin:NAME`, an image folder or a CSV manifest (a path that exists
    always wins). `names=True` also accepts a bare built-in name such as `digits` (search spaces);
    the CLI passes False, so a typo or a missing folder is never silently a built-in dataset.

    Options go to the source function; an option it does not take is a ConfigError listing valid ones.
    """
    name, implied = _resolve(source, names)
    fn = SOURCES.get(name)
    kwargs = {**implied, **options}
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as e:
        valid = [p for p in inspect.signature(fn).parameters if p not in implied]
        raise ConfigError(f"data source {name!r}: {e}; valid options: {valid}") from None
    return fn(**kwargs)


__all__ = ["BUILTIN", "SOURCES", "Split", "builtin_names", "load_source"]
