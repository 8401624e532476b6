"""Elementwise operations with keep masks (bool or bit-packed, lib/pruning/bitmask.py) that stay fast on CPU.

torch multiplies a float tensor by a bool one through a slow casting path on
CPU (about 8x a float-by-float multiply on 124M entries, compiled or not);
NumPy's float-by-bool multiply is vectorised and releases the GIL, so on CPU
float tensors go through zero-copy NumPy views, split into chunks over as
many threads as torch uses; a bit mask is unpacked one chunk at a time
(numpy.unpackbits) inside each task. Elsewhere (CUDA, bf16) torch does it
directly, a bit mask unpacked chunk by chunk.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Iterable

import numpy as np
import torch

from lib.pruning.bitmask import is_packed, unpack

_NUMPY_DTYPES = (torch.float32, torch.float64, torch.float16)
_CHUNK = 1 << 20  # entries per task: big enough to amortise the hand-off


@lru_cache(maxsize=None)
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="mask")


def _numpy_pair(tensor: torch.Tensor, keep: torch.Tensor) -> tuple[np.ndarray, np.ndarray] | None:
    if (tensor.device.type != "cpu" or tensor.dtype not in _NUMPY_DTYPES or keep.dtype not in (torch.bool, torch.uint8)
            or keep.device.type != "cpu" or not tensor.is_contiguous() or not keep.is_contiguous()):
        return None
    return tensor.detach().view(-1).numpy(), keep.view(-1).numpy()


def _multiply(task: tuple[np.ndarray, np.ndarray]) -> None:
    values, keep = task
    if keep.dtype == np.uint8:  # bit-packed: this chunk's bytes, unpacked to one 0/1 byte per entry
        keep = np.unpackbits(keep, count=values.size, bitorder="little")
    np.multiply(values, keep, out=values)


def _chunk_tasks(values: np.ndarray, keep: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    # _CHUNK is a multiple of 8, so every chunk of a bit mask starts on a byte.
    step = 8 if keep.dtype == np.uint8 else 1
    return [(values[i:i + _CHUNK], keep[i // step:(min(i + _CHUNK, values.size) + step - 1) // step])
            for i in range(0, values.size, _CHUNK)]


def _torch_multiply_(tensor: torch.Tensor, keep: torch.Tensor) -> None:
    if not is_packed(keep):
        tensor.mul_(keep)
        return
    if not tensor.is_contiguous():  # bits follow the logical (row-major) order, which no flat view has here:
        tensor.mul_(unpack(keep, 0, tensor.numel()).view(tensor.shape))  # one bool copy, on this rare path
        return
    flat = tensor.view(-1)  # a bit mask describes the contiguous flat order
    for start in range(0, flat.numel(), _CHUNK):
        end = min(start + _CHUNK, flat.numel())
        flat[start:end].mul_(unpack(keep, start, end))


@torch.no_grad()
def zero_pruned_(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """For each (tensor, keep): tensor *= keep in place, so pruned entries become exactly 0."""
    tasks = []
    for tensor, keep in pairs:
        arrays = _numpy_pair(tensor, keep)
        if arrays is None:
            _torch_multiply_(tensor, keep)
            continue
        tasks.extend(_chunk_tasks(*arrays))
    workers = torch.get_num_threads()
    if workers > 1 and len(tasks) > 1:
        list(_pool(workers).map(_multiply, tasks))
    else:
        for task in tasks:
            _multiply(task)
