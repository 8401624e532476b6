"""AdamWPrune's step on the AdamW base as one Triton kernel: the CUDA counterpart of masked_adamw.c.

One pass per tensor reads w, g, m, v and the keep mask (bool, or bit-packed:
bit i of byte j keeps entry 8j + i, lib/pruning/bitmask.py) and writes w, m,
v: decoupled weight decay, both moments, the bias-corrected update, with the
mask applied to the gradient and to all three outputs. That is 28 bytes per
weight plus 1 (bool) or 1/8 (bits), against 28 + 9 for masking the gradients
in a separate pass before torch's fused step. Arithmetic is float32 per entry
like torch's CUDA fused AdamW (not bit for bit: the order of operations is
torch's foreach/for-loop AdamW's); the bias corrections are computed once per
program in float64 from the step count the kernel reads on the device, so no
host sync is needed.

Triton is optional (docs/performance.md): without it, or off CUDA, callers
keep their other path. Tests run the kernel on CPU tensors under
TRITON_INTERPRET=1 (set before this module is imported). Its speed on a GPU
is unmeasured until `make gpu-check` runs on one.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

try:
    import triton
    import triton.language as tl
    _MISSING: Optional[str] = None
except ImportError as exc:  # optional dependency
    triton, tl, _MISSING = None, None, f"triton is not installed ({exc})"

BLOCK = 1024  # entries per program: a multiple of 8, so a program's mask bytes are its own
# Per-group scalars handed to the kernel as one float64 tensor (Triton passes Python floats as float32,
# which would put 1e-5 relative error into 1 - beta2**t at beta2 = 0.999).
LR, BETA1, BETA2, EPS, DECAY, LOG_BETA1, LOG_BETA2 = range(7)


def unavailable() -> Optional[str]:
    """None when the kernel can run, else why not."""
    return _MISSING


if triton is not None:
    @triton.jit
    def _masked_adamw(w_ptr, g_ptr, m_ptr, v_ptr, keep_ptr, step_ptr, scalars_ptr, n,
                      HAS_MASK: tl.constexpr, MASK_BITS: tl.constexpr, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        inside = offsets < n
        # The step count was advanced before the launch; beta**t = exp(t * log(beta)) in float64.
        step = tl.load(step_ptr).to(tl.float64)
        lr = tl.load(scalars_ptr + LR)
        bias_correction1 = 1.0 - tl.exp(step * tl.load(scalars_ptr + LOG_BETA1))
        bias_correction2_sqrt = tl.sqrt(1.0 - tl.exp(step * tl.load(scalars_ptr + LOG_BETA2)))
        step_size = (lr / bias_correction1).to(tl.float32)
        decay = (1.0 - lr * tl.load(scalars_ptr + DECAY)).to(tl.float32)
        # 1 - beta in float64, then rounded, as torch does (1 - float32(0.999) is 1.3e-5 off 0.001).
        one_minus_beta1 = (1.0 - tl.load(scalars_ptr + BETA1)).to(tl.float32)
        beta2 = tl.load(scalars_ptr + BETA2)
        one_minus_beta2 = (1.0 - beta2).to(tl.float32)
        beta2 = beta2.to(tl.float32)
        eps = tl.load(scalars_ptr + EPS).to(tl.float32)

        w = tl.load(w_ptr + offsets, mask=inside, other=0.0)
        g = tl.load(g_ptr + offsets, mask=inside, other=0.0)
        m = tl.load(m_ptr + offsets, mask=inside, other=0.0)
        v = tl.load(v_ptr + offsets, mask=inside, other=0.0)
        if HAS_MASK:
            if MASK_BITS:
                byte = tl.load(keep_ptr + offsets // 8, mask=inside, other=0)
                keep = ((byte >> (offsets % 8).to(tl.uint8)) & 1) != 0
            else:
                keep = tl.load(keep_ptr + offsets, mask=inside, other=0) != 0
            g = tl.where(keep, g, 0.0)
        w = w * decay
        m = m + one_minus_beta1 * (g - m)  # torch's lerp for weights < 0.5
        v = v * beta2 + one_minus_beta2 * g * g
        w = w - step_size * m / (tl.sqrt(v) / bias_correction2_sqrt.to(tl.float32) + eps)
        if HAS_MASK:
            w = tl.where(keep, w, 0.0)
            m = tl.where(keep, m, 0.0)
            v = tl.where(keep, v, 0.0)
        tl.store(w_ptr + offsets, w, mask=inside)
        tl.store(m_ptr + offsets, m, mask=inside)
        tl.store(v_ptr + offsets, v, mask=inside)


def group_scalars(lr: float, betas: tuple[float, float], eps: float, weight_decay: float,
                  device: torch.device) -> torch.Tensor:
    """The kernel's per-group float64 scalars (indices LR .. LOG_BETA2)."""
    beta1, beta2 = betas
    values = [lr, beta1, beta2, eps, weight_decay, math.log(beta1), math.log(beta2)]
    return torch.tensor(values, dtype=torch.float64).to(device, non_blocking=True)


def step_tensor(w: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, keep: Optional[torch.Tensor],
                step: torch.Tensor, scalars: torch.Tensor) -> None:
    """One masked AdamW step of contiguous float32 w (m, v updated in place); `step` already advanced.

    keep: None (dense), a bool tensor of w's shape, or its ceil(n/8) packed bytes (uint8).
    """
    n = w.numel()
    bits = keep is not None and keep.dtype == torch.uint8
    keep_arg = w if keep is None else (keep if bits else keep.view(torch.uint8))  # unread when dense
    _masked_adamw[(triton.cdiv(n, BLOCK),)](w, g, m, v, keep_arg, step, scalars, n,
                                            HAS_MASK=keep is not None, MASK_BITS=bits, BLOCK=BLOCK)
