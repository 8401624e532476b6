"""MaskedAdamW (lib/optim/fused_masked_adamw.py): AdamWPrune's step with the masking fused in.

Its step must equal what AdamWPrune did before it existed, torch's fused
AdamW on gradients zeroed by the masks, keep pruned weights and both moments
exactly zero, and fall back to that two-pass path, with a note, where the
kernel cannot run. The kernel repeats the arithmetic of torch 2.13's fused
CPU AdamW operation for operation, so where torch is that build (REFERENCE
below) the results must be equal bit for bit; elsewhere torch rounds some
operations differently and they must agree to rounding (SCALE_RTOL). Small
tensors: the whole file takes a few seconds.
"""
from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from torch import nn

from lib.optim import build_optimizer, fused_masked_adamw
from lib.optim.fused_masked_adamw import MaskedAdamW, build_kernel, kernel
from lib.pruning import GradualPruner, bitmask
from lib.pruning.mask_ops import zero_pruned_
from lib.spec import OptimizerParams
from tests.pruning_loop import train_steps

ADAMWPRUNE = OptimizerParams(learning_rate=None, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, base="adamw")
# Sizes that are and are not multiples of the 16-float vector, one over the kernel's 32768-entry work item.
SHAPES = [(24, 16), (17, 5), (300, 130), (7,), (64,)]


# Without a C compiler MaskedAdamW falls back (tested below); the kernel's own tests are skipped.
needs_kernel = pytest.mark.skipif(kernel()[0] is None, reason=str(kernel()[1]))


def reference_build() -> tuple[bool, str]:
    """(whether torch's fused CPU AdamW is the build masked_adamw.c copies, what this torch is).

    The kernel's products, fused multiply-adds and scalar tail (SCALAR_TAIL) are those of torch 2.13's
    FusedAdamKernel.cpp as GCC compiles it for its AVX2 and AVX512 dispatch (both checked bit for bit,
    with ATEN_CPU_CAPABILITY=avx2 and avx512); the kernel's own result does not depend on the compiler
    (-ffp-contract=off, fmaf written out). Another torch version, a torch built by another compiler
    (another contraction policy) or its DEFAULT or ARM dispatch rounds some operations differently.
    The tensors are CPU tensors: CUDA's Triton step is tests/test_triton_step.py's.
    """
    version = tuple(int(part) for part in re.findall(r"\d+", torch.__version__.split("+")[0])[:2])
    built = re.search(r"PyTorch built with:\s*- (\w+)", torch.__config__.show())
    compiler = built.group(1) if built else "an unknown compiler"
    capability = torch.backends.cpu.get_cpu_capability()
    described = f"torch {torch.__version__}, built with {compiler}, CPU dispatch {capability}"
    return version == (2, 13) and compiler == "GCC" and capability in ("AVX2", "AVX512"), described


BIT_EXACT, TORCH_BUILD = reference_build()
# Elsewhere every tensor must be within SCALE_RTOL of its largest entry (an entry-wise relative bound means
# nothing for entries near zero). Measured after the 100 steps below against torch 2.13's DEFAULT dispatch
# (ATEN_CPU_CAPABILITY=default), which rounds differently: at most 1.8e-7 of the largest entry (w: 7.8e-8,
# 3.6e-7 absolute; entry-wise up to 1.5e-3 near zero); torch's foreach and for-loop AdamW: 9.1e-8. A wrong
# step (bias correction, eps, decay, the lerp branch, a skipped or unmasked entry) is off by 1e-3 or more.
SCALE_RTOL = 1e-6


def tensors(seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=dtype).requires_grad_() for shape in SHAPES]


def random_masks(params, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return {p: torch.rand(p.shape, generator=gen) > 0.5 for p in params if p.dim() >= 2}


def stored(masks, storage):
    """The masks as the pruner holds them with CONFIG_PRUNING_MASK_STORAGE_<storage>."""
    return {p: bitmask.convert(keep, p, storage) for p, keep in masks.items()}


def groups(params):
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def run(optimizer, params, masks, steps=100, seed=2, two_pass=False):
    """`steps` steps on random gradients with a changing lr; masks applied the pre-MaskedAdamW way if two_pass."""
    gen = torch.Generator().manual_seed(seed)
    zero_pruned_([(p.data, keep) for p, keep in masks.items()])  # as the pruner does when masks change
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = 1e-2 * (1 + step % 7) / 7
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        if two_pass:
            zero_pruned_((p.grad, keep) for p, keep in masks.items())
        else:
            optimizer.set_masks(masks)
        optimizer.step()


def assert_equal_or_close(ours: torch.Tensor, theirs: torch.Tensor, what: str, exact: bool) -> None:
    """Bit for bit where `exact`, else within SCALE_RTOL of the largest entry and zero exactly where it is."""
    ours, theirs = ours.detach(), theirs.detach()
    differs = f"{what}: max diff {(ours - theirs).abs().max().item():.3g} ({TORCH_BUILD})"
    if exact:
        assert torch.equal(ours, theirs), differs
        return
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, what
    assert (ours - theirs).abs().max() <= SCALE_RTOL * theirs.abs().max(), differs
    assert torch.equal(ours == 0, theirs == 0), f"{what}: not zero where the reference is ({TORCH_BUILD})"


def assert_identical(params, expected, optimizer, reference, exact=None):
    """MaskedAdamW's weights and state against torch's AdamW's: bit for bit on the reference build
    (or where `exact`: the same torch step on both sides), else to rounding."""
    exact = BIT_EXACT if exact is None else exact
    for p, q in zip(params, expected):
        assert_equal_or_close(p, q, f"{tuple(p.shape)} weight", exact)
        for key in ("exp_avg", "exp_avg_sq"):
            assert_equal_or_close(optimizer.state[p][key], reference.state[q][key], f"{tuple(p.shape)} {key}", exact)
        assert torch.equal(optimizer.state[p]["step"], reference.state[q]["step"]), "step"


@needs_kernel
@pytest.mark.parametrize("storage", ["bool", "bits"])
@pytest.mark.parametrize("threads", [1, 2])
def test_masked_step_is_fused_adamw_on_masked_gradients(threads, storage):
    """100 steps: MaskedAdamW with masks == torch AdamW(fused=True) after zeroing pruned gradients
    (bit for bit on the reference build)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        params, expected = tensors(), tensors()
        ours = MaskedAdamW(groups(params), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, fused=True)
        reference = torch.optim.AdamW(groups(expected), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, fused=True)
        run(ours, params, stored(random_masks(params), storage))
        run(reference, expected, random_masks(expected), two_pass=True)
    finally:
        torch.set_num_threads(previous)
    assert ours.fallback_note is None
    assert_identical(params, expected, ours, reference)


@needs_kernel
@pytest.mark.parametrize("storage", ["bool", "bits"])
def test_every_remainder_length_is_rounded_as_torch_rounds_it(storage):
    """torch rounds a tensor's last numel % 8 entries in a scalar loop, differently: sizes 160..175
    (bit for bit on the reference build; elsewhere every length still steps every entry right)."""
    params, expected = [torch.randn(160 + r).requires_grad_() for r in range(16)], []
    expected = [p.detach().clone().requires_grad_() for p in params]
    ours = MaskedAdamW(params, lr=1e-2, betas=(0.9, 0.95), fused=True)
    reference = torch.optim.AdamW(expected, lr=1e-2, betas=(0.9, 0.95), fused=True)
    gen = torch.Generator().manual_seed(3)
    masks = {p: torch.rand(p.shape, generator=gen) > 0.5 for p in params}
    run(ours, params, stored(masks, storage), steps=10)
    run(reference, expected, {q: masks[p] for p, q in zip(params, expected)}, steps=10, two_pass=True)
    assert_identical(params, expected, ours, reference)


@needs_kernel
def test_pruned_weights_and_moments_stay_exactly_zero():
    params = tensors()
    masks = random_masks(params)
    optimizer = MaskedAdamW(groups(params), lr=1e-2, fused=True)
    run(optimizer, params, masks, steps=20)
    for p, keep in masks.items():
        for t in (p, optimizer.state[p]["exp_avg"], optimizer.state[p]["exp_avg_sq"]):
            assert not t[~keep].any()
            assert t[keep].all()  # random gradients: every kept entry moved


@needs_kernel
def test_a_large_first_moment_weight_takes_torchs_other_lerp_branch():
    """beta1 < 0.5 makes torch compute the first moment from g; the kernel follows."""
    params, expected = tensors(), tensors()
    ours = MaskedAdamW(groups(params), lr=1e-2, betas=(0.3, 0.9), fused=True)
    reference = torch.optim.AdamW(groups(expected), lr=1e-2, betas=(0.3, 0.9), fused=True)
    run(ours, params, random_masks(params), steps=20)
    run(reference, expected, random_masks(expected), steps=20, two_pass=True)
    assert_identical(params, expected, ours, reference)


@needs_kernel
def test_without_masks_it_is_torch_adamw():
    params, expected = tensors(), tensors()
    ours = MaskedAdamW(groups(params), lr=1e-2, fused=True)
    reference = torch.optim.AdamW(groups(expected), lr=1e-2, fused=True)
    run(ours, params, {}, steps=20)
    run(reference, expected, {}, steps=20, two_pass=True)
    assert_identical(params, expected, ours, reference, exact=True)  # torch's own step on both sides


@needs_kernel
@pytest.mark.parametrize("make, why", [
    (lambda g: MaskedAdamW(g, lr=1e-2, amsgrad=True, fused=True), "amsgrad"),
    (lambda g: MaskedAdamW(g, lr=1e-2, foreach=True), "float64"),
], ids=["amsgrad", "float64"])
def test_where_the_kernel_cannot_run_it_masks_gradients_and_says_so(make, why, capsys):
    dtype = torch.float64 if why == "float64" else torch.float32
    params, expected = tensors(dtype=dtype), tensors(dtype=dtype)
    ours = make(groups(params))
    reference = torch.optim.AdamW(groups(expected), lr=1e-2, amsgrad=why == "amsgrad",
                                  **({"foreach": True} if why == "float64" else {"fused": True}))
    masks = random_masks(params)
    run(ours, params, masks, steps=20)
    run(reference, expected, random_masks(expected), steps=20, two_pass=True)
    assert_identical(params, expected, ours, reference, exact=True)  # the fallback is torch's step
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and why in notes[0]
    for p, keep in masks.items():
        assert not p[~keep].any()


def test_without_a_compiler_it_falls_back(monkeypatch, capsys):
    monkeypatch.setattr(fused_masked_adamw, "_KERNEL", {"function": None, "reason": "no C compiler (test)"})
    params, expected = tensors(), tensors()
    ours = MaskedAdamW(groups(params), lr=1e-2, fused=True)
    reference = torch.optim.AdamW(groups(expected), lr=1e-2, fused=True)
    run(ours, params, random_masks(params), steps=10)
    run(reference, expected, random_masks(expected), steps=10, two_pass=True)
    assert_identical(params, expected, ours, reference, exact=True)  # the fallback is torch's step
    assert "no C compiler (test)" in capsys.readouterr().out


@needs_kernel
def test_kernel_is_built_once_per_source_compiler_and_cpu(tmp_path):
    first = build_kernel(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert build_kernel(tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no partial files left


def test_adamwprune_on_adamw_is_masked_adamw_and_other_bases_are_not():
    model = nn.Linear(4, 4)
    assert type(build_optimizer("adamwprune", model, 1e-3, ADAMWPRUNE)) is MaskedAdamW
    amsgrad = build_optimizer("adamwprune", model, 1e-3, dataclasses.replace(ADAMWPRUNE, amsgrad=True))
    assert type(amsgrad) is torch.optim.AdamW
    assert type(build_optimizer("adamw", model, 1e-3, ADAMWPRUNE)) is torch.optim.AdamW


# --- through GradualPruner, as lib/train/loop.py drives it ---------------------------------


def train_pruned(optimizer_of, steps=100):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    optimizer = optimizer_of(model)
    pruner = GradualPruner(model, optimizer, "bitter7", 0.7, warmup_steps=10, ramp_end_step=60, frequency=10)
    train_steps(model, optimizer, pruner, steps, inputs=16, classes=4, batch=32)
    return model, optimizer, pruner


@needs_kernel
def test_adamwprune_with_pruning_equals_the_two_pass_step():
    """AdamWPrune (base adamw) + GradualPruner over 100 steps, 6 mask updates: same as torch AdamW + masked grads."""
    model, optimizer, pruner = train_pruned(lambda m: build_optimizer("adamwprune", m, 1e-2, ADAMWPRUNE))
    reference, _, reference_pruner = train_pruned(lambda m: build_optimizer(
        "adamw", m, 1e-2, dataclasses.replace(ADAMWPRUNE, base=None)))
    assert isinstance(optimizer, MaskedAdamW) and optimizer.fallback_note is None
    assert [h["measured_pct"] for h in pruner.history] == [h["measured_pct"] for h in reference_pruner.history]
    assert pruner.history[-1]["measured_pct"] == pytest.approx(70.0, abs=0.1)
    for name, keep in pruner.masks.items():  # the same weights pruned: rounding never moved one across
        assert torch.equal(keep, reference_pruner.masks[name]), name
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert_equal_or_close(p, q, name, BIT_EXACT)
    for name, keep in pruner.masks.items():
        param = pruner.params[name]
        assert not param[~keep].any() and not optimizer.state[param]["exp_avg_sq"][~keep].any()
