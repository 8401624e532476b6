"""Sparsity schedules: name -> fn(progress in [0, 1]) -> fraction of the final sparsity.

Progress runs from 0 at the end of warm-up to 1 at ramp end, where the final
sparsity is reached exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from lib.errors import UserError, counted

if TYPE_CHECKING:
    from lib.spec import RunSpec


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


# Upstream AdamWPrune prunes its own state on the p^3 curve and runs its
# magnitude and movement pruners on a linear one.
UPSTREAM_CURVES = {"state": "upstream-p3"}
UPSTREAM_DEFAULT_CURVE = "linear"
FIT_RAMP_END = 0.75  # a fitted ramp ends here, leaving the last quarter to recover


def curve_for(schedule: str, method: str) -> str:
    """The curve a `method` run uses: the configured one, or upstream's per method."""
    if schedule == "per-method":
        return UPSTREAM_CURVES.get(method, UPSTREAM_DEFAULT_CURVE)
    return schedule


@dataclass(frozen=True)
class Ramp:
    """When pruning starts and reaches the target, in optimizer steps."""

    warmup_steps: int
    ramp_end_step: int
    total_steps: int
    fitted_from: Optional[tuple[int, int]] = None  # (warm-up, ramp end) as configured, when fitted

    def to_json(self) -> dict:
        return {"warmup_steps": self.warmup_steps, "ramp_end_step": self.ramp_end_step,
                "total_steps": self.total_steps, "recovery_steps": self.total_steps - self.ramp_end_step,
                "fitted": self.fitted_from is not None,
                "configured": list(self.fitted_from) if self.fitted_from else [self.warmup_steps, self.ramp_end_step]}

    def describe(self) -> str:
        text = (f"pruning ramp: steps {self.warmup_steps}->{self.ramp_end_step} of {self.total_steps} "
                f"({self.total_steps - self.ramp_end_step} steps to recover at the target)")
        if self.fitted_from:
            text += f"; fitted from {self.fitted_from[0]}->{self.fitted_from[1]} (PRUNING_RAMP_FIT)"
        return text


def plan_ramp(warmup_steps: int, ramp_end_step: int, total_steps: int, *, fit: bool, symbols: str) -> Ramp:
    """The ramp of a run, refused (UserError) or fitted when it ends at or after the last step.

    `symbols` names the settings that set the ramp end, for the error line.
    """
    if ramp_end_step < total_steps and warmup_steps < ramp_end_step:
        return Ramp(warmup_steps, ramp_end_step, total_steps)
    if not fit:
        raise UserError(f"{symbols} puts the pruning ramp at steps {warmup_steps}->{ramp_end_step}, but training has "
                        f"{total_steps} steps: the target would be reached at the last step or never, with no steps "
                        "left to recover; end the ramp earlier, train longer, or set CONFIG_PRUNING_RAMP_FIT=y")
    end = min(ramp_end_step, max(1, int(FIT_RAMP_END * total_steps)))
    if end >= total_steps:
        raise UserError(f"training has {counted(total_steps, 'step')}: too few to prune and recover; train longer")
    return Ramp(min(warmup_steps, end // 2) if warmup_steps >= end else warmup_steps, end, total_steps,
                fitted_from=(warmup_steps, ramp_end_step))


def pruning_ramp(spec: "RunSpec", total_steps: int, steps_per_epoch: int) -> Ramp:
    """When the run's pruning starts and reaches its target, checked against its length: what the
    trainer prunes by (lib/train/harness.build_pruner) and the dry run shows (lib/run/plan.recipe).

    State runs follow AdamWPrune's own warm-up and ramp-end settings (as
    upstream); magnitude and movement runs the general ones (RunSpec.pruning_timing).
    """
    warmup, end_step, _ = spec.pruning_timing()
    if not end_step:
        epoch = spec.pruning_settings.ramp_end_epoch
        ramp_end = epoch * steps_per_epoch
        symbols = f"CONFIG_PRUNING_RAMP_END_EPOCH={epoch} (x {steps_per_epoch} steps per epoch)"
    elif spec.pruning == "state":
        ramp_end, symbols = end_step, f"CONFIG_ADAMWPRUNE_RAMP_END_STEP={end_step}"
    else:  # only an upstream defconfig's runs (lib/matrix.py)
        ramp_end, symbols = end_step, f"the ramp end upstream's {spec.model} trainer fixes (step {end_step})"
    return plan_ramp(warmup, ramp_end, total_steps, fit=spec.pruning_settings.ramp_fit, symbols=symbols)


def fixed_steps(spec: "RunSpec") -> Optional[tuple[int, int]]:
    """(total optimizer steps, steps per epoch) of a run whose length the configuration fixes in steps
    (GPT-2's max_iters, its variant budget applied), as the trainer counts them; None when the data's
    size and the batch set it (epochs x steps per epoch, known only once the data is loaded)."""
    total = spec.model_params.get("max_iters") or 0
    if not isinstance(total, int) or total <= 0:
        return None
    return total, max(1, math.ceil(total / max(1, spec.training.epochs)))
