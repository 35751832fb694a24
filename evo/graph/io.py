"""Save and load an ArchGraph as `graph.json` + `weights.safetensors` (no pickle anywhere).

Writes go to a temporary sibling folder that is renamed into place, so a reader never sees half a model.
Loading checks the JSON's structure, the DAG, every tensor's presence, shape, dtype and finiteness.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from evo.errors import EvoError, GraphError, WeightsError
from evo.fsutil import mark_folder, marked_folder, swap_dir, temp_dir
from evo.graph.archgraph import ArchGraph
from evo.graph.taps import LEGACY_TAP_SOURCE, TAP_ROLE

FORMAT = "evo.archgraph"
VERSION = 1
GRAPH_FILE = "graph.json"
WEIGHTS_FILE = "weights.safetensors"
MODEL_MARKER = ".evo-model.json"  # lists the files `save` wrote: all that a later save may replace
_LEGACY_FILES = {GRAPH_FILE, WEIGHTS_FILE, "meta.json", "report.json", "state.safetensors"}  # before markers


def graph_to_json(graph: ArchGraph) -> dict[str, Any]:
    nodes = [{"name": n, "op": graph.op(n), "attrs": graph.attrs(n), "source": graph.node(n)["source"],
              **({"role": graph.node(n)["role"]} if graph.node(n).get("role") else {}),
              "params": sorted(graph.params(n))} for n in graph.nodes()]
    edges = [{"src": u, "dst": v, "index": d["index"]} for u, v, d in graph.g.edges(data=True)]
    return {"format": FORMAT, "version": VERSION, "meta": graph.meta, "nodes": nodes, "edges": edges}


def graph_from_json(doc: Any, tensors: dict[str, torch.Tensor], where: str = "graph.json") -> ArchGraph:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise GraphError(f"{where} is not an evo graph (expected \"format\": \"{FORMAT}\")")
    if doc.get("version") != VERSION:
        raise GraphError(f"{where} has format version {doc.get('version')!r}; this evo reads version {VERSION}")
    for key, kind in (("nodes", list), ("edges", list), ("meta", dict)):
        if not isinstance(doc.get(key), kind):
            raise GraphError(f"{where}: key {key!r} must be a {kind.__name__}")
    graph = ArchGraph(meta=doc["meta"])
    used: set[str] = set()
    for i, nd in enumerate(doc["nodes"]):
        if not isinstance(nd, dict) or not isinstance(nd.get("name"), str) or not isinstance(nd.get("op"), str):
            raise GraphError(f"{where}: node #{i} needs string 'name' and 'op'")
        name = nd["name"]
        if not isinstance(nd.get("attrs", {}), (dict, type(None))):
            raise GraphError(f"{where}: node #{i} ({name!r}): 'attrs' must be an object; got {nd['attrs']!r}")
        declared = nd.get("params", [])
        if not isinstance(declared, list) or not all(isinstance(p, str) for p in declared):
            raise GraphError(f"{where}: node #{i} ({name!r}): 'params' must be a list of tensor names; got {declared!r}")
        params = {}
        for p in declared:
            key = f"{name}.{p}"
            if key not in tensors:
                raise WeightsError(f"weights file lacks tensor {key!r} that {where} declares; the files do not match")
            params[p] = tensors[key]
            used.add(key)
        role = nd.get("role")
        if role is not None and not isinstance(role, str):
            raise GraphError(f"{where}: node #{i} ({name!r}): 'role' must be a string; got {role!r}")
        if role is None and str(nd.get("source") or "").startswith(LEGACY_TAP_SOURCE):
            role = TAP_ROLE  # saved before node roles: tap nodes were marked by their source prefix
        try:
            graph.add_node(name, nd["op"], nd.get("attrs") or {}, params, source=nd.get("source"), role=role)
        except EvoError as e:
            raise GraphError(f"{where}: node #{i}: {e}") from None
    for i, ed in enumerate(doc["edges"]):
        if not isinstance(ed, dict) or not {"src", "dst"} <= set(ed):
            raise GraphError(f"{where}: edge #{i} needs 'src' and 'dst'")
        if ed["src"] not in graph or ed["dst"] not in graph:
            missing = ed["src"] if ed["src"] not in graph else ed["dst"]
            raise GraphError(f"{where}: edge #{i} {ed['src']!r} -> {ed['dst']!r} is dangling: no node {missing!r}")
        index = ed.get("index", 0)
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise GraphError(f"{where}: edge #{i} {ed['src']!r} -> {ed['dst']!r}: 'index' must be an integer >= 0 "
                             f"(the argument position); got {index!r}")
        graph.add_edge(ed["src"], ed["dst"], index)
    extra = sorted(set(tensors) - used)
    if extra:
        raise WeightsError(f"weights file has tensors {extra[:5]} that {where} does not declare; the files do not match")
    return graph.validate()


def save(graph: ArchGraph, directory: str | os.PathLike, extra_files: dict[str, Any] | None = None) -> Path:
    """Write graph.json + weights.safetensors (+ JSON `extra_files`) atomically into `directory`."""
    if not isinstance(graph, ArchGraph):
        raise GraphError(f"save writes an evo ArchGraph; got {type(graph).__name__}")
    _check_dir(directory, "save")
    graph.validate()
    target = Path(directory)
    _check_replaceable(target)  # before writing anything; again just before the swap
    try:
        tmp = temp_dir(target.parent, target.name)
    except OSError as e:
        raise _unwritable(target, e) from None
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in graph.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        (tmp / GRAPH_FILE).write_text(json.dumps(graph_to_json(graph), indent=1))
        for fname, doc in (extra_files or {}).items():
            (tmp / fname).write_text(json.dumps(doc, indent=1))
        mark_folder(tmp, MODEL_MARKER, "evo.graph.save")
        _check_replaceable(target)
        swap_dir(tmp, target)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _unwritable(target, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _check_replaceable(target: Path) -> None:
    """`save` replaces a folder whole, so an existing one must be empty or evo's: its marker lists exactly
    the files it holds. Folders saved before markers existed hold only the files evo writes there."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise GraphError(f"cannot save the model to {target}: it is a file or a link; pass a folder path")
    if not target.exists() or not any(target.iterdir()):
        return
    ours = marked_folder(target, MODEL_MARKER)
    if ours is None:
        ours = GRAPH_FILE in {p.name for p in target.iterdir()} and all(
            p.name in _LEGACY_FILES and p.is_file() and not p.is_symlink() for p in target.iterdir())
    if not ours:
        raise GraphError(f"cannot save the model to {target}: that folder holds more than a model evo.graph.save "
                         "wrote there (another program's files, files added since, or a run's version), and saving "
                         "replaces the folder whole; pass a new (or empty) folder, or move its files away")


def _unwritable(target: Path, e: OSError) -> GraphError:
    return GraphError(f"cannot save the model to {target} ({e.strerror or e}); choose a folder path where "
                      "evo can write")


def _check_dir(directory: Any, what: str) -> None:
    if not isinstance(directory, (str, os.PathLike)):
        raise GraphError(f"{what} needs a model folder path (a str or os.PathLike); got {type(directory).__name__} "
                         f"{directory!r}")


def load(directory: str | os.PathLike) -> ArchGraph:
    """Read a graph saved by `save`; every inconsistency raises GraphError or WeightsError naming the file."""
    _check_dir(directory, "load")
    d = Path(directory)
    gpath, wpath = d / GRAPH_FILE, d / WEIGHTS_FILE
    for p in (gpath, wpath):
        if not p.is_file():
            raise GraphError(f"{p} not found; a saved evo model folder holds {GRAPH_FILE} and {WEIGHTS_FILE}")
    try:
        doc = json.loads(gpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GraphError(f"{gpath} is not valid JSON ({e}); restore it from a good copy") from None
    try:
        tensors = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{wpath} is not a readable safetensors file ({e}); the file is corrupt") from None
    for k, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise WeightsError(f"{wpath}: tensor {k!r} holds NaN or infinite values; this model is unusable")
    return graph_from_json(doc, tensors, where=str(gpath))
