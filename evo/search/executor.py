"""Where candidates run: Ray tasks (the default, on any cluster) or in this process (tests, debugging).

An executor has two calls: `submit(task, name, cpus, gpus)` → a handle, and `wait_one(handles)` →
(handle, result or the exception it raised). The driver holds no other knowledge of Ray.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, Protocol


class Executor(Protocol):
    def submit(self, task: dict[str, Any], name: str, cpus: float, gpus: float | None) -> Hashable: ...

    def wait_one(self, handles: Sequence[Hashable]) -> tuple[Hashable, Any]: ...


class RayExecutor:
    """Each candidate is a Ray task with its resources and a readable name for the dashboard."""

    def submit(self, task: dict[str, Any], name: str, cpus: float, gpus: float | None) -> Hashable:
        from evo.search.worker import evaluate_remote

        return evaluate_remote(task, cpus, gpus, name=name)

    def wait_one(self, handles: Sequence[Hashable]) -> tuple[Hashable, Any]:
        import ray

        ready, _ = ray.wait(list(handles), num_returns=1)
        try:
            return ready[0], ray.get(ready[0])
        except Exception as e:  # noqa: BLE001 - task error, worker death, OOM: the driver classifies it
            return ready[0], e


class InProcessExecutor:
    """Runs each candidate in this process when it is waited for, one at a time (no Ray needed)."""

    def __init__(self) -> None:
        self._tasks: dict[int, dict[str, Any]] = {}
        self._next = 0

    def submit(self, task: dict[str, Any], name: str, cpus: float, gpus: float | None) -> Hashable:
        self._next += 1
        self._tasks[self._next] = {**task, "threads": max(1, int(cpus))}
        return self._next

    def wait_one(self, handles: Sequence[Hashable]) -> tuple[Hashable, Any]:
        from evo.search.worker import run_task

        handle = handles[0]
        task = self._tasks.pop(handle)  # type: ignore[call-overload]
        try:
            return handle, run_task(task)
        except Exception as e:  # noqa: BLE001 - contained like a failed Ray task
            return handle, e
