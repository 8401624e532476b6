"""State pruning through GradualPruner and AdamWPrune on each device, end to end.

A training loop (tests/pruning_loop.py) with bitter7 masks ramping to 70%: the
mask update chunk by chunk (threshold pass, finiteness check, bit packing,
device counts read once) and the optimizer step (the C kernel on CPU, the Triton
kernel on CUDA) must reach the target to the entry, keep every pruned weight
and moment at exactly zero, and give the same result whatever the chunk size
and the mask storage. The CPU half runs everywhere; the CUDA half, with the
mask update at CUDA's chunk size and at one that splits every tensor, on
`make gpu-check`'s machine.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lib.optim import build_optimizer
from lib.pruning import GradualPruner, bitmask
from lib.spec import OptimizerParams
from tests.pruning_loop import train_steps

ADAMWPRUNE = OptimizerParams(learning_rate=None, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, base="adamw")
TARGET, STEPS = 0.7, 40
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def train(device: str, storage: str, chunk_size: int | None = None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 5)).to(device)
    optimizer = build_optimizer("adamwprune", model, 1e-2, ADAMWPRUNE)
    pruner = GradualPruner(model, optimizer, "bitter7", TARGET, warmup_steps=5, ramp_end_step=30, frequency=5,
                           mask_storage=storage, chunk_size=chunk_size)
    train_steps(model, optimizer, pruner, STEPS, inputs=24, classes=5, batch=16, device=device)
    return model, optimizer, pruner


def check_pruned(optimizer, pruner) -> None:
    """At the target to the entry, every pruned weight and moment exactly 0."""
    assert pruner.history[-1]["measured_pct"] == pytest.approx(100 * round(TARGET * pruner.total) / pruner.total)
    for name, keep in pruner.masks.items():
        param = pruner.params[name]
        pruned = ~bitmask.unpack(keep, 0, param.numel()) if keep.dtype == torch.uint8 else ~keep.view(-1)
        for x in (param, optimizer.state[param]["exp_avg"], optimizer.state[param]["exp_avg_sq"]):
            assert not x.reshape(-1)[pruned].any(), name


@pytest.mark.parametrize("device", DEVICES)
def test_state_pruning_is_the_same_whatever_the_chunks_and_the_mask_storage(device):
    model, optimizer, pruner = train(device, "bool")
    check_pruned(optimizer, pruner)
    assert optimizer.fallback_note is None  # the one-pass step: C on CPU, Triton on CUDA
    for storage, chunk_size in (("bits", None), ("bool", 64), ("bits", 64)):  # 64: every tensor in many chunks
        other_model, other_optimizer, other_pruner = train(device, storage, chunk_size)
        check_pruned(other_optimizer, other_pruner)
        assert [h["measured_pct"] for h in other_pruner.history] == [h["measured_pct"] for h in pruner.history]
        for p, q in zip(model.parameters(), other_model.parameters()):
            assert torch.equal(p, q), (storage, chunk_size)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_state_pruning_reaches_what_it_reaches_on_cpu():
    """Same data, same seed: the GPU's scores differ from the CPU's in the last bits, so a few entries at the
    threshold may fall the other way, but the sparsity reached at each update is the same to the entry and
    the masks agree almost everywhere."""
    _, _, cpu = train("cpu", "bits")
    _, _, gpu = train("cuda", "bits")
    assert [h["measured_pct"] for h in gpu.history] == [h["measured_pct"] for h in cpu.history]
    for name in cpu.masks:
        n = cpu.params[name].numel()
        same = bitmask.unpack(cpu.masks[name], 0, n) == bitmask.unpack(gpu.masks[name], 0, n).cpu()
        assert same.float().mean() >= 0.9, name  # random masks at 70% would agree on 58%
