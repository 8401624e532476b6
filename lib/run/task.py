"""One run from start to record, on whichever machine it lands: the function
every executor calls (a local slot's thread, a Slurm array task on a node).

`execute_run` sets aside an old folder of the run, writes run.json, runs the
trainer's attempts with the sampler beside it (run_process.py) and writes
result.json last and atomically. Because both executors call this same
function, their result folders are the same.
"""
from __future__ import annotations

import platform
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

from lib.errors import NON_FINITE_MARKER, UserError, counted
from lib.gpu_monitor.sampler import read_summary
from lib.jsonio import SCHEMA_VERSION, read_json, write_json_atomic
from lib.names import SUPERSEDED_DIR
from lib.provenance import run_record
from lib.run.process import RunOutcome, run_attempts
from lib.spec import RunSpec
from lib.trackers.settings import TrackerSettings

LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class RunPolicy:
    """How each run is held: per-attempt limit, retries, sampler interval."""

    timeout_s: int = 0
    retries: int = 0
    sample_interval_s: float = 0.1


@dataclass(frozen=True)
class RunTask:
    """Everything a machine needs to run one spec into its folder (picklable for submitit)."""

    results_dir: Path
    spec: RunSpec
    command: tuple[str, ...]
    policy: RunPolicy = RunPolicy()
    gpus: int = 1  # GPUs the run asks for (RunSpec.gpus)
    git_commit: str | None = None  # looked up once by the runner, not once per run
    tracking: TrackerSettings = TrackerSettings()  # the trackers the trainer logs to (run.json "tracking")

    @property
    def run_dir(self) -> Path:
        return self.results_dir / self.spec.run_id


@dataclass(frozen=True)
class Placement:
    """Where a run went, recorded in run.json and result.json."""

    executor: str
    slots: tuple[int, ...] = ()
    gpus: tuple[str, ...] = ()
    threads: int | None = None
    job_id: str | None = None
    host: str = field(default_factory=platform.node)

    def describe(self) -> str:
        where = f"GPU {','.join(self.gpus)}" if self.gpus else "cpu"
        parts = [f"slot {','.join(map(str, self.slots))}" if self.slots else None, where,
                 counted(self.threads, "thread") if self.threads else None, f"job {self.job_id}" if self.job_id else None]
        return ", ".join(p for p in parts if p)

    def to_json(self) -> dict[str, Any]:
        return {"executor": self.executor, "slots": list(self.slots), "gpus": list(self.gpus), "threads": self.threads,
                "job_id": self.job_id, "host": self.host}


def set_aside(run_dir: Path) -> None:
    """Keep an unfinished attempt for inspection instead of deleting it."""
    if run_dir.exists():
        aside = run_dir.parent / SUPERSEDED_DIR / f"{run_dir.name}-{datetime.now().strftime('%Y%m%d_%H%M%S_%f')}"
        aside.parent.mkdir(exist_ok=True)
        run_dir.rename(aside)


def prepare_run_dir(run_dir: Path, spec: RunSpec, command: list[str], placement: Placement | None = None,
                    commit: str | None = None, tracking: TrackerSettings = TrackerSettings()) -> None:
    set_aside(run_dir)
    run_dir.mkdir(parents=True)
    provenance = run_record(commit)  # host, python, git commit and state, package versions
    write_json_atomic(run_dir / "run.json", {
        "schema_version": SCHEMA_VERSION, "spec": spec.to_json(), "command": command, **provenance,
        "placement": placement.to_json() if placement else None, "tracking": tracking.to_json(),
        "created_at": datetime.now().isoformat(timespec="seconds")})


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with open(path, errors="replace") as handle:
            return [line.rstrip("\n") for line in deque(handle, maxlen=lines)]
    except OSError:
        return []


def non_finite_line(run_dir: Path, tail: list[str]) -> list[str]:
    """The error a worker recorded on stopping non-finite (NON_FINITE_MARKER), for the log tail when the
    tail lacks it: under torchrun the worker's `error:` line sits above torchrun's own report of ~30 lines."""
    try:
        marker = read_json(run_dir / NON_FINITE_MARKER)
    except UserError:
        return []
    error = marker.get("error") if isinstance(marker, dict) else None
    if not isinstance(error, str) or any(error in line for line in tail):
        return []
    rank = marker.get("rank")
    return [f"--- stopped non-finite{f' on rank {rank}' if isinstance(rank, int) else ''}: {error} ---"]


def metrics_summary(run_dir: Path) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    try:
        metrics = read_json(run_dir / "metrics.json")
        summary.update(best_accuracy_pct=metrics.get("best_accuracy_pct"),
                       final_accuracy_pct=metrics.get("final_accuracy_pct"),
                       best_perplexity=metrics.get("best_perplexity"),
                       final_perplexity=metrics.get("final_perplexity"),
                       sparsity_pct=(metrics.get("sparsity") or {}).get("global_pct"))
    except (UserError, AttributeError):
        pass
    stats = read_summary(run_dir / "gpu_stats.json")
    if stats:
        summary.update(memory_mean_mib=stats["mean_mib"], memory_peak_mib=stats["peak_mib"],
                       memory_device=stats["device"], memory_source=stats["source"])
    return summary


def write_result(run_dir: Path, spec: RunSpec, outcome: RunOutcome, placement: Placement | None = None,
                 extra_log: list[str] | None = None) -> dict[str, Any]:
    """result.json, last and atomically: its presence with "success" is what done means."""
    status = outcome.status
    if status == "success" and not (run_dir / "metrics.json").is_file():
        status = "failed"  # exit 0 without metrics is not a result
    result = {"schema_version": SCHEMA_VERSION, "run_id": spec.run_id, "status": status,
              "exit_code": outcome.exit_code, "non_finite": outcome.non_finite, "attempts": outcome.attempts,
              "started_at": outcome.started_at, "finished_at": outcome.finished_at,
              "duration_s": round(outcome.duration_s, 3), "metrics": metrics_summary(run_dir)}
    if placement is not None:
        result.update(executor=placement.executor, placement=placement.to_json())
    if status != "success":
        tail = log_tail(run_dir / "output.log")
        result["log_tail"] = tail + (non_finite_line(run_dir, tail) if outcome.non_finite else []) + (extra_log or [])
    write_json_atomic(run_dir / "result.json", result)
    return result


def execute_run(task: RunTask, placement: Placement, env: Mapping[str, str] | None = None,
                stop: threading.Event | None = None) -> dict[str, Any]:
    """Run one task into its folder and return its result.json. Raises Stopped
    (or KeyboardInterrupt) without writing result.json when stopped from outside."""
    command = list(task.command)
    prepare_run_dir(task.run_dir, task.spec, command, placement, task.git_commit, task.tracking)
    outcome = run_attempts(command, task.run_dir, env=env, timeout_s=task.policy.timeout_s,
                           retries=task.policy.retries, sample_interval_s=task.policy.sample_interval_s, stop=stop)
    return write_result(task.run_dir, task.spec, outcome, placement)
