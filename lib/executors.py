"""Executors: where the runs of a matrix execute, and how the runner learns
that one started or ended.

The runner hands an executor every task at once (`launch`), asks for news
(`poll`) until all have finished, and calls `stop` when it is interrupted.
Each executor runs a task through the same `run_task.execute_run`, so the
result folder does not depend on the executor:

- `LocalExecutor`: this machine's slot pool (slot_pool.py), one thread per
  run in flight, each waiting on its own training process.
- `slurm_executor.SlurmExecutor`: one Slurm array task per run via submitit.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from lib.config import RunnerSettings
from lib.errors import UserError
from lib.run_process import Stopped, kill_all_now
from lib.run_task import Placement, RunTask, execute_run
from lib.slot_pool import SlotPool, visible_gpus

WAIT_NOTE_EVERY_S = 60.0


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


class LocalExecutor:
    """Runs on this machine, as many at once as the slot pool allows, in matrix order."""

    name = "local"

    def __init__(self, pool: SlotPool, note: Callable[[str], None] = print):
        self.pool = pool
        self.slots = pool.capacity
        self._note = note
        self._queue: deque[RunTask] = deque()
        self._ended: queue.Queue = queue.Queue()  # (task, placement, result | None | exception) from threads
        self._threads: dict[str, threading.Thread] = {}
        self._stop = threading.Event()
        self._last_wait_note = 0.0

    def describe(self) -> str:
        return self.pool.describe()

    def launch(self, tasks: list[RunTask]) -> None:
        for task in tasks:
            problem = self.pool.check(task.gpus)
            if problem:
                raise UserError(f"{task.spec.run_id} {problem}; lower its GPU count or use EXECUTOR_SLURM")
        self._queue.extend(tasks)

    def _start_what_fits(self) -> list[RunEvent]:
        # Strict matrix order: a run waiting for several GPUs together is not overtaken (starved) by later ones.
        started = []
        while self._queue and not self._stop.is_set():
            placement = self.pool.acquire(self._queue[0].gpus)
            if placement is None:
                self._maybe_note_waiting()
                break
            task = self._queue.popleft()
            thread = threading.Thread(target=self._run, args=(task, placement), name=task.spec.run_id, daemon=True)
            self._threads[task.spec.run_id] = thread
            thread.start()
            started.append(RunEvent("started", task, placement))
        return started

    def _maybe_note_waiting(self) -> None:
        reason = self.pool.waiting_for
        if reason and reason != "every slot is busy" and time.monotonic() - self._last_wait_note > WAIT_NOTE_EVERY_S:
            self._last_wait_note = time.monotonic()
            self._note(f"waiting to start {self._queue[0].spec.run_id}: {reason}")

    def _run(self, task: RunTask, placement: Placement) -> None:
        try:
            result: Any = execute_run(task, placement, self.pool.env(placement), self._stop)
        except Stopped:
            result = None
        except BaseException as error:  # a bug or a full disk: poll() re-raises it in the main thread
            result = error
        self._ended.put((task, placement, result))

    def poll(self, timeout_s: float) -> list[RunEvent]:
        """Start what fits, wait up to `timeout_s` for a run to end, start what fits again; the news in order."""
        news = self._start_what_fits()
        ended = []
        try:
            ended.append(self._ended.get(timeout=timeout_s) if not news else self._ended.get_nowait())
            while True:
                ended.append(self._ended.get_nowait())
        except queue.Empty:
            pass
        for task, placement, result in ended:
            self._threads.pop(task.spec.run_id).join()
            self.pool.release(placement)
            if isinstance(result, BaseException):
                raise result
            if result is not None:
                news.append(RunEvent("finished", task, placement, result))
        return news + self._start_what_fits()

    def stop(self) -> None:
        """Stop every run in flight: each thread kills its process group (SIGTERM, SIGKILL after a grace)."""
        self._stop.set()
        self._queue.clear()
        try:
            for thread in list(self._threads.values()):
                thread.join()
        except BaseException:  # a second Ctrl-C: no grace period
            kill_all_now()
            raise
        self._threads.clear()


def make_executor(settings: RunnerSettings, results_dir: Path, note: Callable[[str], None] = print,
                  name: str | None = None) -> Executor:
    """The executor named by EXECUTOR (or `name`), configured from the runner settings."""
    name = name or settings.executor
    if name == "slurm":
        from lib.slurm_executor import SlurmExecutor

        return SlurmExecutor(results_dir, settings, note=note)
    pool = SlotPool(jobs_per_gpu=settings.parallel_jobs, gpus=visible_gpus(), min_free_mib=settings.min_free_gpu_mib)
    return LocalExecutor(pool, note=note)
