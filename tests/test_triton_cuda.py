"""The one-pass masked AdamW and AdamWSPAM steps compiled and run on a GPU (lib/optim/triton_masked_adamw.py).

A module of its own: tests/test_triton_step.py's interpreter fixture swaps the
kernels for interpreted ones while its module runs, and an interpreted kernel
handed CUDA pointers reads device memory from the host. The same comparison as
there, against torch.optim.AdamW (for-loop) on masked gradients, with masked
and dense tensors in one optimizer (one launch per mask kind), and the launch
tables kept between steps following what changes. Skipped without CUDA; run on
`make gpu-check`'s machine.
"""
from __future__ import annotations

import pytest
import torch

from lib.optim.fused_masked_adamw import MaskedAdamW
from lib.pruning import bitmask
from lib.pruning.mask_ops import zero_pruned_
from tests.test_triton_spam import run_against_adamwspam
from tests.test_triton_step import BETAS, EVENTS, assert_close, follow_changes, groups, tensors


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the compiled kernel on a GPU")
@pytest.mark.parametrize("storage", ["bool", "bits"])
def test_on_a_gpu_the_one_pass_step_matches_torch_adamw(storage):
    """The same check compiled and run on CUDA tensors (make gpu-check's machine), masked and dense mixed."""
    pytest.importorskip("triton", reason="triton is not installed (optional: pip install triton)")
    cuda, gen = torch.device("cuda"), torch.Generator().manual_seed(5)
    params, expected = ([p.detach().to(cuda).requires_grad_() for p in tensors()] for _ in range(2))
    keep = [(torch.rand(p.shape, generator=gen) > 0.4).to(cuda) for p in params[:3]]
    ours = MaskedAdamW(groups(params), lr=1e-2, betas=BETAS)
    reference = torch.optim.AdamW(groups(expected), lr=1e-2, betas=BETAS, foreach=False)
    starts = [p.detach().abs().max() for p in expected]
    zero_pruned_([(p.data, k) for p, k in zip(params, keep)] + [(q.data, k) for q, k in zip(expected, keep)])
    for _ in range(5):
        for p, q in zip(params, expected):
            p.grad = torch.randn(p.shape, generator=gen).to(cuda)
            q.grad = p.grad.clone()
        zero_pruned_((q.grad, k) for q, k in zip(expected, keep))
        ours.set_masks({p: bitmask.convert(k, p, storage) for p, k in zip(params, keep)})
        ours.step()
        reference.step()
    assert ours.fallback_note is None
    assert_close(ours, reference, params, expected, starts)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the compiled kernel on a GPU")
@pytest.mark.parametrize("event", EVENTS, ids=lambda f: f.__name__)
def test_on_a_gpu_the_kept_launch_tables_follow_changes(event, monkeypatch):
    """tests/test_triton_step.py's check that the binding kept between steps sees what changes (counts moved
    by a two-pass step, new state, storage or masks), on CUDA: pinned copies, device step counts."""
    pytest.importorskip("triton", reason="triton is not installed (optional: pip install triton)")
    follow_changes(event, "cuda", monkeypatch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the compiled kernel on a GPU")
@pytest.mark.parametrize("storage, two_pass_at", [("bool", None), ("bits", None), ("bits", 3)])
def test_on_a_gpu_the_spam_kernel_matches_adamwspam(storage, two_pass_at, monkeypatch):
    """tests/test_triton_spam.py's seven steps (clipping on and off, a reset, the warm-up after it; with a
    two-pass step at t = 3) compiled and run on CUDA tensors against AdamWSPAM there."""
    pytest.importorskip("triton", reason="triton is not installed (optional: pip install triton)")
    run_against_adamwspam(storage, monkeypatch, two_pass_at, device="cuda")
