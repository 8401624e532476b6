"""Learning-rate schedules, all in one place: warm-up, then constant, cosine or step decay.

Warm-up and cosine follow nanoGPT's get_lr: lr = peak*(it+1)/(warmup+1)
while it < warmup, then a cosine from peak to min_lr that reaches min_lr at
the decay horizon (lr_decay_iters; by default the last step) and stays there.

The training loop asks `schedule.at(step)` before every optimizer step. The
schedule of a run comes from lr_schedule_for(): the configured LR_SCHEDULE
("per-model": upstream's choice for the model, its lr_schedule in the model
registry, lib/models.py, which the caller passes in), except
that AdamWAdv (alone or as AdamWPrune's base) anneals to its own
ADV_COSINE_ETA_MIN when ADV_USE_COSINE_ANNEALING is set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from lib.spec import AdvParams, OptimizerParams, TrainingSettings

KINDS = ("constant", "cosine", "step")


@dataclass(frozen=True)
class LRSchedule:
    peak: float
    kind: str = "constant"
    total_steps: int = 0
    warmup_steps: int = 0
    min_lr: float = 0.0
    step_every: int = 0  # "step": multiply by gamma every this many steps
    gamma: float = 0.1
    decay_steps: int = 0  # cosine horizon: min_lr from this step on (nanoGPT's lr_decay_iters); 0 = total_steps

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown learning-rate schedule {self.kind!r} (have: {', '.join(KINDS)})")
        if self.kind == "step" and self.step_every < 1:  # would silently stay constant
            raise ValueError(f"a step schedule needs step_every >= 1, not {self.step_every}")

    def at(self, step: int) -> float:
        """Learning rate for optimizer step `step` (0-based)."""
        if step < self.warmup_steps:
            # nanoGPT's linear warm-up: never 0 at step 0, and peak only at the first step after it
            return self.peak * (step + 1) / (self.warmup_steps + 1)
        if self.kind == "cosine":
            span = max(1, (self.decay_steps or self.total_steps) - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return self.min_lr + 0.5 * (self.peak - self.min_lr) * (1.0 + math.cos(math.pi * progress))
        if self.kind == "step":
            return self.peak * self.gamma ** ((step - self.warmup_steps) // self.step_every)
        return self.peak


def peak_lr(optimizer_params: OptimizerParams, training: TrainingSettings) -> float:
    """The optimizer's own <OPT>_LEARNING_RATE, or the shared LEARNING_RATE when it is 0 (None)."""
    return optimizer_params.learning_rate or training.learning_rate


def schedule_kind(training: TrainingSettings, per_model: str) -> str:
    """LR_SCHEDULE of a run, "per-model" resolved to `per_model` (the model's, from the registry)."""
    return per_model if training.lr_schedule == "per-model" else training.lr_schedule


def _adv(optimizer: str, params: OptimizerParams) -> AdvParams | None:
    """AdamWAdv's settings when the run's optimizer is AdamWAdv, alone or as AdamWPrune's base."""
    return params.adv if optimizer == "adamwadv" or (optimizer == "adamwprune" and params.base == "adamwadv") else None


def uses_adv_annealing(optimizer: str, params: OptimizerParams) -> bool:
    adv = _adv(optimizer, params)
    return adv is not None and adv.cosine_annealing


def schedule_label(optimizer: str, optimizer_params: OptimizerParams, training: TrainingSettings,
                   per_model: str) -> str:
    """The decay a run gets (for the dry run): AdamWAdv's annealing or the resolved LR_SCHEDULE."""
    return "cosine" if uses_adv_annealing(optimizer, optimizer_params) else schedule_kind(training, per_model)


def lr_schedule_for(optimizer: str, optimizer_params: OptimizerParams, training: TrainingSettings, total_steps: int,
                    warmup_steps: int = 0, min_lr: float | None = None, decay_steps: int = 0,
                    per_model: str = "cosine") -> LRSchedule:
    """The schedule of one run: LR_SCHEDULE (cosine floors at 1% of the peak unless `min_lr`,
    and reaches its floor at `decay_steps`, 0 = the last step), or AdamWAdv's."""
    peak = peak_lr(optimizer_params, training)
    adv = _adv(optimizer, optimizer_params)
    if adv is not None and adv.cosine_annealing:
        return LRSchedule(peak, "cosine", total_steps, warmup_steps, min_lr=adv.eta_min)
    kind = schedule_kind(training, per_model)
    return LRSchedule(peak, kind, total_steps, warmup_steps, min_lr=0.01 * peak if min_lr is None else min_lr,
                      step_every=training.lr_step_every, gamma=training.lr_step_gamma,
                      decay_steps=decay_steps)
