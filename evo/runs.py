"""Run folders: layout, immutable model versions, lineage and what `evo resume` needs.

```
runs/<run>/
  config.json            resolved configuration (written once, at creation)
  optuna.journal         Optuna storage (embedded default)
  versions/<n>/          graph.json, weights.safetensors, meta.json, state.safetensors (memory, head statistics)
  lineage.json           networkx node-link graph of versions  } both derived from versions/*/meta.json
  metrics/rounds.csv     one row per committed version           } and rebuilt after every commit
  metrics/round_<n>.json everything measured in round n (candidates included)
```
Every write is atomic (temp + rename). A version folder appears whole or not at all, and the
lineage is rebuilt from the versions' meta.json, so a killed process loses no committed work.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import networkx as nx
import torch

from evo.errors import EvoError

VERSIONS = "versions"
STATE_FILE = "state.safetensors"
ROUNDS_CSV_FIELDS = ["version", "parent", "increment", "accuracy", "forgetting", "chosen", "flops", "seconds",
                     "joint_ratio", "params"]


class RunError(EvoError):
    """A run folder is missing, already exists, or is inconsistent."""


def write_json_atomic(path: Path, doc: Any) -> None:
    write_text_atomic(path, json.dumps(doc, indent=1, default=_json_default))


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(x: Any) -> Any:
    if hasattr(x, "to_dict"):
        return x.to_dict()
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"cannot write {type(x).__name__} as JSON")


class Run:
    """One run folder. `Run.create` starts a new one (refusing an existing folder); `Run.open` resumes one."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    # ---- lifecycle ----------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, config: dict[str, Any]) -> Run:
        run = cls(path)
        if run.path.exists() and any(run.path.iterdir()):
            raise RunError(f"run folder {run.path} already exists; continue it with `evo resume {run.path}` "
                           "or choose another --run-dir")
        run.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run.path / "config.json", {**config, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        return run

    @classmethod
    def open(cls, path: str | os.PathLike) -> Run:
        run = cls(path)
        if not (run.path / "config.json").is_file():
            raise RunError(f"{run.path} is not an evo run folder (no config.json); start one with `evo launch`")
        run.cleanup_partial()
        run.rebuild_lineage()
        return run

    @property
    def config(self) -> dict[str, Any]:
        return json.loads((self.path / "config.json").read_text())

    @property
    def journal_path(self) -> Path:
        return self.path / "optuna.journal"

    def cleanup_partial(self) -> list[str]:
        """Remove temp folders and files a killed process left behind; committed versions are untouched."""
        removed = []
        for p in list(self.path.rglob(".*")):
            if p.name.startswith(".") and p.exists() and (p.is_dir() or p.suffix != ".journal"):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(str(p))
        return removed

    # ---- versions -----------------------------------------------------------------------------
    def version_dir(self, n: int) -> Path:
        return self.path / VERSIONS / str(n)

    def versions(self) -> list[int]:
        root = self.path / VERSIONS
        if not root.is_dir():
            return []
        return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / "meta.json").is_file())

    def latest(self) -> int | None:
        v = self.versions()
        return v[-1] if v else None

    def version_meta(self, n: int) -> dict[str, Any]:
        return json.loads((self.version_dir(n) / "meta.json").read_text())

    def load_version(self, n: int | None = None):
        """(graph, meta, state tensors) of version n (default: the latest)."""
        from safetensors.torch import load_file

        import evo.graph as eg

        n = self.latest() if n is None else n
        if n is None:
            raise RunError(f"run {self.path} has no committed version yet")
        d = self.version_dir(n)
        state = load_file(str(d / STATE_FILE)) if (d / STATE_FILE).is_file() else {}
        return eg.load(d), self.version_meta(n), state

    def commit_version(self, graph, meta: dict[str, Any], state: dict[str, torch.Tensor] | None = None) -> int:
        """Write the next version atomically and record it in the lineage; returns its number."""
        from safetensors.torch import save_file

        import evo.graph as eg

        latest = self.latest()
        n = 0 if latest is None else latest + 1
        meta = {"version": n, "parent": latest, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta}
        meta["version"] = n
        tmp_root = self.path / VERSIONS
        tmp_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{n}.", dir=tmp_root))
        try:
            eg.save(graph, staging / "model", extra_files={"meta.json": meta})
            if state:
                save_file({k: v.detach().contiguous().cpu() for k, v in state.items()},
                          str(staging / "model" / STATE_FILE))
            os.replace(staging / "model", self.version_dir(n))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.rebuild_lineage()
        return n

    # ---- lineage and metrics ------------------------------------------------------------------
    def lineage(self) -> nx.DiGraph:
        lin = nx.DiGraph()
        for n in self.versions():
            meta = self.version_meta(n)
            lin.add_node(n, **{k: meta.get(k) for k in ("increment", "ops", "metrics", "cost", "created", "chosen",
                                                         "classes")})
            if meta.get("parent") is not None:
                lin.add_edge(meta["parent"], n, ops=meta.get("ops", []))
        return lin

    def rebuild_lineage(self) -> None:
        """lineage.json and metrics/rounds.csv derive from versions/*/meta.json: a crash between writes loses nothing."""
        write_json_atomic(self.path / "lineage.json", nx.node_link_data(self.lineage(), edges="edges"))
        self._write_rounds_csv()

    def _write_rounds_csv(self) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=ROUNDS_CSV_FIELDS)
        w.writeheader()
        for n in self.versions():
            meta = self.version_meta(n)
            metrics, cost = meta.get("metrics") or {}, meta.get("cost") or {}
            w.writerow({"version": n, "parent": meta.get("parent"), "increment": meta.get("increment"),
                        "accuracy": metrics.get("accuracy"), "forgetting": metrics.get("forgetting"),
                        "chosen": meta.get("chosen"), "flops": cost.get("flops"), "seconds": cost.get("seconds"),
                        "joint_ratio": cost.get("joint_ratio"), "params": meta.get("params")})
        write_text_atomic(self.path / "metrics" / "rounds.csv", buf.getvalue())

    def rounds_table(self) -> list[dict[str, str]]:
        p = self.path / "metrics" / "rounds.csv"
        if not p.is_file():
            return []
        return list(csv.DictReader(p.open()))

    def write_round(self, n: int, doc: dict[str, Any]) -> None:
        write_json_atomic(self.path / "metrics" / f"round_{n}.json", doc)
