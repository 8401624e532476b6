"""AdamWPrune's step on the AdamW and AdamWSPAM bases as one Triton kernel each: the CUDA counterpart of masked_adamw.c.

One pass over each tensor reads w, g, m, v and the keep mask (bool, or bit-packed:
bit i of byte j keeps entry 8j + i, lib/pruning/bitmask.py) and writes w, m,
v: decoupled weight decay, both moments, the bias-corrected update, with the
mask applied to the gradient and to all three outputs. That is 28 bytes per
weight plus 1 (bool) or 1/8 (bits), against 28 + 9 for masking the gradients
in a separate pass before torch's fused step. Arithmetic is float32 per entry
like torch's CUDA fused AdamW (not bit for bit: the order of operations is
torch's foreach/for-loop AdamW's); the scalars (bias corrections included)
come as float32 rows computed on the host in float64, as torch's fused AdamW
computes its own, from host copies of the step counts
(lib/optim/triton_binding.py), so the kernel itself uses no float64 and the
step no host sync.

The AdamWSPAM kernel (_masked_spam, lib/optim/fused_masked_spam.py) is the
same pass with SPAM's step (lib/optim/spam.py) in between: the momentum reset
(m = v = 0 on a reset step), the spike-aware clipping against this step's v
before its update (on clipping steps), both moments in the reference's order,
the update with eps on the uncorrected sqrt(v) and the warm-up scale, then
the decay with the un-warmed lr. Everything per entry is elementwise; what
changes from step to step (reset and clipping flags, warm-up scale, bias
corrections from the parameter's integer step count) is computed on the host
in float64, as AdamWSPAM does, and passed as float32 kernel arguments: SPAM
keeps its counts as Python ints, so there is no device count to read. Both
kernels read the mask through one helper (keep_mask).

MaskedAdamW steps all its tensors through _masked_adamw_multi, one launch per
mask kind (MultiTensorPlan, kept between steps by triton_binding.Binding): a
launch per tensor cost more than the step on an H200 (docs/performance.md). Triton is optional: without it, or off CUDA,
callers keep their other path. Tests run the kernels on CPU tensors under
TRITON_INTERPRET=1 (set before this module is imported), and on CUDA tensors
where there is a GPU (tests/test_triton_cuda.py).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy
import torch

try:
    import triton
    import triton.language as tl
    _MISSING: Optional[str] = None
except ImportError as exc:  # optional dependency
    triton, tl, _MISSING = None, None, f"triton is not installed ({exc})"

BLOCK = 1024  # entries per program: a multiple of 8, so a program's mask bytes are its own
# A tensor's float32 scalars, one row per tensor, in the order the kernel reads them (offsets 0..6 there).
COLUMNS = ("step_size", "decay", "one_minus_beta1", "beta2", "one_minus_beta2", "bias_correction2_sqrt", "eps")
# A SPAM kernel row (spam_scalars), in the order the kernel reads them; its reset and clip flags follow the table.
SPAM_COLUMNS = ("neg_step_size", "neg_decay", "beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "eps", "theta")
# The multi-tensor kernels by name: (the kernel's name in this module, the columns of its scalar rows).
KERNELS = {"adamw": ("_masked_adamw_multi", COLUMNS), "spam": ("_masked_spam_multi", SPAM_COLUMNS)}


def unavailable() -> Optional[str]:
    """None when the kernel can run, else why not."""
    return _MISSING


if triton is not None:
    @triton.jit
    def keep_mask(keep_ptr, offsets, inside, MASK_BITS: tl.constexpr):
        # The keep mask at `offsets`, True = keep: one byte per entry (bool), or bits, little bit order
        # (bit i of byte j keeps entry 8j + i, lib/pruning/bitmask.py). Shared by both kernels.
        if MASK_BITS:
            byte = tl.load(keep_ptr + offsets // 8, mask=inside, other=0)
            keep = ((byte >> (offsets % 8).to(tl.uint8)) & 1) != 0
        else:
            keep = tl.load(keep_ptr + offsets, mask=inside, other=0) != 0
        return keep

    @triton.jit
    def load_masked(w_ptr, g_ptr, m_ptr, v_ptr, keep_ptr, offsets, inside,
                    HAS_MASK: tl.constexpr, MASK_BITS: tl.constexpr):
        # Weight, gradient and moments at `offsets`, and the keep mask (all True without one);
        # the gradient of pruned entries reads as 0.
        w = tl.load(w_ptr + offsets, mask=inside, other=0.0)
        g = tl.load(g_ptr + offsets, mask=inside, other=0.0)
        m = tl.load(m_ptr + offsets, mask=inside, other=0.0)
        v = tl.load(v_ptr + offsets, mask=inside, other=0.0)
        keep = inside
        if HAS_MASK:
            keep = keep_mask(keep_ptr, offsets, inside, MASK_BITS)
            g = tl.where(keep, g, 0.0)
        return w, g, m, v, keep

    @triton.jit
    def store_masked(w_ptr, m_ptr, v_ptr, offsets, inside, w, m, v, keep, HAS_MASK: tl.constexpr):
        # The new weight and moments, pruned entries written as 0 in the same pass.
        if HAS_MASK:
            w = tl.where(keep, w, 0.0)
            m = tl.where(keep, m, 0.0)
            v = tl.where(keep, v, 0.0)
        tl.store(w_ptr + offsets, w, mask=inside)
        tl.store(m_ptr + offsets, m, mask=inside)
        tl.store(v_ptr + offsets, v, mask=inside)

    @triton.jit
    def _program(w_ptrs, g_ptrs, m_ptrs, v_ptrs, keep_ptrs, numels, rows, tensor_of_block, block_in_tensor,
                 scalars_ptr, WIDTH: tl.constexpr, BLOCK: tl.constexpr):
        # Many tensors in one launch, as torch's fused step does: program i steps block
        # block_in_tensor[i] of tensor t = tensor_of_block[i], whose addresses are read from the
        # pointer tables and whose scalars are row rows[t] (WIDTH floats) of the scalars table
        # (MultiTensorPlan). Returns its pointers, its row, its offsets and which are inside t.
        pid = tl.program_id(0)
        t = tl.load(tensor_of_block + pid)
        offsets = tl.load(block_in_tensor + pid).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offsets < tl.load(numels + t)
        return (tl.load(w_ptrs + t).to(tl.pointer_type(tl.float32)),
                tl.load(g_ptrs + t).to(tl.pointer_type(tl.float32)),
                tl.load(m_ptrs + t).to(tl.pointer_type(tl.float32)),
                tl.load(v_ptrs + t).to(tl.pointer_type(tl.float32)),
                tl.load(keep_ptrs + t).to(tl.pointer_type(tl.uint8)),
                scalars_ptr + tl.load(rows + t) * WIDTH, offsets, inside)

    @triton.jit
    def _masked_adamw_multi(w_ptrs, g_ptrs, m_ptrs, v_ptrs, keep_ptrs, numels, rows, tensor_of_block,
                            block_in_tensor, scalars_ptr,
                            HAS_MASK: tl.constexpr, MASK_BITS: tl.constexpr, BLOCK: tl.constexpr):
        # The masked AdamW step of one block of one tensor; rows of COLUMNS (7).
        w_ptr, g_ptr, m_ptr, v_ptr, keep_ptr, row, offsets, inside = _program(
            w_ptrs, g_ptrs, m_ptrs, v_ptrs, keep_ptrs, numels, rows, tensor_of_block, block_in_tensor, scalars_ptr,
            7, BLOCK)
        step_size = tl.load(row + 0)  # COLUMNS, in order
        decay = tl.load(row + 1)
        one_minus_beta1 = tl.load(row + 2)
        beta2 = tl.load(row + 3)
        one_minus_beta2 = tl.load(row + 4)
        bias_correction2_sqrt = tl.load(row + 5)
        eps = tl.load(row + 6)

        w, g, m, v, keep = load_masked(w_ptr, g_ptr, m_ptr, v_ptr, keep_ptr, offsets, inside, HAS_MASK, MASK_BITS)
        w = w * decay
        m = m + one_minus_beta1 * (g - m)  # torch's lerp for weights < 0.5
        v = v * beta2 + one_minus_beta2 * g * g
        w = w - step_size * m / (tl.sqrt(v) / bias_correction2_sqrt + eps)
        store_masked(w_ptr, m_ptr, v_ptr, offsets, inside, w, m, v, keep, HAS_MASK)

    @triton.jit(do_not_specialize=["reset", "clip"])  # flags: 0 and 1 share one compiled kernel
    def _masked_spam_multi(w_ptrs, g_ptrs, m_ptrs, v_ptrs, keep_ptrs, numels, rows, tensor_of_block,
                           block_in_tensor, scalars_ptr, reset, clip,
                           HAS_MASK: tl.constexpr, MASK_BITS: tl.constexpr, BLOCK: tl.constexpr):
        # AdamWSPAM._update (lib/optim/spam.py), operation for operation, masked like _masked_adamw_multi;
        # rows of SPAM_COLUMNS (8); reset and clip are this step's, the same for every tensor.
        w_ptr, g_ptr, m_ptr, v_ptr, keep_ptr, row, offsets, inside = _program(
            w_ptrs, g_ptrs, m_ptrs, v_ptrs, keep_ptrs, numels, rows, tensor_of_block, block_in_tensor, scalars_ptr,
            8, BLOCK)
        neg_step_size = tl.load(row + 0)  # SPAM_COLUMNS, in order
        neg_decay = tl.load(row + 1)
        beta1 = tl.load(row + 2)
        one_minus_beta1 = tl.load(row + 3)
        beta2 = tl.load(row + 4)
        one_minus_beta2 = tl.load(row + 5)
        eps = tl.load(row + 6)
        theta = tl.load(row + 7)

        w, g, m, v, keep = load_masked(w_ptr, g_ptr, m_ptr, v_ptr, keep_ptr, offsets, inside, HAS_MASK, MASK_BITS)
        restart = reset != 0  # momentum reset: m = v = 0 (where, not a product: a non-finite m goes too)
        m = tl.where(restart, 0.0, m)
        v = tl.where(restart, 0.0, v)
        limit = v * theta  # spike-aware clipping against this step's v before its update
        root = tl.sqrt(limit)
        spike = (g * g > limit) & (clip != 0)
        g = tl.where(spike, tl.where(g < 0, -root, root), g)  # sign(g) * sqrt(theta * v); g != 0 there
        m = m * beta1 + one_minus_beta1 * g
        v = v * beta2 + one_minus_beta2 * g * g
        w = w + neg_step_size * (m / (tl.sqrt(v) + eps))  # eps on the uncorrected sqrt(v); warm-up in the step
        w = w + neg_decay * w  # decay after the update, with the un-warmed lr
        store_masked(w_ptr, m_ptr, v_ptr, offsets, inside, w, m, v, keep, HAS_MASK)


def _mask_argument(w: torch.Tensor, keep: Optional[torch.Tensor]) -> tuple[torch.Tensor, bool, bool]:
    """(the tensor the kernel reads as its keep_ptr, HAS_MASK, MASK_BITS) for keep: None, bools or packed bytes."""
    bits = keep is not None and keep.dtype == torch.uint8
    keep_arg = w if keep is None else (keep if bits else keep.view(torch.uint8))  # unread when dense
    return keep_arg, keep is not None, bits


class MultiTensorPlan:
    """Launch tables for stepping many tensors with one kernel per mask kind (dense, bool, bits).

    Built once from (w, m, v, keep) per tensor and the scalars row each tensor reads, and kept while
    those tensors stay the same (lib/optim/triton_binding.py makes a new one when one changes): per
    kind, device tables of the tensors' addresses, sizes and rows, and for each program its tensor and
    block. Only the gradients' addresses (gradients are freed between steps) and the scalar rows (the
    learning rate and the bias corrections move) change from step to step: step() sends both in one
    copy, from pinned memory on CUDA, as torch sends a batch (the pinned block is reused only once the
    copy is done).
    """

    def __init__(self, tensors: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]],
                 rows: list[int], kernel: str = "adamw"):
        self.kinds: list[tuple[list[int], bool, bool, dict[str, torch.Tensor]]] = []
        self.kernel = kernel  # KERNELS key: looked up at each launch (tests swap the kernels for interpreted ones)
        device = self.device = tensors[0][0].device
        kinds: dict[tuple[bool, bool], list[int]] = {}
        for i, (w, _, _, keep) in enumerate(tensors):
            _, has_mask, bits = _mask_argument(w, keep)
            kinds.setdefault((has_mask, bits), []).append(i)
        self.order = [i for members in kinds.values() for i in members]  # gradients in launch order
        self.row_entries = len(KERNELS[kernel][1]) * (max(rows) + 1)
        # One int64 buffer per step: the gradients' addresses, then the float32 scalar rows (two per entry).
        self.buffer = torch.empty(len(tensors) + (self.row_entries + 1) // 2, dtype=torch.int64, device=device)
        scalars = self.buffer[len(tensors):].view(torch.float32)[:self.row_entries]

        def table(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64, device=device)

        first = 0
        for (has_mask, bits), members in kinds.items():
            # program -> (its tensor, its block there), built on the device: GPT-2 124M has 121,600 blocks
            counts = (table([tensors[i][0].numel() for i in members]) + BLOCK - 1) // BLOCK
            tensor_of_block = torch.repeat_interleave(torch.arange(len(members), device=device), counts)
            first_block = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
            block_in_tensor = torch.arange(tensor_of_block.numel(), device=device) - first_block

            self.kinds.append((members, has_mask, bits, {
                "w": table([tensors[i][0].data_ptr() for i in members]),
                "g": self.buffer[first:first + len(members)],
                "m": table([tensors[i][1].data_ptr() for i in members]),
                "v": table([tensors[i][2].data_ptr() for i in members]),
                "keep": table([_mask_argument(tensors[i][0], tensors[i][3])[0].data_ptr() for i in members]),
                "numels": table([tensors[i][0].numel() for i in members]),
                "rows": table([rows[i] for i in members]), "scalars": scalars,
                "tensor_of_block": tensor_of_block.to(torch.int32), "block_in_tensor": block_in_tensor.to(torch.int32)}))
            first += len(members)

    def step(self, grads: list[torch.Tensor], rows: list[tuple[float, ...]], *flags: int) -> None:
        """One masked step of every tensor; grads in the order the plan was made with, rows of the kernel's
        columns (float64, rounded to float32 here as torch rounds them) as numbered when it was made, flags
        the kernel's per-step arguments after them (SPAM: reset, clip)."""
        host = torch.empty(self.buffer.shape, dtype=torch.int64, pin_memory=self.device.type == "cuda")
        values = host.numpy()
        addresses = list(map(torch.Tensor.data_ptr, grads))
        values[:len(grads)] = [addresses[i] for i in self.order]
        values[len(grads):].view(numpy.float32)[:self.row_entries] = [x for row in rows for x in row]
        self.buffer.copy_(host, non_blocking=True)
        kernel = globals()[KERNELS[self.kernel][0]]
        for members, has_mask, bits, t in self.kinds:
            kernel[(t["tensor_of_block"].numel(),)](
                t["w"], t["g"], t["m"], t["v"], t["keep"], t["numels"], t["rows"], t["tensor_of_block"],
                t["block_in_tensor"], t["scalars"], *flags, HAS_MASK=has_mask, MASK_BITS=bits, BLOCK=BLOCK)


def spam_scalars(step: int, lr: float, betas: tuple[float, float], eps: float, weight_decay: float, scale: float,
                 theta: float) -> tuple[float, ...]:
    """SPAM_COLUMNS for a parameter at its step count `step` (already advanced), in float64 as AdamWSPAM's."""
    beta1, beta2 = betas
    step_size = lr * math.sqrt(1.0 - beta2 ** step) / (1.0 - beta1 ** step)
    neg_decay = -lr * weight_decay if weight_decay > 0 else 0.0
    return (-step_size * scale, neg_decay, beta1, 1.0 - beta1, beta2, 1.0 - beta2, eps, theta)
