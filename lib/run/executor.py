"""The executor interface: where the runs of a matrix execute, and how the
runner learns that one started or ended.

The runner hands an executor every task at once (`launch`), asks for news
(`poll`) until all have finished, and calls `stop` when it is interrupted.
Each executor runs a task through the same `task.execute_run`, so the result
folder does not depend on the executor:

- `local_executor.LocalExecutor`: this machine's slot pool (slots.py), one
  thread per run in flight, each waiting on its own training process.
- `slurm_executor.SlurmExecutor`: one Slurm array task per run via submitit.

The runner picks one (runner.make_executor); neither imports the other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from lib.run.task import Placement, RunTask


@dataclass(frozen=True)
class RunEvent:
    """A run started (result None) or finished (result: its result.json)."""

    kind: str  # started | finished
    task: RunTask
    placement: Placement | None = None
    result: dict[str, Any] | None = None


class Executor(Protocol):
    name: str
    slots: int  # runs at once, for the ETA

    def describe(self) -> str: ...

    def launch(self, tasks: list[RunTask]) -> None: ...

    def poll(self, timeout_s: float) -> list[RunEvent]: ...

    def stop(self) -> None: ...
