"""The Triton masked AdamW step (lib/optim/triton_masked_adamw.py), run on CPU under TRITON_INTERPRET=1.

Against torch.optim.AdamW (for-loop implementation) on masked gradients:
every tensor's w, m and v within 1e-6 of its largest entry (w: or of its
largest starting weight; the kernel does the same float32 operations, and a
weight that crosses zero keeps the rounding error of its larger past, so an
entry-wise relative bound means nothing there), pruned entries exactly 0, for bool
and bit-packed masks, odd sizes and several tensors in two groups. Skipped,
with the reason, where Triton is not installed. Its GPU speed is not tested.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from lib.optim.fused_masked_adamw import MaskedAdamW
from lib.pruning import bitmask
from lib.pruning.mask_ops import zero_pruned_

SHAPES = [(1,), (7,), (3, 11), (1025,)]
BETAS = (0.9, 0.999)


@pytest.fixture(scope="module")
def interpreted():
    """lib.optim.triton_masked_adamw with its kernel built for the interpreter (the variable is read at @jit)."""
    pytest.importorskip("triton", reason="triton is not installed (optional: pip install triton)")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITON_INTERPRET", "1")
        module = importlib.reload(importlib.import_module("lib.optim.triton_masked_adamw"))
        yield module
    importlib.reload(module)  # as compiled for the device again


def tensors(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen).requires_grad_() for shape in SHAPES]


def groups(params):
    return [{"params": params[:2], "weight_decay": 0.0}, {"params": params[2:], "weight_decay": 0.1}]


def masks_of(params, storage, seed=1):
    gen = torch.Generator().manual_seed(seed)
    keep = {p: torch.rand(p.shape, generator=gen) > 0.4 for p in params}
    return keep, {p: bitmask.convert(k, p, storage) for p, k in keep.items()}


def train(optimizer, params, masks, two_pass, steps=5, seed=2):
    gen = torch.Generator().manual_seed(seed)
    zero_pruned_([(p.data, keep) for p, keep in masks.items()])
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = 1e-2 * (step + 1) / steps
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        if two_pass:
            zero_pruned_((p.grad, keep) for p, keep in masks.items())
        elif masks:
            optimizer.set_masks(masks)
        optimizer.step()


def assert_close(ours, reference, a, b, starts):
    for p, q, start in zip(a, b, starts):
        assert (p - q).abs().max() <= 1e-6 * max(q.abs().max(), start), tuple(p.shape)
        for key in ("exp_avg", "exp_avg_sq"):
            x, y = ours.state[p][key], reference.state[q][key]
            assert (x - y).abs().max() <= 1e-6 * y.abs().max(), (tuple(p.shape), key)
        assert float(ours.state[p]["step"]) == float(reference.state[q]["step"])


@pytest.mark.parametrize("storage", ["bool", "bits"])
def test_kernel_matches_torch_adamw_on_masked_gradients(interpreted, storage, monkeypatch):
    monkeypatch.setattr(MaskedAdamW, "TRITON_DEVICES", ("cpu",))
    params, expected = tensors(), tensors()
    ours = MaskedAdamW(groups(params), lr=1e-2, betas=BETAS)
    reference = torch.optim.AdamW(groups(expected), lr=1e-2, betas=BETAS, foreach=False)
    keep, stored = masks_of(params, storage)
    starts = [p.detach().abs().max() for p in expected]
    train(ours, params, stored, two_pass=False)
    train(reference, expected, masks_of(expected, "bool")[0], two_pass=True)
    assert ours.fallback_note is None
    assert_close(ours, reference, params, expected, starts)
    for p, k in keep.items():
        for t in (p, ours.state[p]["exp_avg"], ours.state[p]["exp_avg_sq"]):
            assert not t[~k].any()


def test_kernel_without_a_mask_is_adamw(interpreted):
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(33, generator=gen)
    ref, start = w.clone().requires_grad_(), w.abs().max()
    m, v, step = torch.zeros(33), torch.zeros(33), torch.zeros(())
    reference = torch.optim.AdamW([ref], lr=1e-2, betas=BETAS, weight_decay=0.1, foreach=False)
    scalars = interpreted.group_scalars(1e-2, BETAS, 1e-8, 0.1, w.device)
    for _ in range(3):
        g = torch.randn(33, generator=gen)
        step += 1
        interpreted.step_tensor(w, g, m, v, None, step, scalars)
        ref.grad = g
        reference.step()
    assert (w - ref.detach()).abs().max() <= 1e-6 * max(ref.detach().abs().max(), start)


def test_without_triton_it_takes_the_two_pass_step_and_says_why(monkeypatch, capsys):
    from lib.optim import triton_masked_adamw
    monkeypatch.setattr(MaskedAdamW, "TRITON_DEVICES", ("cpu",))
    monkeypatch.setattr(triton_masked_adamw, "_MISSING", "triton is not installed (test)")
    params, expected = tensors(), tensors()
    ours = MaskedAdamW(groups(params), lr=1e-2, betas=BETAS, fused=True)
    reference = torch.optim.AdamW(groups(expected), lr=1e-2, betas=BETAS, fused=True)
    train(ours, params, masks_of(params, "bits")[1], two_pass=False)
    train(reference, expected, masks_of(expected, "bool")[0], two_pass=True)
    for p, q in zip(params, expected):
        assert torch.equal(p, q)
    assert "triton is not installed (test)" in capsys.readouterr().out
