"""Progress lines for long data preparations (downloads, tokenizing).

Whole lines every few seconds rather than a carriage-return bar: trainers'
stdout goes to output.log, where `\\r` bars turn into one unreadable line.
"""
from __future__ import annotations

import time


class PreparationProgress:
    """Prints `label: done / total unit (pct%), rate` at most every `interval_s`."""

    def __init__(self, label: str, total: int | None, unit: str, interval_s: float = 5.0,
                 scale: float = 1.0) -> None:
        self.label, self.total, self.unit, self.interval_s = label, total, unit, interval_s
        self.scale = scale  # e.g. 2**20 to print bytes as MiB
        self.started = self.last = time.perf_counter()

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if now - self.last >= self.interval_s:
            self.last = now
            print(self.line(done), flush=True)

    def line(self, done: int) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = f"{done / self.scale / elapsed:,.1f} {self.unit}/s"
        if self.total:
            share = f" / {self.total / self.scale:,.0f} {self.unit} ({100.0 * done / self.total:.1f}%)"
        else:
            share = f" {self.unit}"
        return f"{self.label}: {done / self.scale:,.0f}{share}, {rate}"
