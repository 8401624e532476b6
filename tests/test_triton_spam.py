"""AdamWPrune on the AdamWSPAM base: the Triton SPAM step (lib/optim/triton_masked_adamw.py, _masked_spam_multi,
driven by lib/optim/fused_masked_spam.py through lib/optim/triton_binding.py), run on CPU under TRITON_INTERPRET=1, and the path chosen without CUDA.

Against AdamWSPAM (lib/optim/spam.py, itself checked against a transcription of the authors' code in
tests/test_spam.py) stepping on masked gradients with masked weights: after every step, every tensor's w, m
and v within 1e-6 of its largest entry (w: or of its largest starting weight; see tests/test_triton_step.py),
pruned w, m, v exactly 0, for bool and bit-packed masks, sizes 1, 7, 1023 and 10001 plus an unmasked tensor, in
two groups (with and without weight decay), over 7 steps that take in clipping before and after it starts,
spikes clipped and passed, a momentum reset and the warm-up after it. On CPU AdamWPrune's SPAM base is
AdamWSPAM plus the separate masking pass, bit for bit, and says so once. Skipped, with the reason, where Triton
is not installed; the GPU speed is not tested.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from lib.optim import build_optimizer
from lib.optim.fused_masked_spam import MaskedAdamWSPAM
from lib.optim.spam import AdamWSPAM, clipping_active, warmup_scale
from lib.pruning import GradualPruner, bitmask
from lib.pruning.mask_ops import zero_pruned_
from lib.spec import OptimizerParams, SpamParams
from tests.pruning_loop import train_steps
from tests.test_triton_step import compile_for_sm90, count_bindings, groups, multi_compile
from tests.test_triton_step import masks_of as shared_masks_of
from tests.test_triton_step import tensors as shared_tensors

SHAPES = [(1,), (7,), (1023,), (10001,), (3, 5)]  # the last one unmasked: the kernel's dense variant
MASKED = 4
BETAS, EPS = (0.9, 0.999), 1e-6
# Global step t = 1..7: clipping from t = 2 (A = 2) but not on t = 4, 5 (reset at t = 4, A steps after it);
# warm-up scale 0.01 on t = 4, rising on t = 5, 1 from t = 6 (N = 2).
SPAM = dict(theta=5000.0, reset_interval=4, warmup_steps=2, clip_delay_steps=2)
STEPS = 7
SPIKE_STEPS = (3, 5, 7)  # clipped, passed (no clipping after the reset), clipped


def tensors(seed=0, device="cpu"):
    return shared_tensors(seed, SHAPES, device)


def masks_of(params, storage, seed=1):
    return shared_masks_of(params, storage, seed, masked=MASKED)


def gradients(seed=2):
    """Per step, a gradient per tensor: Gaussian, every 97th entry times 100 on the spike steps."""
    gen = torch.Generator().manual_seed(seed)
    steps = []
    for t in range(1, STEPS + 1):
        grads = [torch.randn(shape, generator=gen) for shape in SHAPES]
        if t in SPIKE_STEPS:
            for g in grads:
                g.view(-1)[::97] *= 100.0
        steps.append(grads)
    return steps


def step_all(optimizer, params, grads, t, masks=None, two_pass=None):
    for group in optimizer.param_groups:
        group["lr"] = 1e-2 * (1 + t % 3) / 3
    for p, g in zip(params, grads):
        p.grad = g.clone()
    if two_pass is not None:
        zero_pruned_((p.grad, keep) for p, keep in two_pass.items())
    if masks is not None:
        optimizer.set_masks(masks)
    optimizer.step()


def test_the_scenario_has_resets_warmup_and_clipping_on_and_off():
    interval, warmup, delay = SPAM["reset_interval"], SPAM["warmup_steps"], SPAM["clip_delay_steps"]
    clip = [clipping_active(t, interval, delay) for t in range(1, STEPS + 1)]
    scale = [warmup_scale(t, interval, warmup) for t in range(1, STEPS + 1)]
    assert clip == [False, True, True, False, False, True, True]
    assert scale[:3] == [1.0, 1.0, 1.0] and scale[3] == pytest.approx(0.01) and 0.01 < scale[4] < 1
    assert scale[5:] == [1.0, 1.0]
    # Clipping changes this run: AdamWSPAM without it ends elsewhere.
    runs = []
    for enable_clip in (True, False):
        params = tensors()
        optimizer = AdamWSPAM(groups(params), 1e-2, BETAS, EPS, **SPAM, enable_clip=enable_clip)
        for t, grads in enumerate(gradients(), start=1):
            step_all(optimizer, params, grads, t)
        runs.append(params)
    assert max((p - q).abs().max() for p, q in zip(*runs)) > 1e-3


@pytest.mark.parametrize("storage", ["bool", "bits"])
def test_kernel_matches_adamwspam_on_masked_gradients(interpreted, storage, monkeypatch):
    run_against_adamwspam(storage, monkeypatch, two_pass_at=None)


def test_a_two_pass_step_in_between_is_counted(interpreted, monkeypatch):
    """At t = 3 a transposed gradient takes the two-pass step (AdamWSPAM's own, which counts the steps):
    the kept launch tables must see the counts moved, and be made again."""
    run_against_adamwspam("bits", monkeypatch, two_pass_at=3)


def run_against_adamwspam(storage, monkeypatch, two_pass_at, device="cpu"):
    """The kernel's steps against AdamWSPAM's on masked gradients: on CPU tensors under the interpreter, or
    compiled on CUDA tensors (tests/test_triton_cuda.py)."""
    if device == "cpu":
        monkeypatch.setattr(MaskedAdamWSPAM, "TRITON_DEVICES", ("cpu",))
    builds = count_bindings(monkeypatch)
    params, expected = tensors(device=device), tensors(device=device)
    ours = MaskedAdamWSPAM(groups(params), 1e-2, BETAS, EPS, **SPAM)
    reference = AdamWSPAM(groups(expected), 1e-2, BETAS, EPS, **SPAM)
    keep, stored = masks_of(params, storage)
    reference_keep = masks_of(expected, "bool")[0]
    zero_pruned_([(p.data, k) for p, k in stored.items()])  # as the pruner does when masks change
    zero_pruned_([(p.data, k) for p, k in reference_keep.items()])
    starts = [p.detach().abs().max() for p in expected]
    for t, grads in enumerate(gradients(), start=1):
        grads = [g.to(device) for g in grads]
        if t == two_pass_at:
            grads = grads[:-1] + [grads[-1].t().contiguous().t()]  # the unmasked (3, 5) tensor
        step_all(ours, params, grads, t, masks=stored)
        step_all(reference, expected, grads, t, two_pass=reference_keep)
        assert (ours.fallback_note is None) == (two_pass_at is None or t < two_pass_at)
        for p, q, start in zip(params, expected, starts):
            where = (t, tuple(p.shape))
            assert (p - q).abs().max() <= 1e-6 * max(q.abs().max(), start), where
            for key in ("exp_avg", "exp_avg_sq"):
                x, y = ours.state[p][key], reference.state[q][key]
                assert (x - y).abs().max() <= 1e-6 * y.abs().max(), (where, key)
            assert ours.state[p]["step"] == reference.state[q]["step"] == t
        for p, k in keep.items():
            for x in (p, ours.state[p]["exp_avg"], ours.state[p]["exp_avg_sq"]):
                assert not x[~k].any(), (t, tuple(p.shape))
    assert [g["total_step"] for g in ours.param_groups] == [STEPS, STEPS]
    assert len(builds) == (1 if two_pass_at is None else 2)  # the launch tables kept, else made again once


def test_a_step_the_kernel_cannot_take_falls_back_before_counting(interpreted, monkeypatch, capsys):
    """A float64 tensor: nothing stepped by the kernel, no count advanced twice, AdamWSPAM's step on masked grads."""
    monkeypatch.setattr(MaskedAdamWSPAM, "TRITON_DEVICES", ("cpu",))
    params = [p.detach().double().requires_grad_() for p in tensors()]
    expected = [p.detach().clone().requires_grad_() for p in params]
    ours = MaskedAdamWSPAM(groups(params), 1e-2, BETAS, EPS, **SPAM)
    reference = AdamWSPAM(groups(expected), 1e-2, BETAS, EPS, **SPAM)
    masks = masks_of(params, "bits")[1]
    reference_masks = dict(zip(expected, masks.values()))
    for t, grads in enumerate(gradients()[:2], start=1):
        step_all(ours, params, [g.double() for g in grads], t, masks=masks)
        step_all(reference, expected, [g.double() for g in grads], t, two_pass=reference_masks)
    for p, q in zip(params, expected):
        assert torch.equal(p, q)
    assert ours.param_groups[0]["total_step"] == 2
    assert capsys.readouterr().out.count("torch.float64 parameter") == 1


def test_without_triton_it_takes_adamwspams_step_on_masked_gradients_and_says_why(monkeypatch, capsys):
    """On a Triton device without Triton: AdamWSPAM's own step after the masking pass, each global step counted
    once, and one note naming the reason."""
    from lib.optim import triton_masked_adamw
    monkeypatch.setattr(MaskedAdamWSPAM, "TRITON_DEVICES", ("cpu",))
    monkeypatch.setattr(triton_masked_adamw, "_MISSING", "triton is not installed (test)")
    params, expected = tensors(), tensors()
    ours = MaskedAdamWSPAM(groups(params), 1e-2, BETAS, EPS, **SPAM)
    reference = AdamWSPAM(groups(expected), 1e-2, BETAS, EPS, **SPAM)
    masks = masks_of(params, "bits")[1]
    reference_masks = dict(zip(expected, masks_of(expected, "bool")[0].values()))
    for t, grads in enumerate(gradients()[:3], start=1):
        step_all(ours, params, grads, t, masks=masks)
        step_all(reference, expected, grads, t, two_pass=reference_masks)
    for p, q in zip(params, expected):
        assert torch.equal(p, q)
    assert [g["total_step"] for g in ours.param_groups] == [3, 3]
    out = capsys.readouterr().out
    assert out.count("triton is not installed (test); on cpu the fused step needs Triton") == 1, out


# --- the path chosen without CUDA -------------------------------------------------------------

SPAM_SETTINGS = SpamParams(theta=50.0, enable_clip=True, periodic_reset=True, interval=20, warmup=True,
                           warmup_steps=5, clip_delay_steps=3)
SPAM_ONLY = OptimizerParams(learning_rate=None, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, spam=SPAM_SETTINGS)
ADAMWPRUNE_SPAM = dataclasses.replace(SPAM_ONLY, base="adamwspam")


def train_pruned(optimizer_of, steps=45):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = optimizer_of(model)
    pruner = GradualPruner(model, optimizer, "bitter7", 0.7, warmup_steps=5, ramp_end_step=30, frequency=5,
                           mask_storage="bits")
    train_steps(model, optimizer, pruner, steps, inputs=16, classes=4, batch=16)
    return model, optimizer, pruner


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU choice; on CUDA the Triton step is taken")
def test_on_cpu_adamwprune_on_spam_is_adamwspam_with_the_separate_pass_and_says_so(capsys):
    """Through GradualPruner with mask updates and a reset: bit for bit AdamWSPAM after the pruner's masking."""
    model, optimizer, pruner = train_pruned(lambda m: build_optimizer("adamwprune", m, 1e-2, ADAMWPRUNE_SPAM))
    out = capsys.readouterr().out
    reference, expected, reference_pruner = train_pruned(lambda m: build_optimizer("adamwspam", m, 1e-2, SPAM_ONLY))
    assert type(optimizer) is MaskedAdamWSPAM and type(expected) is AdamWSPAM
    assert "on CUDA with Triton; these parameters are on cpu" in optimizer.fallback_note
    assert out.count("note: AdamWPrune masks pruned gradients in a separate pass") == 1
    assert "on CUDA with Triton" in out
    assert [h["measured_pct"] for h in pruner.history] == [h["measured_pct"] for h in reference_pruner.history]
    assert pruner.history[-1]["measured_pct"] == pytest.approx(70.0, abs=0.5)
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p, q)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(optimizer.state[p][key]), torch.as_tensor(expected.state[q][key]))
    for name, keep in pruner.masks.items():
        param, pruned = pruner.params[name], ~bitmask.unpack(keep, 0, pruner.params[name].numel())
        assert not param.view(-1)[pruned].any()
        assert not optimizer.state[param]["exp_avg_sq"].view(-1)[pruned].any()


def test_spam_kernel_compiles_for_an_sm90_gpu_without_one():
    """As tests/test_triton_step.py does for the AdamW kernel: each variant to an sm_90 cubin, no GPU needed."""
    compile_for_sm90(multi_compile("_masked_spam_multi", ("reset", "clip")))
