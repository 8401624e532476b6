"""Data-parallel training across processes started by torchrun (one per GPU).

A trainer calls `init_distributed()` once; without torchrun's environment it
returns a single-process `Dist` and nothing else changes. Every rank computes
the same masks because DDP averages gradients before the optimizer step, so
weights, optimizer state and thus pruning scores stay identical across ranks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from lib.lifeline import die_with_parent


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[Dist, torch.device]:
    """Join torchrun's process group when launched by it; return (Dist, this rank's device)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist(), device
    die_with_parent()  # torchrun's worker: gone with its launcher, the trainer, which dies with the runner
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    torch_dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world_size, local_rank), device


def mean_across_ranks(value: float, dist: Dist, device: torch.device) -> float:
    if not dist.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    torch_dist.all_reduce(tensor)
    return float(tensor) / dist.world_size


def any_rank(flag: bool, dist: Dist, device: torch.device) -> bool:
    """True on every rank when it is true on one (e.g. "the time limit is up")."""
    if not dist.enabled:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def shutdown(dist: Dist) -> None:
    if dist.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
