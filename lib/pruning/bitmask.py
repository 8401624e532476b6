"""Keep masks in either storage: bool (one byte per entry) or bits (eight per byte).

A mask is a bool tensor of its parameter's shape, or a flat uint8 tensor of
ceil(n/8) bytes in little bit order: bit i of byte j keeps entry 8j + i (the
layout of numpy.packbits(..., bitorder="little")), padding bits 0. The dtype
says which, so checkpoints and kernels need no other flag. Bits make the mask
1/32 of fp32 weights (the 0.03x of AdamWPrune's 3.03x memory claim) instead
of 1/4.

Everything here works chunk by chunk on flat ranges [start, end) whose start
is a multiple of 8, so no bool temporary of a whole tensor is ever made.
This module owns the format only; which entries are kept is the pruner's.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

STORAGES = ("bool", "bits")
_CHUNK = 1 << 20  # entries per unpacked temporary in whole-tensor helpers


def packed_bytes(n: int) -> int:
    return (n + 7) // 8


def is_packed(mask: torch.Tensor) -> bool:
    return mask.dtype == torch.uint8


@lru_cache(maxsize=None)
def _shifts(device: torch.device) -> torch.Tensor:
    return torch.arange(8, dtype=torch.uint8, device=device)


def full(param: torch.Tensor, storage: str) -> torch.Tensor:
    """A mask that keeps every entry of `param`."""
    if storage == "bool":
        return torch.ones_like(param, dtype=torch.bool)
    if storage != "bits":
        raise ValueError(f"unknown mask storage {storage!r} (have: {', '.join(STORAGES)})")
    n = param.numel()
    mask = torch.full((packed_bytes(n),), 0xFF, dtype=torch.uint8, device=param.device)
    if n % 8:
        mask[-1] = (1 << (n % 8)) - 1  # padding bits stay 0, so counting bits counts entries
    return mask


def pack_(keep: torch.Tensor, out: torch.Tensor) -> None:
    """Pack the flat bool chunk `keep` into the uint8 bytes `out` (ceil(len/8) of them), in place."""
    if keep.device.type == "cpu":  # numpy's packbits: about 150x torch's shift-and-sum on CPU (measured)
        out.numpy()[:] = np.packbits(keep.numpy(), bitorder="little")
    else:
        _pack_torch(keep, out)


def _pack_torch(keep: torch.Tensor, out: torch.Tensor) -> None:
    n, whole = keep.numel(), keep.numel() // 8
    bits = keep.view(torch.uint8)
    if whole:
        # Each entry's 0/1 shifted to its bit; the eight bits of a byte are disjoint, so sum = or.
        torch.sum(bits[:whole * 8].view(whole, 8) << _shifts(keep.device), dim=1, dtype=torch.uint8,
                  out=out[:whole])
    if n % 8:
        tail = bits[whole * 8:] << _shifts(keep.device)[:n % 8]
        out[whole] = tail.sum(dtype=torch.uint8)


def unpack(packed: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Entries [start, end) of a bit mask as a new flat bool tensor; start must be a multiple of 8."""
    if start % 8:
        raise ValueError(f"a bit-mask chunk must start at a multiple of 8, not {start}")
    data = packed[start // 8:packed_bytes(end)]
    if data.device.type == "cpu":
        return torch.from_numpy(np.unpackbits(data.numpy(), count=end - start, bitorder="little")).view(torch.bool)
    return _unpack_torch(data, end - start)


def _unpack_torch(data: torch.Tensor, n: int) -> torch.Tensor:
    bits = (data.unsqueeze(1) >> _shifts(data.device)) & 1
    return bits.view(-1)[:n].view(torch.bool)


def read(mask: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Entries [start, end) as flat bools: a view of a bool mask, an unpacked copy of a bit mask."""
    return unpack(mask, start, end) if is_packed(mask) else mask.view(-1)[start:end]


def write(mask: torch.Tensor, start: int, keep: torch.Tensor) -> None:
    """Store the flat bool chunk `keep` as entries [start, start + len(keep)) of `mask`."""
    end = start + keep.numel()
    if not is_packed(mask):
        target = mask.view(-1)[start:end]
        if target.data_ptr() != keep.data_ptr():
            target.copy_(keep)
        return
    if start % 8:
        raise ValueError(f"a bit-mask chunk must start at a multiple of 8, not {start}")
    pack_(keep, mask[start // 8:packed_bytes(end)])


def gather(mask: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The flat entries at `index` (int64) as bools."""
    if not is_packed(mask):
        return mask.view(-1)[index]
    return ((mask[index >> 3] >> (index & 7).to(torch.uint8)) & 1).view(torch.bool)


def count_kept(mask: torch.Tensor) -> int:
    """Entries the mask keeps (padding bits are 0, so a bit mask counts only its entries)."""
    return int(kept(mask))


def kept(mask: torch.Tensor) -> torch.Tensor:
    """count_kept as a 0-dim int64 tensor where the mask is, not read back: many masks' counts can then be
    read at once (on a GPU each read waits for the device)."""
    if not is_packed(mask):
        return torch.count_nonzero(mask)
    n = mask.numel() * 8
    counts = [torch.count_nonzero(unpack(mask, start, min(start + _CHUNK, n))) for start in range(0, n, _CHUNK)]
    return torch.stack(counts).sum() if counts else torch.zeros((), dtype=torch.int64, device=mask.device)


def convert(mask: torch.Tensor, param: torch.Tensor, storage: str) -> torch.Tensor:
    """`mask` in `storage` for `param` (a checkpoint written with the other storage), chunk by chunk."""
    if (storage == "bits") == is_packed(mask):
        return mask
    out = full(param, storage)
    n = param.numel()
    for start in range(0, n, _CHUNK):
        write(out, start, read(mask, start, min(start + _CHUNK, n)))
    return out
