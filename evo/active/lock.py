"""The run's writer lock, for `correct`/`undo` (a correction never lands inside a search round).

`evo.runs.Run.lock(command)` (issue 9) is used when present. Until it lands this module offers the
same contract: an OS file lock (fcntl) on `<run>/.evo-lock`; a second writer gets `RunBusyError`
naming the holder's pid and command.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from typing import Any

import evo.runs as runs
from evo.errors import EvoError

RunBusyError: type[EvoError] = getattr(runs, "RunBusyError", None) or type(
    "RunBusyError", (EvoError,), {"__doc__": "Another evo process holds the run's writer lock."})

LOCK_FILE = ".evo-lock"


def run_lock(run: runs.Run, command: str) -> contextlib.AbstractContextManager[Any]:
    """The run's writer lock as a context manager (evo.runs's when it exists)."""
    lock = getattr(run, "lock", None)
    return lock(command) if callable(lock) else _file_lock(run, command)


@contextlib.contextmanager
def _file_lock(run: runs.Run, command: str) -> Iterator[None]:
    path = run.path / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                holder = {}
            raise RunBusyError(f"run {run.path} is busy: pid {holder.get('pid', '?')} holds it for "
                               f"`evo {holder.get('command', '?')}`; wait for it to finish and retry") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command}).encode(), 0)
        yield
    finally:
        os.close(fd)
