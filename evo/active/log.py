"""The durable corrections log: `RUN/corrections.sqlite` (SQLite, WAL while a writer has it open, a
rollback journal at rest so that read-only commands write nothing beside it; synchronous=FULL).

Four tables. `settings`: the engine options the log replays with. `corrections`: one row per correction with the image's content hash and a lossless
PNG copy. `features`: the head's input features of a correction's image under one model version
(float32 bytes), so a replay never depends on recomputing a forward pass. `ops`: the exact sequence
of rank-one changes applied to a version's head (a correction's weight, each re-weighting by the
regression guard, each undo, each class added). The model is always `committed version + ops
replayed in order`, and every correct/undo writes all its rows in one transaction: a correction is
acknowledged only after that commit, so a kill -9 at any moment loses nothing acknowledged and
leaves nothing half-applied.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evo.active.errors import CorrectionError

LOG_FILE = "corrections.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS corrections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created TEXT NOT NULL,
    image_sha256 TEXT NOT NULL,
    image_png BLOB NOT NULL,
    previous TEXT NOT NULL,
    label TEXT NOT NULL,
    source TEXT NOT NULL,
    external_id TEXT,
    version INTEGER NOT NULL,
    undone TEXT
);
CREATE INDEX IF NOT EXISTS corrections_external ON corrections(external_id);
CREATE TABLE IF NOT EXISTS features (
    cid INTEGER NOT NULL REFERENCES corrections(id),
    version INTEGER NOT NULL,
    dim INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (cid, version)
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ops (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    version INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('add', 'reweight', 'undo', 'class')),
    cid INTEGER,
    weight REAL,
    label TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Op:
    """One logged change of a version's head: A += weight·φφᵀ for correction `cid` toward `label`
    ('add', 'reweight'; 'undo' carries the negated total), or a new class `label` ('class')."""

    seq: int
    version: int
    kind: str
    cid: int | None
    weight: float | None
    label: str


@dataclass(frozen=True)
class Row:
    id: int
    created: str
    image_sha256: str
    previous: str
    label: str
    source: str
    external_id: str | None
    version: int
    undone: str | None


BUSY_MS = 10_000  # how long an open or a write waits for another process's transaction


class CorrectionLog:
    """SQLite access for the engine; `write=False` opens read-only (a missing log reads as empty)."""

    def __init__(self, run_path: Path, write: bool) -> None:
        self.path = Path(run_path) / LOG_FILE
        self.write = write
        self.created = write and not self.path.exists()  # removed again on close if nothing was committed
        try:
            self._connect(write)
        except sqlite3.DatabaseError as e:
            if "locked" in str(e) or "busy" in str(e):  # another process holds it: nothing is wrong with the log
                raise CorrectionError(f"{self.path} is busy (another evo command is reading or writing it); run "
                                      "the command again in a moment") from None
            if not write and "readonly" in str(e):  # left in WAL mode (a killed writer) in a folder we cannot write
                raise CorrectionError(f"{self.path} cannot be read without writing beside it (its writer stopped "
                                      "before closing it); make the run folder writable and run the command "
                                      "again") from None
            raise CorrectionError(f"{self.path} is not a readable corrections log ({e}); move it away to start "
                                  "a new log, or put back a good copy") from None

    def _connect(self, write: bool) -> None:
        if not write and not self.path.is_file():
            self.db = sqlite3.connect(":memory:", check_same_thread=False)
        elif write:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute(f"PRAGMA busy_timeout={BUSY_MS}")  # before WAL: switching waits out a reader
            self.db.execute("PRAGMA journal_mode=WAL")
        else:
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                                      check_same_thread=False)
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(f"PRAGMA busy_timeout={BUSY_MS}")
        if write or not self.path.is_file():
            self.db.executescript(_SCHEMA)
        elif not self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='ops'").fetchone():
            raise sqlite3.DatabaseError("it has no corrections tables")

    def close(self) -> None:
        if self.write:  # at rest in rollback mode: a read-only open then creates no -wal/-shm files in the run
            with contextlib.suppress(sqlite3.Error):  # a reader still open keeps WAL until the next writer closes
                self.db.execute("PRAGMA journal_mode=DELETE")
        empty = self.created and not self.db.execute(
            "SELECT 1 FROM ops UNION ALL SELECT 1 FROM corrections LIMIT 1").fetchone()
        self.db.close()
        if empty:  # this open made the log and nothing was committed to it: a refused command leaves no file
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    # ---- reading --------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The engine options this log is replayed with (`save_settings`). A log written before they
        were kept, with ops already in it, replays as it was written: without local features."""
        has_table = self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='settings'").fetchone()
        saved = dict(self.db.execute("SELECT key, value FROM settings").fetchall()) if has_table else {}
        if saved:
            return {k: json.loads(v) for k, v in saved.items()}
        if self.db.execute("SELECT 1 FROM ops LIMIT 1").fetchone():
            return {"locality": None}
        return {}

    def rows(self) -> list[Row]:
        cur = self.db.execute("SELECT id, created, image_sha256, previous, label, source, external_id, version, "
                              "undone FROM corrections ORDER BY id")
        return [Row(*r) for r in cur.fetchall()]

    def row(self, cid: int) -> Row | None:
        r = self.db.execute("SELECT id, created, image_sha256, previous, label, source, external_id, version, "
                            "undone FROM corrections WHERE id = ?", (cid,)).fetchone()
        return Row(*r) if r else None

    def image_png(self, cid: int) -> bytes:
        return self.db.execute("SELECT image_png FROM corrections WHERE id = ?", (cid,)).fetchone()[0]

    def features(self, version: int) -> dict[int, np.ndarray]:
        cur = self.db.execute("SELECT cid, data FROM features WHERE version = ?", (version,))
        return {cid: np.frombuffer(data, dtype=np.float32).copy() for cid, data in cur.fetchall()}

    def ops(self, version: int) -> list[Op]:
        cur = self.db.execute("SELECT seq, version, kind, cid, weight, label FROM ops WHERE version = ? ORDER BY seq",
                              (version,))
        return [Op(*r) for r in cur.fetchall()]

    def last_seq(self) -> int:
        return int(self.db.execute("SELECT coalesce(max(seq), 0) FROM ops").fetchone()[0])

    # ---- writing: one transaction per user action ----------------------------------------------
    def save_settings(self, values: dict[str, Any]) -> None:
        """Record the options a new log is to be replayed with (one transaction, before any op)."""
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            cur.executemany("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)",
                            [(k, json.dumps(v)) for k, v in values.items()])
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def next_id(self) -> int:
        """The id the next correction gets (rows are never deleted; one writer holds the run lock)."""
        return int(self.db.execute("SELECT coalesce(max(id), 0) FROM corrections").fetchone()[0]) + 1

    def commit(self, version: int, new: dict | None, features: list[tuple[int | None, np.ndarray]],
               ops: list[tuple[str, int | None, float | None, str]], undone: int | None = None) -> tuple[int | None, int]:
        """Write a correction (`new`; a `None` cid in features/ops means its id), features rows, ops rows
        and an undo mark in one transaction. Returns (new id, last op seq)."""
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            cid = None
            if new is not None:
                cur.execute("INSERT INTO corrections (id, created, image_sha256, image_png, previous, label, source, "
                            "external_id, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (new["id"], time.strftime("%Y-%m-%dT%H:%M:%S"), new["sha256"], new["png"], new["previous"],
                             new["label"], new["source"], new["external_id"], version))
                cid = cur.lastrowid
            for fid, vec in features:
                cur.execute("INSERT OR REPLACE INTO features (cid, version, dim, data) VALUES (?, ?, ?, ?)",
                            (cid if fid is None else fid, version, int(vec.shape[0]),
                             np.ascontiguousarray(vec, dtype=np.float32).tobytes()))
            for kind, oid, weight, label in ops:
                cur.execute("INSERT INTO ops (version, kind, cid, weight, label) VALUES (?, ?, ?, ?, ?)",
                            (version, kind, cid if oid is None and kind != "class" else oid, weight, label))
            if undone is not None:
                cur.execute("UPDATE corrections SET undone = ? WHERE id = ?",
                            (time.strftime("%Y-%m-%dT%H:%M:%S"), undone))
            seq = int(cur.execute("SELECT coalesce(max(seq), 0) FROM ops").fetchone()[0])
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return cid, seq
