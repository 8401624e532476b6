"""Run a matrix: one training subprocess per RunSpec, each in its own folder.

The runner owns the result directory: config.txt and matrix.json at the start,
run.json before each launch, result.json after each run ends (written last and
atomically: its presence with status "success" is what "done" means). A run
that fails is recorded with its exit code and log tail and the matrix goes on.
Executors (executors.py) decide where and how many runs go at once; this module
only decides what to run and records what happened.
"""
from __future__ import annotations

import platform
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable

from lib.config import ROOT, Settings
from lib.errors import UserError
from lib.executors import Executor, RunOutcome, SequentialExecutor
from lib.gpu_monitor import read_summary
from lib.jsonio import SCHEMA_VERSION, read_json, write_json_atomic
from lib.matrix import RunSpec
from lib.trainers import prepare_data, trainer_command

LOG_TAIL_LINES = 20


def check_runnable(runs: Iterable[RunSpec]) -> None:
    """Fail before any run starts if a run asks for a model, optimizer or method we lack."""
    from lib.optim import OPTIMIZERS
    from lib.pruning import SCORES
    from lib.pruning.scores import score_name

    for spec in runs:
        trainer_command(spec, Path("."))
        if spec.optimizer not in OPTIMIZERS:
            raise UserError(f"{spec.run_id}: optimizer {spec.optimizer!r} is not available in this version "
                            f"(have: {', '.join(OPTIMIZERS)})")
        score = score_name(spec.pruning, spec.variant, spec.hyperparams.get("optimizer", {}).get("state_score", ""))
        if spec.pruning != "none" and score not in SCORES:
            raise UserError(f"{spec.run_id}: pruning score {score!r} is not available in this version "
                            f"(have: none, state, {', '.join(SCORES)})")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def create_results_dir(root: Path, config_path: Path, config_name: str | None, runs: list[RunSpec]) -> Path:
    """A new timestamped directory holding config.txt and matrix.json."""
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    results_dir = root / stamp
    suffix = 1
    while results_dir.exists():
        suffix += 1
        results_dir = root / f"{stamp}_{suffix}"
    results_dir.mkdir(parents=True)
    shutil.copyfile(config_path, results_dir / "config.txt")
    write_json_atomic(results_dir / "matrix.json", {
        "schema_version": SCHEMA_VERSION, "created_at": datetime.now().isoformat(timespec="seconds"),
        "config_name": config_name, "runs": [r.to_json() for r in runs]})
    return results_dir


def load_matrix(results_dir: Path) -> list[RunSpec]:
    path = results_dir / "matrix.json"
    if not path.is_file():
        raise UserError(f"{results_dir}: not a result directory of this framework (no matrix.json)")
    return [RunSpec.from_json(r) for r in read_json(path)["runs"]]


def is_done(run_dir: Path) -> bool:
    """True when result.json is valid JSON saying the run succeeded."""
    try:
        return read_json(run_dir / "result.json").get("status") == "success"
    except (UserError, AttributeError):
        return False


def pending(results_dir: Path, runs: list[RunSpec]) -> list[RunSpec]:
    return [spec for spec in runs if not is_done(results_dir / spec.run_id)]


def _set_aside(run_dir: Path) -> None:
    """Keep an unfinished attempt for inspection instead of deleting it."""
    if run_dir.exists():
        aside = run_dir.parent / ".superseded" / f"{run_dir.name}-{datetime.now().strftime('%Y%m%d_%H%M%S_%f')}"
        aside.parent.mkdir(exist_ok=True)
        run_dir.rename(aside)


def prepare_run_dir(run_dir: Path, spec: RunSpec, command: list[str]) -> None:
    _set_aside(run_dir)
    run_dir.mkdir(parents=True)
    write_json_atomic(run_dir / "run.json", {
        "schema_version": SCHEMA_VERSION, "spec": spec.to_json(), "command": command, "host": platform.node(),
        "python": sys.version.split()[0], "git_commit": git_commit(),
        "created_at": datetime.now().isoformat(timespec="seconds")})


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with open(path, errors="replace") as handle:
            return [line.rstrip("\n") for line in deque(handle, maxlen=lines)]
    except OSError:
        return []


def _metrics_summary(run_dir: Path) -> dict:
    summary = {}
    try:
        metrics = read_json(run_dir / "metrics.json")
        summary.update(best_accuracy_pct=metrics.get("best_accuracy_pct"),
                       final_accuracy_pct=metrics.get("final_accuracy_pct"),
                       sparsity_pct=metrics.get("sparsity", {}).get("global_pct"))
    except UserError:
        pass
    stats = read_summary(run_dir / "gpu_stats.json")
    if stats:
        summary.update(memory_mean_mib=stats["mean_mib"], memory_peak_mib=stats["peak_mib"],
                       memory_device=stats["device"], memory_source=stats["source"])
    return summary


def write_result(run_dir: Path, spec: RunSpec, outcome: RunOutcome) -> dict:
    status = outcome.status
    if status == "success" and not (run_dir / "metrics.json").is_file():
        status = "failed"  # exit 0 without metrics is not a result
    result = {"schema_version": SCHEMA_VERSION, "run_id": spec.run_id, "status": status,
              "exit_code": outcome.exit_code, "attempts": outcome.attempts,
              "started_at": outcome.started_at, "finished_at": outcome.finished_at,
              "duration_s": round(outcome.duration_s, 3), "metrics": _metrics_summary(run_dir)}
    if status != "success":
        result["log_tail"] = log_tail(run_dir / "output.log")
    write_json_atomic(run_dir / "result.json", result)
    return result


@dataclass
class Progress:
    """One line per run start and finish, with elapsed time and an ETA from finished runs."""

    total: int
    out: Callable[[str], None] = print
    done: int = 0
    failed: int = 0

    def __post_init__(self) -> None:
        self.start = time.monotonic()
        self.durations: list[float] = []

    def _clock(self) -> str:
        elapsed = time.monotonic() - self.start
        remaining = self.total - self.done - self.failed
        eta = (f"ETA {_hms(sum(self.durations) / len(self.durations) * remaining)}"
               if self.durations and remaining else "ETA --:--" if remaining else "")
        return f"elapsed {_hms(elapsed)} {eta}".rstrip()

    def started(self, spec: RunSpec) -> None:
        self.out(f"[{self.done + self.failed + 1}/{self.total}] start  {spec.run_id}  ({self._clock()})")

    def finished(self, spec: RunSpec, result: dict) -> None:
        self.durations.append(result["duration_s"])
        if result["status"] == "success":
            self.done += 1
            m = result["metrics"]
            detail = (f"acc {m['best_accuracy_pct']:.2f}%  sparsity {m['sparsity_pct']:.1f}%"
                      if m.get("best_accuracy_pct") is not None else "")
        else:
            self.failed += 1
            detail = f"{result['status'].upper()} (exit {result['exit_code']}); see {spec.run_id}/output.log"
        self.out(f"[{self.done + self.failed}/{self.total}] {result['status']:<7} {spec.run_id}  "
                 f"{result['duration_s']:.1f}s  {detail}  ({self._clock()})")


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def run_matrix(results_dir: Path, runs: list[RunSpec], settings: Settings | None = None,
               executor: Executor | None = None, out: Callable[[str], None] = print) -> dict[str, int]:
    """Run every spec of `runs` not yet done in `results_dir`; return counts by status."""
    todo = pending(results_dir, runs)
    check_runnable(todo)
    if executor is None:
        executor = (SequentialExecutor(timeout_s=settings.runner.timeout_s, retries=settings.runner.retries)
                    if settings else SequentialExecutor())
    skipped = len(runs) - len(todo)
    out(f"{results_dir}: {len(runs)} runs, {skipped} already done, {len(todo)} to run")
    if todo:
        prepare_data(todo, out)
    progress = Progress(len(todo), out)
    for spec in todo:
        run_dir = results_dir / spec.run_id
        command = trainer_command(spec, run_dir)
        prepare_run_dir(run_dir, spec, command)
        progress.started(spec)
        outcome = executor.run(command, run_dir)
        progress.finished(spec, write_result(run_dir, spec, outcome))
    return {"success": skipped + progress.done, "failed": progress.failed}
