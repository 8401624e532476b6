"""What the person running a matrix sees: runs done, failed and running,
elapsed time and an ETA.

`MatrixProgress` keeps the counts and the ETA; it shows them as a live tqdm bar when
stdout is a terminal, or as one plain line per start and finish otherwise
(CI logs, pipes), so logs stay greppable. The ETA is the mean duration of the
finished runs times the work left, divided by the runs that go at once.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

from lib.run.task import Placement, RunTask


def hms(seconds: float) -> str:
    if not math.isfinite(seconds):  # an estimate from past runs whose durations overflow a float
        return "unknown"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class MatrixProgress:
    """Counts, durations and the ETA of one matrix invocation."""

    def __init__(self, total: int, slots: int = 1, out: Callable[[str], None] = print, bar: bool = False):
        self.total, self.slots, self.out = total, max(slots, 1), out
        self.done = self.failed = 0
        self.start = time.monotonic()
        self.durations: list[float] = []
        self.running: dict[str, float] = {}  # run_id -> when it started
        self._bar = _make_bar(total) if bar and total else None

    @property
    def remaining(self) -> int:
        return self.total - self.done - self.failed

    def eta_s(self) -> float | None:
        if not self.durations:
            return None
        mean = sum(self.durations) / len(self.durations)
        queued = self.remaining - len(self.running)
        now = time.monotonic()
        work = mean * queued + sum(max(mean - (now - t), 0.0) for t in self.running.values())
        return work / max(min(self.slots, self.remaining), 1)

    def clock(self) -> str:
        eta = self.eta_s()
        text = f"elapsed {hms(time.monotonic() - self.start)}"
        if self.remaining:
            text += f" ETA {hms(eta)}" if eta is not None else " ETA --:--"
        return text

    def counts(self) -> str:
        return f"done {self.done}, failed {self.failed}, running {len(self.running)}"

    def started(self, task: RunTask, placement: Placement | None) -> None:
        self.running[task.spec.run_id] = time.monotonic()
        if self._bar is None:
            where = f"  [{placement.describe()}]" if placement else ""
            self.out(f"[{self.done + self.failed + len(self.running)}/{self.total}] start   "
                     f"{task.spec.run_id}{where}  ({self.clock()})")
        self.refresh()

    def finished(self, task: RunTask, result: dict[str, Any]) -> None:
        self.running.pop(task.spec.run_id, None)
        self.durations.append(result["duration_s"])
        if result["status"] == "success":
            self.done += 1
            m = result.get("metrics", {})
            detail = _metric_text(m)
        else:
            self.failed += 1
            why = "non-finite, " if result.get("non_finite") else ""
            detail = f"{result['status'].upper()} ({why}exit {result['exit_code']}); see {task.spec.run_id}/output.log"
        line = (f"[{self.done + self.failed}/{self.total}] {result['status']:<7} {task.spec.run_id}  "
                f"{result['duration_s']:.1f}s  {detail}  ({self.counts()}; {self.clock()})")
        if self._bar is None:
            self.out(line)
        else:
            self._bar.write(line)
            self._bar.update(1)
        self.refresh()

    def refresh(self) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self.counts()} | {self.clock()}", refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _make_bar(total: int):
    from tqdm import tqdm

    # tqdm's own rate-based ETA ignores parallel slots and runs in flight, so the postfix carries ours.
    return tqdm(total=total, unit="run", dynamic_ncols=True, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt}{postfix}")


def _metric_text(metrics: dict[str, Any]) -> str:
    """The run's headline figure: accuracy for classifiers, perplexity for language models."""
    sparsity = f"sparsity {metrics.get('sparsity_pct') or 0:.1f}%"
    if metrics.get("best_accuracy_pct") is not None:
        return f"acc {metrics['best_accuracy_pct']:.2f}%  {sparsity}"
    if metrics.get("best_perplexity") is not None:
        return f"ppl {metrics['best_perplexity']:.2f}  {sparsity}"
    return ""
