"""The run's writer lock for `correct`/`undo`: `evo.runs.Run.lock`, so a correction never lands
inside a search round (the second writer gets `RunBusyError` naming the holder's pid and command)."""

from __future__ import annotations

import contextlib
from typing import Any

from evo.runs import Run, RunBusyError

__all__ = ["RunBusyError", "run_lock"]


def run_lock(run: Run, command: str) -> contextlib.AbstractContextManager[Any]:
    return run.lock(command)
