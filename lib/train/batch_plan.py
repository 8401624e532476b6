"""Micro-batch size and gradient accumulation: as configured, or sized to the GPU.

Manual mode (HYPER_PARAM_MANUAL) takes BATCH_SIZE per step per process and
GRADIENT_ACCUMULATION as configured. Auto mode (HYPER_PARAM_AUTO) keeps the
effective batch at TARGET_EFFECTIVE_BATCH = micro-batch x accumulation x GPUs
and picks the largest power-of-two micro-batch whose estimated activation
memory fits in 60% of what the GPU has free after weights, gradients and
optimizer state. The per-sample figures are estimates from measured runs
(docs/performance.md), scaled by model width and context where that matters,
which is why the plan is printed and recorded rather than trusted silently.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

from lib.models import model_entry
from lib.spec import TrainingSettings

# The per-sample activation figures are the model registry's (lib/models.py).
GPT2_124M_WIDTH = 12 * 768  # n_layer x n_embd of the model the GPT-2 figure was measured on
USABLE_FRACTION = 0.6
STATE_BYTES_PER_PARAM = 16  # fp32 weight + gradient + two Adam moments


@dataclass(frozen=True)
class BatchPlan:
    micro_batch: int
    grad_accum: int
    world_size: int
    mode: str  # manual | auto
    reason: str

    @property
    def effective_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.world_size

    def describe(self) -> str:
        return (f"batch plan ({self.mode}): micro-batch {self.micro_batch} x accumulation {self.grad_accum} "
                f"x {self.world_size} process(es) = effective {self.effective_batch}; {self.reason}")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "effective_batch": self.effective_batch}


def activation_mib(model: str, model_params: dict[str, Any], n_layer: int = 12, n_embd: int = 768) -> float:
    per_sample = model_entry(model).activation_mib_per_sample
    if model_entry(model).activation_scales_with_width:
        per_sample *= (n_layer * n_embd / GPT2_124M_WIDTH) * (model_params.get("block_size", 1024) / 1024)
    return per_sample


def plan_batch(model: str, training: TrainingSettings, *, world_size: int = 1, free_gpu_mib: Optional[float] = None,
               num_params: int = 0, per_sample_mib: Optional[float] = None) -> BatchPlan:
    """The run's batch plan; `free_gpu_mib` None means no GPU (auto mode then keeps BATCH_SIZE)."""
    if not training.hyper_param_auto:
        return BatchPlan(training.batch_size, training.grad_accum, world_size, "manual",
                         "as configured (BATCH_SIZE, GRADIENT_ACCUMULATION)")
    target = training.target_effective_batch
    if free_gpu_mib is None:
        micro = min(training.batch_size, target)
        reason = "no GPU detected: BATCH_SIZE kept as the micro-batch"
    else:
        per_sample = per_sample_mib if per_sample_mib is not None else model_entry(model).activation_mib_per_sample
        budget = USABLE_FRACTION * (free_gpu_mib - num_params * STATE_BYTES_PER_PARAM / 2**20)
        fits = max(1, int(budget // per_sample)) if budget > 0 else 1
        per_process = max(1, target // world_size)
        micro = 2 ** int(math.log2(min(fits, per_process)))
        reason = (f"{free_gpu_mib:,.0f} MiB free on the GPU, ~{per_sample:,.1f} MiB per sample estimated, "
                  f"{micro} fit in {USABLE_FRACTION:.0%} of what the model state leaves")
    accum = max(1, math.ceil(target / (micro * world_size)))
    return BatchPlan(micro, accum, world_size, "auto", f"target effective batch {target}; {reason}")


def free_gpu_mib(device: Any) -> Optional[float]:
    """Free memory of the run's GPU (MiB), or None on a CPU."""
    import torch

    if getattr(device, "type", "cpu") != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free / 2**20
