"""The local executor: runs on this machine, as many at once as the slot pool
(slots.py) allows, in matrix order; one thread per run in flight, each waiting
on its own training process (task.execute_run)."""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from typing import Any, Callable

from lib.errors import UserError
from lib.run.executor import RunEvent
from lib.run.process import Stopped, kill_all_now
from lib.run.slots import SlotPool
from lib.run.task import Placement, RunTask, execute_run

WAIT_NOTE_EVERY_S = 60.0


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
