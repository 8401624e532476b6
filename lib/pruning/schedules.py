"""Sparsity schedules: name -> fn(progress in [0, 1]) -> fraction of the final sparsity.

Progress runs from 0 at the end of warm-up to 1 at ramp end, where the final
sparsity is reached exactly.
"""
from __future__ import annotations

from typing import Callable


def cubic(progress: float) -> float:
    """Zhu and Gupta 2017, eq. 1: s_t = s_f * (1 - (1 - p)^3); prunes fast early."""
    return 1.0 - (1.0 - progress) ** 3


def linear(progress: float) -> float:
    return progress


def upstream_p3(progress: float) -> float:
    """The curve of the upstream AdamWPrune code, s_f * p^3: slow start, fast end."""
    return progress ** 3


SCHEDULES: dict[str, Callable[[float], float]] = {"cubic": cubic, "linear": linear, "upstream-p3": upstream_p3}


def target_fraction(schedule: str, step: int, warmup_steps: int, ramp_end_step: int, final: float) -> float:
    """Target sparsity (fraction) at `step` under the named schedule."""
    if step < warmup_steps:
        return 0.0
    if step >= ramp_end_step or ramp_end_step <= warmup_steps:
        return final
    progress = (step - warmup_steps) / (ramp_end_step - warmup_steps)
    return final * SCHEDULES[schedule](progress)
