"""The model zoo: `evo.zoo.load(name, pretrained=..., input_size=...)` → ArchGraph."""

from __future__ import annotations

import inspect
import os
import reprlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evo.checks import check_int
from evo.errors import ConfigError, UnknownNameError
from evo.graph.archgraph import ArchGraph
from evo.zoo import efficientnet_lite, small_cnn, torchvision_models  # noqa: F401  registers models
from evo.zoo.registry import MODELS, register_model


def list_models() -> list[str]:
    return MODELS.names()


def load(name: str, pretrained: bool = False, input_size: int | None = None, **kwargs: Any) -> ArchGraph:
    """Build zoo model `name` as an ArchGraph; unset options fall through to the model's defaults."""
    entry = MODELS.get(name)
    if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1):
        raise ConfigError(f"input_size for {name} must be a positive integer (pixels); got {input_size!r}")
    if not isinstance(pretrained, bool):
        raise ConfigError(f"pretrained for {name} must be True or False; got {pretrained!r}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    # options every zoo model shares, checked here once rather than left to torch's own errors
    if "num_classes" in kwargs:
        check_int(f"zoo model {name!r} option num_classes (head outputs)", kwargs["num_classes"])
    if "seed" in kwargs:
        check_int(f"zoo model {name!r} option seed", kwargs["seed"], 0)
    accepted = [n for n, p in inspect.signature(entry.factory).parameters.items()
                if p.kind is not p.VAR_KEYWORD and n not in ("pretrained", "input_size") and not n.startswith("_")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(f"zoo model {name!r} takes no option(s) {unknown}; its options: {accepted}")
    graph = entry.factory(pretrained=pretrained, input_size=entry.default_input if input_size is None else input_size, **kwargs)
    graph.meta.setdefault("zoo", name)
    return graph


def resolve(spec: str | os.PathLike, input_size: int | None = None, pretrained: bool = True,
            options: dict[str, Any] | None = None) -> ArchGraph:
    """A saved model folder, or a zoo name (pretrained where the zoo ships weights) built with `options`
    (e.g. small_cnn's `width`).

    The one way the CLI, the search and `evo learn` turn a user's model argument into a graph.
    """
    import evo.graph as eg

    if not isinstance(spec, (str, os.PathLike)):
        raise ConfigError(f"a model is a zoo name ({', '.join(list_models())}) or a saved model folder; got "
                          f"a {type(spec).__name__}")
    if options is not None and not isinstance(options, Mapping):
        raise ConfigError(f"model options must be a mapping of option name to value (e.g. {{'width': 4}}); got "
                          f"{type(options).__name__} {reprlib.repr(options)}")
    reserved = sorted(set(options or {}) & {"pretrained", "input_size"})
    if reserved:
        raise ConfigError(f"model options {reserved} are set as model.pretrained / model.input_size, not under "
                          "model.options")
    path = Path(spec)
    if path.is_dir():
        if options:
            raise ConfigError(f"model options {sorted(options)} apply to zoo models only; {spec} is a saved model "
                              "folder, built already")
        return eg.load(path)
    name = str(spec)
    if name in MODELS:
        entry = MODELS.get(name)
        return load(name, pretrained=pretrained and entry.has_pretrained, input_size=input_size, **(options or {}))
    raise UnknownNameError(f"{name!r} is neither a saved model folder nor a zoo model; zoo models: "
                           f"{', '.join(list_models())}")


__all__ = ["MODELS", "list_models", "load", "register_model", "resolve"]
