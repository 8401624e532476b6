"""The few lines of a pruned training loop that optimizer and mask tests share."""
from __future__ import annotations

import torch
from torch import nn


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, pruner, steps: int, *, inputs: int,
                classes: int, batch: int, seed: int = 1, device: str = "cpu") -> None:
    """`steps` steps on random data from a seeded generator (the same on every device): backward, pruner,
    step, mask update."""
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        x, y = torch.randn(batch, inputs, generator=gen), torch.randint(0, classes, (batch,), generator=gen)
        x, y = x.to(device), y.to(device)
        nn.functional.cross_entropy(model(x), y).backward()
        pruner.before_optimizer_step()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        pruner.after_optimizer_step(step + 1)
