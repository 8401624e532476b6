"""Batch plans: manual as configured; auto keeps the effective batch and fits the GPU."""
from __future__ import annotations

from dataclasses import replace

import pytest

from lib.models import model_entry
from lib.train.batch_plan import activation_mib, plan_batch
from tests.specs import TRAINING

MANUAL = replace(TRAINING, batch_size=32, grad_accum=4, hyper_param_auto=False, target_effective_batch=1024)
AUTO = replace(MANUAL, hyper_param_auto=True)


def test_manual_mode_is_what_was_configured():
    plan = plan_batch("gpt2", MANUAL, world_size=2, free_gpu_mib=80_000)
    assert (plan.micro_batch, plan.grad_accum, plan.effective_batch, plan.mode) == (32, 4, 256, "manual")


@pytest.mark.parametrize("free_mib, micro", [(180_000, 64), (45_000, 16), (22_000, 8), (9_000, 4)])
def test_auto_mode_fits_the_gpu_and_keeps_the_effective_batch(free_mib, micro):
    plan = plan_batch("gpt2", AUTO, free_gpu_mib=free_mib, num_params=124_475_904,
                      per_sample_mib=activation_mib("gpt2", {"block_size": 1024}))
    assert plan.micro_batch == micro
    assert plan.effective_batch == 1024
    # what it picked fits in the 60% budget; twice that would not
    budget = 0.6 * (free_mib - 124_475_904 * 16 / 2**20)
    assert micro * 850 <= budget < 2 * micro * 850
    assert f"{free_mib:,.0f} MiB free" in plan.describe()


def test_auto_mode_shares_the_target_between_gpus_and_never_exceeds_it():
    plan = plan_batch("resnet18", replace(AUTO, target_effective_batch=128), world_size=4, free_gpu_mib=80_000)
    assert plan.micro_batch == 32 and plan.grad_accum == 1 and plan.effective_batch == 128


def test_auto_mode_without_a_gpu_keeps_batch_size_and_says_so():
    plan = plan_batch("lenet5", AUTO, free_gpu_mib=None)
    assert (plan.micro_batch, plan.grad_accum) == (32, 32)
    assert "no GPU" in plan.reason


def test_gpt2_estimate_scales_with_width_and_context():
    base = activation_mib("gpt2", {"block_size": 1024})
    assert base == model_entry("gpt2").activation_mib_per_sample
    assert activation_mib("gpt2", {"block_size": 512}) == pytest.approx(base / 2)
    assert activation_mib("gpt2", {"block_size": 1024}, n_layer=24, n_embd=1024) == pytest.approx(
        base * 24 * 1024 / (12 * 768))
