"""Elementwise operations with bool masks that stay fast on CPU.

torch multiplies a float tensor by a bool one through a slow casting path on
CPU (about 8x a float-by-float multiply on 124M entries, compiled or not);
NumPy's float-by-bool multiply is vectorised and releases the GIL, so on CPU
float tensors go through zero-copy NumPy views, split into chunks over as
many threads as torch uses. Elsewhere (CUDA, bf16) torch does it directly.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Iterable

import numpy as np
import torch

_NUMPY_DTYPES = (torch.float32, torch.float64, torch.float16)
_CHUNK = 1 << 20  # entries per task: big enough to amortise the hand-off


@lru_cache(maxsize=None)
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="mask")


def _numpy_pair(tensor: torch.Tensor, keep: torch.Tensor) -> tuple[np.ndarray, np.ndarray] | None:
    if (tensor.device.type != "cpu" or tensor.dtype not in _NUMPY_DTYPES or keep.dtype != torch.bool
            or keep.device.type != "cpu" or not tensor.is_contiguous() or not keep.is_contiguous()):
        return None
    return tensor.detach().view(-1).numpy(), keep.view(-1).numpy()


def _multiply(task: tuple[np.ndarray, np.ndarray]) -> None:
    np.multiply(task[0], task[1], out=task[0])


@torch.no_grad()
def zero_pruned_(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """For each (tensor, keep): tensor *= keep in place, so pruned entries become exactly 0."""
    tasks = []
    for tensor, keep in pairs:
        arrays = _numpy_pair(tensor, keep)
        if arrays is None:
            tensor.mul_(keep)
            continue
        values, mask = arrays
        tasks.extend((values[i:i + _CHUNK], mask[i:i + _CHUNK]) for i in range(0, values.size, _CHUNK))
    workers = torch.get_num_threads()
    if workers > 1 and len(tasks) > 1:
        list(_pool(workers).map(_multiply, tasks))
    else:
        for task in tasks:
            _multiply(task)
