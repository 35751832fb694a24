"""Run folders: layout, immutable model versions, lineage, one writer at a time, and what `evo resume` needs.

```
runs/<run>/
  run.json               the marker: {"format": "evo-run", "version": 1, "kind": "search" | "learn"}
  config.json            resolved configuration (written once, at creation)
  .evo-lock              the writer lock (an OS file lock; holds the writer's pid and command)
  optuna.journal         Optuna storage (embedded default)
  versions/<n>/          graph.json, weights.safetensors, meta.json, state.safetensors (memory, head statistics)
  lineage.json           networkx node-link graph of versions  } both derived from versions/*/meta.json,
  metrics/rounds.csv     one row per committed version           } rewritten by the writer after each commit
  metrics/round_<n>.json everything measured in round n (candidates included); a copy of the
                         round.json committed in its version's folder
```
A folder is a run only if it holds `run.json`; anything else is refused, never cleaned. Opening a
run to read (`evo status`) writes nothing: lineage and tables are derived in memory. Writers
(`learn`, `launch`, `resume`, `correct`, `serve`) hold `Run.lock`; on taking it they remove only
evo's own temporary names (`evo.fsutil.TMP_PREFIX`) at the top of the run's own folders. A version
folder is fsynced and renamed into place, so it appears whole or not at all. What is written after
that rename (lineage, tables, the round's metrics) derives from the committed folders, so a writer
that takes over from a killed one re-derives it (`Run.repair`): a kill between the two loses nothing.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx

from evo.errors import EvoError
from evo.fsutil import (
    TMP_PREFIX,
    fsync_dir,
    fsync_tree,
    is_evo_temp,
    remove_evo_temps,
    temp_dir,
    write_json_atomic,
    write_text_atomic,
)

if TYPE_CHECKING:  # torch only for annotations: reading a run (`evo status`) does not import it
    import torch

VERSIONS = "versions"
STATE_FILE = "state.safetensors"
ROUND_FILE = "round.json"  # a search version's round metrics, committed with it (metrics/round_<i>.json copies it)
MARKER = "run.json"
RUN_FORMAT = "evo-run"
RUN_FORMAT_VERSION = 1
LOCK_FILE = ".evo-lock"
ROUNDS_CSV_FIELDS = ["version", "parent", "increment", "accuracy", "forgetting", "chosen", "flops", "seconds",
                     "joint_ratio", "params"]

__all__ = ["MARKER", "Run", "RunBusyError", "RunError", "is_run", "write_json_atomic", "write_text_atomic"]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# meta.json fields that readers index or do arithmetic on: a wrong type there is damage, not data
_META_FIELDS: dict[str, Any] = {
    "classes": lambda v: isinstance(v, list),
    "increment": _is_int,
    "parent": _is_int,
    "params": _is_int,
    "ops": lambda v: isinstance(v, list),
    "metrics": lambda v: isinstance(v, dict),
}


class RunError(EvoError):
    """A run folder is missing, already exists, or is inconsistent."""


RESTORE = "restore the run folder from a backup"


def read_json_object(path: Path, what: str, fix: str) -> dict[str, Any]:
    """A JSON object read from a run's file; unreadable, or not an object: a RunError naming the file, `what`
    it should hold and the `fix`."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"{path} is unreadable ({e}); {fix}") from None
    if not isinstance(doc, dict):
        raise RunError(f"{path} is not {what} (a JSON object); {fix}")
    return doc


class RunBusyError(RunError):
    """Another process is writing to the run (it holds the run's writer lock)."""


def is_run(path: str | os.PathLike) -> bool:
    """Whether `path` is an evo run folder (it carries the `run.json` marker)."""
    return (Path(path) / MARKER).is_file()


_HELD: dict[str, int] = {}  # runs whose lock this process holds (re-entrant within one process)


class Run:
    """One run folder. `Run.create` starts a new one (refusing an existing folder); `Run.open` opens one."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.took_over: dict[str, Any] | None = None  # the holder of a lock left by a killed process

    # ---- lifecycle ----------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, config: dict[str, Any], kind: str = "search") -> Run:
        """A new run at `path`: a missing or empty folder. The marker is published exclusively, so of
        two processes creating the same run one wins and the other gets a RunError."""
        run = cls(path)
        check_new_run_dir(run.path)
        run.path.mkdir(parents=True, exist_ok=True)
        created = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_json_atomic(run.path / "config.json", {**config, "created": created})
        tmp = run.path / f"{TMP_PREFIX}{MARKER}"
        tmp.write_text(json.dumps({"format": RUN_FORMAT, "version": RUN_FORMAT_VERSION, "kind": kind,
                                   "created": created}, indent=1))
        try:
            os.link(tmp, run.path / MARKER)  # fails if another process published its marker first
        except FileExistsError:
            raise RunError(f"run folder {run.path} was just created by another process; choose another "
                           "--run-dir") from None
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(run.path)
        return run

    @classmethod
    def open(cls, path: str | os.PathLike) -> Run:
        """Open an existing run. Writes nothing: take `lock` before changing it."""
        run = cls(path)
        if not run.path.exists():
            raise RunError(f"run folder {run.path} does not exist")
        if not run.path.is_dir():
            raise RunError(f"{run.path} is a file, not an evo run folder")
        if not (run.path / MARKER).is_file():
            raise RunError(f"{run.path} is not an evo run folder (it has no {MARKER}); start one with `evo launch` "
                           "or `evo learn`")
        try:
            marker = json.loads((run.path / MARKER).read_text())
        except (OSError, ValueError) as e:
            raise RunError(f"{run.path / MARKER} is unreadable ({e}); it is not a usable evo run") from None
        if not isinstance(marker, dict) or marker.get("format") != RUN_FORMAT:
            raise RunError(f"{run.path / MARKER} is not an evo run marker (format {RUN_FORMAT!r})")
        if marker.get("version") != RUN_FORMAT_VERSION:
            raise RunError(f"{run.path} has run format version {marker.get('version')!r}; this evo reads "
                           f"version {RUN_FORMAT_VERSION}")
        return run

    @property
    def kind(self) -> str:
        return str(json.loads((self.path / MARKER).read_text()).get("kind", "search"))

    @property
    def config(self) -> dict[str, Any]:
        """The run's configuration (config.json, written atomically at creation)."""
        return read_json_object(self.path / "config.json", "a run configuration",
                                "restore it from a backup or start a new run")

    @property
    def journal_path(self) -> Path:
        return self.path / "optuna.journal"

    # ---- the writer lock ----------------------------------------------------------------------
    @contextmanager
    def lock(self, command: str, wait: float = 0.0) -> Iterator[Run]:
        """Hold the run's writer lock for the block. Another holder → RunBusyError naming its pid and
        command (after waiting up to `wait` seconds). The lock is an OS file lock, released by the
        kernel when its holder dies, so a lock left by a killed process is simply taken over
        (`self.took_over` then says whose it was). Re-entrant within one process."""
        key = str(self.path.resolve())
        if _HELD.get(key):
            _HELD[key] += 1
            try:
                yield self
            finally:
                _HELD[key] -= 1
            return
        try:
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunError(f"run folder {self.path} cannot be written ({e.strerror or e}); `evo {command}` writes to "
                           "it: make it writable, or work on a copy") from None
        deadline = time.monotonic() + max(wait, 0.0)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise RunBusyError(self._busy_message(fd)) from None
                    time.sleep(0.05)
            previous = _read_holder(fd)
            self.took_over = previous or None
            holder = {"pid": os.getpid(), "command": command, "host": socket.gethostname(),
                      "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
            _HELD[key] = 1
            try:
                self.cleanup_partial()
                if self.took_over:
                    self.repair()
                yield self
            finally:
                _HELD.pop(key, None)
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _busy_message(self, fd: int) -> str:
        h = _read_holder(fd)
        who = f"pid {h.get('pid')} (`evo {h.get('command')}`, since {h.get('since')})" if h else "another process"
        return (f"run {self.path} is being written by {who}; wait for it to finish (or stop it), then try again. "
                "One writer at a time keeps versions and lineage true")

    def cleanup_partial(self) -> list[str]:
        """Remove evo's own temporary files and folders a killed writer left at the top of the run's
        folders; committed versions and every other file are untouched. Call only while holding the lock."""
        removed = remove_evo_temps(self.path)
        for sub in (VERSIONS, "metrics", "latents"):
            removed += remove_evo_temps(self.path / sub)
        cands = self.path / "candidates"
        if cands.is_dir():
            removed += remove_evo_temps(cands)
            for rd in cands.iterdir():
                if rd.is_dir() and not rd.is_symlink() and rd.name.startswith("round-"):
                    removed += remove_evo_temps(rd)
        return removed

    def repair(self) -> list[str]:
        """Re-derive the files a writer killed between a commit and its bookkeeping left stale or missing:
        lineage.json and metrics/rounds.csv (from every meta.json), and each search round's
        metrics/round_<i>.json (from the round.json committed with its version). Returns the rounds
        restored. Call only while holding the lock."""
        restored, versions = [], self.versions()
        for n in versions:
            src = self.version_dir(n) / ROUND_FILE
            index = self.version_meta(n).get("increment")
            if not src.is_file() or index is None:
                continue
            dst = self.path / "metrics" / f"round_{index}.json"
            try:
                current = json.loads(dst.read_text()).get("version")
            except (OSError, ValueError, AttributeError):
                current = None
            if current != n:
                self._publish_round(n, index, json.loads(src.read_text()))
                restored.append(dst.name)
        if versions:
            self.rebuild_lineage()
        return restored

    def _publish_round(self, n: int, index: int, round_doc: dict[str, Any]) -> None:
        """metrics/round_<index>.json: the round.json committed with version `n`, with that version's number."""
        self.write_round(index, {**round_doc, "version": n})

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
        """Version n's meta.json, checked where readers rely on its shape (a damaged file is a RunError)."""
        path = self.version_dir(n) / "meta.json"
        doc = read_json_object(path, "a version's metadata", RESTORE)
        for key, ok in _META_FIELDS.items():
            if doc.get(key) is not None and not ok(doc[key]):
                raise RunError(f"{path}: {key!r} has the wrong type ({type(doc[key]).__name__}); {RESTORE}")
        return doc

    def load_version(self, n: int | None = None):
        """(graph, meta, state tensors) of version n (default: the latest)."""
        from safetensors.torch import load_file

        import evo.graph as eg

        n = self.latest() if n is None else n
        if n is None:
            raise RunError(f"run {self.path} has no committed version yet")
        if n not in self.versions():
            raise RunError(f"run {self.path} has no version {n}; its versions are {self.versions()}")
        d = self.version_dir(n)
        try:
            state = load_file(str(d / STATE_FILE)) if (d / STATE_FILE).is_file() else {}
        except Exception as e:  # safetensors raises its own error type for a truncated or foreign file
            raise RunError(f"{d / STATE_FILE} is damaged ({str(e)[:120]}); {RESTORE}") from None
        return eg.load(d), self.version_meta(n), state

    def commit_version(self, graph, meta: dict[str, Any], state: dict[str, torch.Tensor] | None = None,
                       extra_dirs: dict[str, Path] | None = None, round_doc: dict[str, Any] | None = None) -> int:
        """Write the next version atomically and durably, and record it in the lineage; returns its number.

        `extra_dirs` {name: folder}: flat folders whose files become `versions/<n>/<name>/` (hard-linked
        when possible), so they appear exactly with the version (the latent store's part of it).
        `round_doc`: a search round's metrics, committed as `round.json` and copied to
        metrics/round_<increment>.json (with the version number) once the version is in place.
        Holds the writer lock for the commit. `meta["parent"]`, when given, must be the latest version:
        a version trained from an older one would make the lineage false."""
        from safetensors.torch import save_file

        import evo.graph as eg

        with self.lock(meta.get("command", "commit")):
            latest = self.latest()
            if "parent" in meta and meta["parent"] != latest:
                raise RunError(f"run {self.path}: version {latest} was committed after this work started from "
                               f"version {meta['parent']}; its result would skip that version. Run it again")
            n = 0 if latest is None else latest + 1
            meta = {"version": n, "parent": latest, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta}
            meta["version"] = n
            staging = temp_dir(self.path / VERSIONS, str(n))
            try:
                eg.save(graph, staging / "model", extra_files={"meta.json": meta})
                if round_doc is not None:
                    write_json_atomic(staging / "model" / ROUND_FILE, round_doc)
                if state:
                    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()},
                              str(staging / "model" / STATE_FILE))
                for name, src in (extra_dirs or {}).items():
                    _link_files(Path(src), staging / "model" / name)
                fsync_tree(staging / "model")
                os.rename(staging / "model", self.version_dir(n))  # never replaces an existing version
                fsync_dir(self.path / VERSIONS)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            self.rebuild_lineage()
            if round_doc is not None and meta.get("increment") is not None:
                self._publish_round(n, meta["increment"], round_doc)
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
        """lineage.json and metrics/rounds.csv derive from versions/*/meta.json (writers only)."""
        write_json_atomic(self.path / "lineage.json", nx.node_link_data(self.lineage(), edges="edges"))
        write_text_atomic(self.path / "metrics" / "rounds.csv", self.rounds_csv())

    def rounds_csv(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=ROUNDS_CSV_FIELDS)
        w.writeheader()
        for row in self.rounds_table():
            w.writerow(row)
        return buf.getvalue()

    def rounds_table(self) -> list[dict[str, Any]]:
        """One row per committed version, derived from the versions' meta.json (nothing is written)."""
        rows = []
        for n in self.versions():
            meta = self.version_meta(n)
            metrics, cost = meta.get("metrics") or {}, meta.get("cost") or {}
            rows.append({"version": n, "parent": meta.get("parent"), "increment": meta.get("increment"),
                         "accuracy": metrics.get("accuracy"), "forgetting": metrics.get("forgetting"),
                         "chosen": meta.get("chosen"), "flops": cost.get("flops"), "seconds": cost.get("seconds"),
                         "joint_ratio": cost.get("joint_ratio"), "params": meta.get("params")})
        return rows

    def write_round(self, n: int, doc: dict[str, Any]) -> None:
        write_json_atomic(self.path / "metrics" / f"round_{n}.json", doc)


def _link_files(src: Path, dst: Path) -> None:
    """`dst` gets every file of flat folder `src`: hard links (no copy), or copies across file systems."""
    if not src.is_dir():
        raise RunError(f"{src} is not a folder; it cannot be committed with the version")
    dst.mkdir()
    for f in src.iterdir():
        if is_evo_temp(f.name) or not f.is_file():
            continue
        try:
            os.link(f, dst / f.name)
        except OSError:
            shutil.copy2(f, dst / f.name)


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a name that is one folder under runs/, nothing more


def check_run_name(name: str, where: str, error: type[EvoError] = RunError) -> None:
    """A name that becomes the folder runs/NAME must be one plain folder name: no path, nothing hidden."""
    if not RUN_NAME.fullmatch(name):
        raise error(f"{where}: name {name!r} would name the run folder runs/NAME; use a plain name "
                       "(letters, digits, '.', '_', '-') or give --run-dir")


def check_new_run_dir(path: Path) -> None:
    """A new run needs a missing or empty folder; a file or a non-empty folder is refused."""
    if path.exists() and not path.is_dir():
        raise RunError(f"--run-dir {path} is a file; name a new folder for the run")
    above = next((p for p in path.absolute().parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise RunError(f"--run-dir {path} lies under {above}, which is a file; name a folder elsewhere")
    if path.is_dir() and any(path.iterdir()):
        hint = f"continue it with `evo resume {path}` or " if is_run(path) else ""
        raise RunError(f"run folder {path} already exists and is not empty; {hint}choose another --run-dir")


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 4096, 0)
        doc = json.loads(raw.decode()) if raw.strip() else {}
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}
