"""Executors: where a run's training command goes and how its end is observed.

The runner hands an executor an argument list and a run folder and gets back
a RunOutcome. The sequential executor here runs one command at a time on this
machine with the memory sampler beside it; a slot pool and a Slurm backend
implement the same `run` contract.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from lib.config import ROOT
from lib.gpu_monitor import start_sampler, stop_sampler


@dataclass(frozen=True)
class RunOutcome:
    status: str  # success | failed | timeout
    exit_code: int | None
    attempts: int
    started_at: str
    finished_at: str
    duration_s: float


class Executor(Protocol):
    def run(self, command: list[str], run_dir: Path) -> RunOutcome: ...


def _die_with_parent() -> None:
    """Linux: have the kernel SIGTERM the run if the runner itself dies (even by
    SIGKILL), so no training process outlives it and `make continue` can rerun
    the run cleanly. Runs in the child between fork and exec."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: Ctrl-C and timeouts still stop the run's process group


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def _kill_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the run's process group, then SIGKILL what is left after `grace_s`."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, grace_s)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@dataclass
class SequentialExecutor:
    """One run at a time, in its own process group, with a memory sampler beside it."""

    timeout_s: int = 0
    retries: int = 0
    sample_interval_s: float = 0.1

    def _attempt(self, command: list[str], run_dir: Path, attempt: int) -> tuple[str, int | None]:
        with open(run_dir / "output.log", "a") as log:
            if attempt > 1:
                log.write(f"\n===== attempt {attempt} =====\n")
                log.flush()
            # A new session gives the run its own process group, so Ctrl-C and
            # timeouts can stop the trainer and every child it started.
            proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        sampler = start_sampler(proc.pid, run_dir / "gpu_stats.json", self.sample_interval_s)
        try:
            exit_code = proc.wait(timeout=self.timeout_s or None)
            status = "success" if exit_code == 0 else "failed"
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            exit_code, status = proc.returncode, "timeout"
        except BaseException:
            _kill_group(proc)
            stop_sampler(sampler)
            raise
        stop_sampler(sampler)
        return status, exit_code

    def run(self, command: list[str], run_dir: Path) -> RunOutcome:
        started_at, start = _now(), time.monotonic()
        attempt, status, exit_code = 0, "failed", None
        while attempt <= self.retries:
            attempt += 1
            status, exit_code = self._attempt(command, run_dir, attempt)
            if status == "success":
                break
        return RunOutcome(status, exit_code, attempt, started_at, _now(), time.monotonic() - start)
