"""The training loop keeps its figures honest: finite training, clipping over
live gradients, the best figure of a pruned run taken at its target, ramps
that leave time to recover, per-optimizer learning rates.

Expectations are computed here from the rules as written (docs/training.md,
docs/algorithms.md), not by calling the code under test.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lib.errors import NonFiniteError, UserError
from lib.optim.lr_schedules import LRSchedule
from lib.pruning import GradualPruner
from lib.pruning.schedules import FIT_RAMP_END, curve_for, plan_ramp
from lib.train.loop import LoopConfig, TrainingLoop, metrics_from
from lib.train.tasks import ClassificationTask
from tests.tiny_data import specs_from

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny tensors, fastest on one thread


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two Gaussian blobs in 8 dimensions: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 8, generator=g) + 2.0 * (y[:, None].float() * 2 - 1)
    return x, y


def tiny_task(batch_size: int = 16) -> ClassificationTask:
    x, y = blobs(256, 0)
    tx, ty = blobs(128, 1)
    return ClassificationTask(train_x=x, train_y=y, test_x=tx, test_y=ty, batch_size=batch_size, seed=0,
                              augment=None, grad_accum=1)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))


class PoisonedTask(ClassificationTask):
    """Feeds a NaN input at one optimizer step, so the loss is NaN exactly there."""

    poison_step: int = -1

    def batch(self, step: int, micro: int):
        x, y = super().batch(step, micro)
        if step == self.poison_step:
            x = x.clone()
            x[0, 0] = math.nan
        return x, y


# -- non-finite training ------------------------------------------------------

def test_nan_loss_stops_the_run_at_its_step_with_the_lr():
    x, y = blobs(256, 0)
    tx, ty = blobs(64, 1)
    task = PoisonedTask(train_x=x, train_y=y, test_x=tx, test_y=ty, batch_size=16, seed=0, augment=None,
                        grad_accum=1)
    task.poison_step = 6  # the 7th optimizer step
    model = tiny_model()
    schedule = LRSchedule(0.01, "constant", 100, warmup_steps=10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    loop = TrainingLoop(model, task, optimizer, None, schedule, LoopConfig(total_steps=100, eval_every=16),
                        device=torch.device("cpu"), log=lambda _: None)
    with pytest.raises(NonFiniteError) as error:
        loop.run()
    # nanoGPT's warm-up (step+1)/(10+1) of 0.01 at 0-based step 6: 0.00636
    assert str(error.value).startswith("loss became nan at step 7 (lr 0.00636)")
    assert loop.state.step == 7  # stopped right there, not at the next evaluation
    assert not loop.state.history  # nothing diverged was recorded


def test_a_diverging_learning_rate_fails_fast():
    model = tiny_model()
    with torch.no_grad():
        model[0].weight.mul_(1e18)  # the first forward overflows to inf logits, then nan
    optimizer = torch.optim.SGD(model.parameters(), lr=10.0)
    loop = TrainingLoop(model, tiny_task(), optimizer, None, LRSchedule(10.0), LoopConfig(total_steps=64,
                        eval_every=16), device=torch.device("cpu"), log=lambda _: None)
    with pytest.raises(NonFiniteError, match=r"became (nan|inf|.*\(diverged\)) at step \d+ \(lr 10\)"):
        loop.run()
    assert loop.state.step < 16


def test_a_finite_but_diverged_loss_stops_the_run_too():
    """Adam at lr 10 sends the loss to ~1e7 without a nan: 1000x the first loss is divergence."""
    model = tiny_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=10.0)
    first = []
    g = torch.Generator().manual_seed(0)  # random labels: confident answers are wrong half the time
    task = ClassificationTask(train_x=torch.randn(256, 8, generator=g), train_y=torch.randint(0, 2, (256,), generator=g),
                              test_x=torch.randn(64, 8, generator=g), test_y=torch.randint(0, 2, (64,), generator=g),
                              batch_size=16, seed=0, augment=None, grad_accum=1)
    loop = TrainingLoop(model, task, optimizer, None, LRSchedule(10.0), LoopConfig(total_steps=64, eval_every=16),
                        device=torch.device("cpu"), log=lambda _: None)
    with torch.no_grad():
        x, y = task.batch(0, 0)
        first.append(float(nn.functional.cross_entropy(model(x), y)))
    with pytest.raises(NonFiniteError) as error:
        loop.run()
    message = str(error.value)
    assert "(diverged) at step" in message and message.endswith(
        "(lr 10); stopped: lower the learning rate or clip gradients (CONFIG_GRADIENT_CLIP_NORM)")
    assert f"its first value {first[0]:.3g}" in message
    assert loop.state.step < 16 and not loop.state.history


# -- gradient clipping over live gradients --------------------------------------

def test_clipping_scales_the_live_gradients_to_the_norm():
    model, reference = tiny_model(), tiny_model()
    task = tiny_task()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # w_new = w - g_clipped
    pruner = GradualPruner(model, optimizer, "magnitude", 0.5, warmup_steps=0, ramp_end_step=1, frequency=1)
    pruner.update_masks(0.5)
    masks = {name: mask.clone() for name, mask in pruner.masks.items()}
    with torch.no_grad():
        for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
            q.copy_(p)
    loop = TrainingLoop(model, task, optimizer, pruner, LRSchedule(1.0), LoopConfig(total_steps=1, eval_every=1,
                        grad_clip_norm=0.5), device=torch.device("cpu"), log=lambda _: None)
    loop._one_step(loop_window())
    # The same step by hand: gradients, pruned entries zeroed, global norm, scale to 0.5.
    x, y = task.batch(0, 0)
    nn.functional.cross_entropy(reference(x), y).backward()
    named = dict(reference.named_parameters())
    for name, mask in masks.items():
        named[name].grad.mul_(mask)
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in reference.parameters()))
    assert norm > 0.5  # clipping is active in this test
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        expected = q.detach() - q.grad * (0.5 / (float(norm) + 1e-6))
        if name in masks:
            expected = expected * masks[name]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)


def loop_window():
    from lib.train.tasks import TrainWindow

    return TrainWindow()


# -- best at the target sparsity ------------------------------------------------

def test_best_of_a_pruned_run_is_taken_at_its_target():
    model, task = tiny_model(), tiny_task()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    pruner = GradualPruner(model, optimizer, "magnitude", 0.9, warmup_steps=16, ramp_end_step=64, frequency=8,
                           schedule="linear")
    loop = TrainingLoop(model, task, optimizer, pruner, LRSchedule(0.01), LoopConfig(total_steps=128,
                        eval_every=8), device=torch.device("cpu"), log=lambda _: None)
    loop.run()
    metrics = metrics_from(loop)
    history = metrics["epochs"]
    at_target = [r for r in history if r["step"] >= 64 and abs(r["sparsity_pct"] - 90.0) <= 0.5]
    before = [r for r in history if r not in at_target]
    assert at_target and before
    assert metrics["best_accuracy_pct"] == max(r["test_accuracy_pct"] for r in at_target)
    assert metrics["best_before_target"]["best_accuracy_pct"] == max(r["test_accuracy_pct"] for r in before)
    assert metrics["best_scope"].startswith("at target")
    assert all(r["at_target"] == (r in at_target) for r in history)


def test_a_dense_run_takes_its_best_from_every_evaluation():
    model, task = tiny_model(), tiny_task()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    loop = TrainingLoop(model, task, optimizer, None, LRSchedule(0.01), LoopConfig(total_steps=48, eval_every=16),
                        device=torch.device("cpu"), log=lambda _: None)
    loop.run()
    metrics = metrics_from(loop)
    assert metrics["best_accuracy_pct"] == max(r["test_accuracy_pct"] for r in metrics["epochs"])
    assert metrics["best_before_target"] is None and metrics["best_scope"].startswith("dense")


# -- ramps that leave time to recover --------------------------------------------

def test_a_ramp_ending_at_the_last_step_is_refused_with_the_step_counts():
    with pytest.raises(UserError, match=r"CONFIG_X=8 puts the pruning ramp at steps 100->504, but training has "
                                        r"252 steps"):
        plan_ramp(100, 504, 252, fit=False, symbols="CONFIG_X=8")
    with pytest.raises(UserError):
        plan_ramp(100, 252, 252, fit=False, symbols="CONFIG_X=4")


def test_a_fitted_ramp_ends_at_three_quarters_and_is_recorded():
    ramp = plan_ramp(100, 504, 252, fit=True, symbols="CONFIG_X=8")
    assert ramp.ramp_end_step == int(0.75 * 252) == 189 and ramp.warmup_steps == 100
    assert ramp.to_json()["fitted"] and ramp.to_json()["configured"] == [100, 504]
    assert ramp.to_json()["recovery_steps"] == 252 - 189
    short = plan_ramp(300, 504, 252, fit=True, symbols="CONFIG_X=8")  # warm-up past the fitted end
    assert short.warmup_steps < short.ramp_end_step < 252
    assert FIT_RAMP_END == 0.75
    ok = plan_ramp(100, 200, 252, fit=False, symbols="CONFIG_X=4")
    assert (ok.warmup_steps, ok.ramp_end_step, ok.fitted_from) == (100, 200, None)


def test_upstream_curves_per_method():
    assert curve_for("per-method", "state") == "upstream-p3"
    assert curve_for("per-method", "movement") == "linear"
    assert curve_for("per-method", "magnitude") == "linear"
    assert curve_for("cubic", "state") == "cubic"


def test_config_refuses_a_ramp_past_the_epochs_in_one_line(tmp_path):
    symbols = dict(MODEL_MODE_SINGLE=True, MODEL_SELECT_LENET5=True, OPTIMIZER_MODE_SINGLE=True,
                   OPTIMIZER_SELECT_ADAMW=True, PRUNING_MODE_SINGLE=True, PRUNING_SELECT_MAGNITUDE=True,
                   NUM_EPOCHS=4, PRUNING_RAMP_END_EPOCH=8)
    with pytest.raises(UserError, match=r"CONFIG_PRUNING_RAMP_END_EPOCH=8 is not before the last epoch "
                                        r"\(CONFIG_NUM_EPOCHS=4\)"):
        specs_from(tmp_path, **symbols)
    runs = specs_from(tmp_path, name="fit", **symbols, PRUNING_RAMP_FIT=True)
    assert runs and runs[0].pruning_settings.ramp_fit is True


# -- per-optimizer learning rates ------------------------------------------------

def test_each_optimizer_has_its_own_learning_rate(tmp_path):
    runs = specs_from(tmp_path, MODEL_MODE_SINGLE=True, MODEL_SELECT_LENET5=True, OPTIMIZER_MODE_MULTIPLE=True,
                      OPTIMIZER_ENABLE_SGD=True, OPTIMIZER_ENABLE_ADAM=True, OPTIMIZER_ENABLE_ADAMW=True,
                      LEARNING_RATE="0.001", ADAMW_LEARNING_RATE="0.003")
    from lib.optim.lr_schedules import peak_lr

    rates = {r.optimizer: peak_lr(r.optimizer_params, r.training) for r in runs}
    assert rates == {"sgd": 0.01, "adam": 0.001, "adamw": 0.003}
