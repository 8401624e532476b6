"""One run's training process on this machine: its own process group, the
memory sampler beside it, the per-attempt time limit and the retries.

It owns starting, watching and stopping processes. It never decides what to
run (runner.py), where (executors.py, slot_pool.py), and never writes
result.json (run_task.py).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Mapping

from lib import ROOT
from lib.errors import NON_FINITE_EXIT, NON_FINITE_MARKER
from lib.gpu_monitor.sampler import start_sampler, stop_sampler
from lib.lifeline import with_parent_death_signal

KILL_GRACE_S = 5.0  # SIGTERM first so a trainer may flush its log; SIGKILL after this
POLL_S = 0.2  # how often a waiting attempt looks at its stop flag
LOG_DRAIN_S = 2.0  # after the trainer exits, how long its log copier may wait for a child still holding the pipe


@dataclass(frozen=True)
class RunOutcome:
    status: str  # success | failed | timeout
    exit_code: int | None
    attempts: int
    started_at: str
    finished_at: str
    duration_s: float
    non_finite: bool = False  # the trainer stopped on a NaN or infinity (went_non_finite)


class Stopped(Exception):
    """The run was stopped from outside (Ctrl-C, SIGTERM, an executor's stop): nothing is recorded."""


# Process groups of attempts in flight, so a second Ctrl-C can SIGKILL them all at once.
_LIVE: set[int] = set()
_LIVE_LOCK = threading.Lock()


def kill_all_now() -> None:
    """SIGKILL every run process group still alive (last resort: no grace period)."""
    with _LIVE_LOCK:
        groups = list(_LIVE)
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def now_iso() -> str:
    return datetime.now().isoformat(timespec="seconds")


def kill_group(proc: subprocess.Popen, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the run's process group, then SIGKILL what is left after `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace_s)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children that ignored SIGTERM after the leader exited
    except (ProcessLookupError, PermissionError):
        pass


def _wait(proc: subprocess.Popen, timeout_s: float, stop: threading.Event | None) -> int | None:
    """The exit code, or None when the attempt ran past `timeout_s`; raises Stopped when `stop` is set."""
    deadline = time.monotonic() + timeout_s if timeout_s else None
    while True:
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        step = left if stop is None else min(POLL_S, POLL_S if left is None else left)
        try:
            return proc.wait(timeout=step)
        except subprocess.TimeoutExpired:
            if stop is not None and stop.is_set():
                raise Stopped()
            if deadline is not None and time.monotonic() >= deadline:
                return None


def run_attempt(command: list[str], run_dir: Path, attempt: int = 1, *, env: Mapping[str, str] | None = None,
                timeout_s: float = 0, sample_interval_s: float = 0.1,
                stop: threading.Event | None = None) -> tuple[str, int | None]:
    """Run `command` once with its output appended to run_dir/output.log, terminal escape sequences
    removed (start_log_copier); return (status, exit code)."""
    full_env = None if env is None else {**os.environ, **env}
    with open(run_dir / "output.log", "ab") as log:
        if attempt > 1:
            log.write(f"\n===== attempt {attempt} =====\n".encode())
            log.flush()
        copier, pipe = start_log_copier(log)
    try:
        # A new session gives the run its own process group, so Ctrl-C and
        # timeouts can stop the trainer and every child it started; the
        # parent-death signal kills it if the runner dies (lib/lifeline).
        proc = subprocess.Popen(with_parent_death_signal(command), cwd=ROOT, stdout=pipe, stderr=subprocess.STDOUT,
                                env=full_env, stdin=subprocess.DEVNULL, start_new_session=True)
    except BaseException:
        os.close(pipe)
        stop_log_copier(copier, LOG_DRAIN_S)
        raise
    os.close(pipe)  # the trainer holds the write end now: the copier sees the end of file when it exits
    with _LIVE_LOCK:
        _LIVE.add(proc.pid)
    sampler = None
    try:
        # inside the try: a sampler that cannot start (disk full) must not leave the trainer running
        sampler = start_sampler(proc.pid, run_dir / "gpu_stats.json", sample_interval_s, env=full_env)
        exit_code = _wait(proc, timeout_s, stop)
        if exit_code is None:
            kill_group(proc)
            return "timeout", proc.returncode
        return ("success" if exit_code == 0 else "failed"), exit_code
    except BaseException:
        kill_group(proc)
        raise
    finally:
        if sampler is not None:
            stop_sampler(sampler)
        with _LIVE_LOCK:
            _LIVE.discard(proc.pid)
        stop_log_copier(copier, LOG_DRAIN_S)


def start_log_copier(log: BinaryIO) -> tuple[subprocess.Popen, int]:
    """The process that copies a trainer's output to `log` (output.log, open for appending) without
    terminal escape sequences (lib/run/output_log.py), and the write end of its pipe, for the
    trainer's stdout and stderr.

    In a session of its own and without the parent-death signal: it outlives a runner killed with -9
    long enough to write what the trainer printed last, and ends when the pipe does."""
    read_end, write_end = os.pipe()
    try:
        copier = subprocess.Popen([sys.executable, "-S", "-m", "lib.run.output_log"], cwd=ROOT, stdin=read_end,
                                  stdout=log, start_new_session=True)
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return copier, write_end


def stop_log_copier(copier: subprocess.Popen, grace_s: float) -> None:
    """Wait for the copier to write the rest; after `grace_s`, a process that outlived the trainer and
    still holds the pipe open is no longer waited for (its later output is lost)."""
    try:
        copier.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        copier.kill()
        copier.wait()


def went_non_finite(run_dir: Path, status: str, exit_code: int | None) -> bool:
    """Whether an attempt that did not succeed stopped on a NaN or infinity: its trainer exited
    NON_FINITE_EXIT, or, when a launcher stood between (torchrun exits 1 whatever its workers' codes),
    a worker left NON_FINITE_MARKER in the run folder (lib/train/harness.record_non_finite)."""
    return status != "success" and (exit_code == NON_FINITE_EXIT or (run_dir / NON_FINITE_MARKER).is_file())


def run_attempts(command: list[str], run_dir: Path, *, env: Mapping[str, str] | None = None, timeout_s: float = 0,
                 retries: int = 0, sample_interval_s: float = 0.1,
                 stop: threading.Event | None = None) -> RunOutcome:
    """Up to 1 + `retries` attempts until one succeeds; `timeout_s` applies to each. A run that
    went non-finite is not retried: the same seed and settings diverge again (a crash, a timeout or
    a failed download may not)."""
    started_at, start = now_iso(), time.monotonic()
    attempt, status, exit_code, non_finite = 0, "failed", None, False
    while attempt <= retries:
        attempt += 1
        (run_dir / NON_FINITE_MARKER).unlink(missing_ok=True)  # each attempt is judged by what it leaves
        status, exit_code = run_attempt(command, run_dir, attempt, env=env, timeout_s=timeout_s,
                                        sample_interval_s=sample_interval_s, stop=stop)
        non_finite = went_non_finite(run_dir, status, exit_code)
        if status == "success" or non_finite:
            break
    return RunOutcome(status, exit_code, attempt, started_at, now_iso(), time.monotonic() - start, non_finite)
