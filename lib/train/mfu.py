"""Model FLOPs utilisation (MFU): achieved training FLOP/s over the device's peak.

Achieved FLOP/s = model FLOPs per training sample (forward and backward, as
the model counts them: PaLM appendix B for GPT-2) x samples/s measured by the
loop. The peak is the dense tensor-core figure from NVIDIA's datasheets for
the precision the matmuls run in (bf16/fp16 under autocast, TF32 for fp32
with TF32 allowed, else fp32). This module never invents a peak: on a CPU,
or a GPU missing from the table, MFU is null and the note says why, while the
achieved TFLOP/s are still recorded.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

import torch

# Dense peak TFLOP/s by matmul precision (datasheets, without 2:4 sparsity).
# Patterns are tried in order against torch.cuda.get_device_name().
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    (r"\bH100\b.*\bPCIe\b", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    (r"\bH100\b.*\bNVL\b", {"bf16": 835.0, "tf32": 417.5, "fp32": 60.0}),
    (r"\bH100\b|\bH200\b|\bGH200\b", {"bf16": 989.0, "tf32": 494.5, "fp32": 67.0}),
    (r"\bA100\b", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    (r"\bL4\b", {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    (r"\bA10\b", {"bf16": 125.0, "tf32": 62.5, "fp32": 31.2}),
)


def matmul_precision(precision: str, tf32_allowed: bool) -> str:
    """The PEAK_TFLOPS column for the loop's precision ("bf16-autocast", "fp16-...", "fp32")."""
    if precision.startswith(("bf16", "fp16")):
        return "bf16"  # fp16 and bf16 tensor-core peaks are equal on these GPUs
    return "tf32" if tf32_allowed else "fp32"


def peak_flops(device: torch.device, precision: str, tf32_allowed: bool) -> tuple[Optional[float], str]:
    """(peak FLOP/s of one device, where it comes from) or (None, why there is none)."""
    if device.type != "cuda":
        return None, f"{device.type}: no peak FLOPs figure for this device, MFU not computed"
    name = torch.cuda.get_device_name(device)
    column = matmul_precision(precision, tf32_allowed)
    for pattern, peaks in PEAK_TFLOPS:
        if re.search(pattern, name):
            return peaks[column] * 1e12, f"{name}: {peaks[column]:g} TFLOP/s dense {column} (datasheet)"
    return None, f"{name}: peak FLOPs unknown (not in lib/train/mfu.py PEAK_TFLOPS), MFU not computed"


@dataclass(frozen=True)
class MFUMeter:
    """Turns the loop's samples/s into tokens/s, achieved TFLOP/s and MFU."""

    flops_per_sample: float  # forward + backward of one training sequence
    tokens_per_sample: int
    peak_flops: Optional[float]  # all devices of the run together; None: unknown
    note: str

    @classmethod
    def for_run(cls, flops_per_sample: float, tokens_per_sample: int, device: torch.device, precision: str,
                tf32_allowed: bool, world_size: int = 1) -> "MFUMeter":
        peak, note = peak_flops(device, precision, tf32_allowed)
        if peak is not None and world_size > 1:
            peak, note = peak * world_size, f"{note}, x {world_size} devices"
        return cls(flops_per_sample, tokens_per_sample, peak, note)

    def fields(self, samples_per_s: Optional[float]) -> dict[str, Any]:
        """The evaluation record's throughput fields (all None before any training step)."""
        if not samples_per_s:
            return {"tokens_per_s": None, "achieved_tflops": None, "mfu_pct": None}
        achieved = self.flops_per_sample * samples_per_s
        return {"tokens_per_s": samples_per_s * self.tokens_per_sample, "achieved_tflops": achieved / 1e12,
                "mfu_pct": None if self.peak_flops is None else 100.0 * achieved / self.peak_flops}

    def to_json(self) -> dict[str, Any]:
        return {"flops_per_sample": self.flops_per_sample, "tokens_per_sample": self.tokens_per_sample,
                "peak_tflops": None if self.peak_flops is None else self.peak_flops / 1e12, "note": self.note}
