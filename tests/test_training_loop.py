"""lib/train/loop.py's TrainingLoop, driven in-process by a fake task.

The fake task is a TaskReport (lib/train/tasks.py: how a task judges and reports
its evaluations) with its own batches, loss and evaluation: it records which
micro-batches the loop asked for and when it evaluated, can poison one step's
loss, stop the run at a step (a kill, for resume), and script the figure each
evaluation reports, so that best and final values are known in advance.
Expectations are written from the loop's documented rules (docs/training.md),
not read back from the code under test. A few seconds in all.
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Optional

import pytest
import torch
from torch import nn

from lib.train import loop as train_loop
from lib.train.checkpoint import BEST, LAST, load_checkpoint, save_checkpoint
from lib.errors import NonFiniteError
from lib.optim.lr_schedules import LRSchedule
from lib.pruning import GradualPruner, measure_sparsity, prunable_parameters
from lib.train.tasks import ClassificationTask, TaskReport, TrainWindow
from lib.train.loop import LoopConfig, TrainingLoop, metrics_from

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny tensors, fastest on one thread

CPU = torch.device("cpu")
FEATURES, CLASSES = 6, 3
TEACHER = torch.randn(FEATURES, CLASSES, generator=torch.Generator().manual_seed(7))


class Killed(Exception):
    """Stands for SIGKILL: the run ends at once, wherever it is."""


class FakeTask(TaskReport):
    """Batches that depend only on (seed, step, micro), a cross-entropy loss, an evaluation on fixed data."""

    kind, history_key, goal, goal_higher = "fake", "evals", "score", True
    best_fields = {"best_score": "score", "best_step": "step"}
    final_fields = {"final_score": "score", "final_eval_loss": "eval_loss"}
    line = "step {step}  loss {train_loss}  score {score}"

    def __init__(self, micro_batch: int = 8, seed: int = 0, scores: Optional[dict[int, float]] = None,
                 poison_step: Optional[int] = None, kill_at: Optional[int] = None) -> None:
        self.micro_batch, self.seed, self.scores = micro_batch, seed, scores or {}
        self.poison_step, self.kill_at = poison_step, kill_at
        self.asked: list[tuple[int, int]] = []  # (step, micro) of every batch() call
        self.evaluated_training: list[bool] = []  # model.training at each evaluate()
        self.snapshots: list[dict[str, torch.Tensor]] = []  # the weights each evaluation saw
        self.records: dict[int, dict[str, torch.Tensor]] = {}  # step -> the weights its evaluation saw
        self._step = -1
        g = torch.Generator().manual_seed(1234)
        self.eval_x = torch.randn(64, FEATURES, generator=g)
        self.eval_y = (self.eval_x @ TEACHER).argmax(1)

    def step_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole step's samples (every micro-batch's, in order)."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + step)
        x = torch.randn(self.micro_batch * 4, FEATURES, generator=g)
        return x, (x @ TEACHER).argmax(1)

    def batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.asked.append((step, micro))
        if step == self.kill_at:
            raise Killed(step)
        self._step = step
        x, y = self.step_batch(step)
        part = slice(micro * self.micro_batch, (micro + 1) * self.micro_batch)
        return x[part], y[part]

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, None]:
        loss = nn.functional.cross_entropy(model(x), y)
        if self._step == self.poison_step:
            loss = loss * math.inf
        return loss, None

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        self.evaluated_training.append(model.training)
        self.snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"eval_loss": float(nn.functional.cross_entropy(model(self.eval_x), self.eval_y))}

    def record(self, step: int, window: TrainWindow, evaluation: dict[str, float]) -> dict[str, Any]:
        self.records[step] = self.snapshots[-1]
        return {"step": step, "train_loss": window.mean_loss(), **evaluation,
                "score": self.scores.get(step, -evaluation["eval_loss"])}


class LowerIsBetter(FakeTask):
    goal_higher = False


def tiny_model(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, CLASSES))


def count_steps(optimizer: torch.optim.Optimizer) -> list[float]:
    """The lr of every optimizer step taken, in order."""
    taken: list[float] = []
    optimizer.register_step_post_hook(lambda opt, args, kwargs: taken.append(opt.param_groups[0]["lr"]))
    return taken


def make_loop(model: nn.Module, task: FakeTask, config: LoopConfig, *, optimizer=None, pruner=None,
              schedule: Optional[LRSchedule] = None, log=None) -> TrainingLoop:
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.1)
    return TrainingLoop(model, task, optimizer, pruner, schedule or LRSchedule(0.1), config, device=CPU,
                        log=log or (lambda _: None))


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- steps and evaluations ------------------------------------------------------

@pytest.mark.parametrize("eval_at_start", [False, True])
def test_steps_evaluations_and_learning_rates(eval_at_start):
    """10 steps, an evaluation every 4: optimizer steps 10, evaluations at 4, 8 and the last step (10);
    each step at the schedule's lr for its 0-based index."""
    model, task = tiny_model(), FakeTask()
    schedule = LRSchedule(0.1, "cosine", total_steps=10, warmup_steps=3, min_lr=0.01)
    loop = make_loop(model, task, LoopConfig(total_steps=10, eval_every=4, eval_at_start=eval_at_start),
                     schedule=schedule)
    taken = count_steps(loop.optimizer)
    state = loop.run()
    assert taken == [schedule.at(step) for step in range(10)]
    assert state.step == 10 and state.samples_seen == 10 * 8
    assert task.asked == [(step, 0) for step in range(10)]
    expected = [0, 4, 8, 10] if eval_at_start else [4, 8, 10]
    assert [r["step"] for r in state.history] == expected
    assert task.evaluated_training == [False] * len(expected) and model.training  # eval mode only inside
    for record in state.history:
        if record["step"]:
            assert record["lr"] == schedule.at(record["step"] - 1)  # the lr of the step just taken
    if eval_at_start:
        assert state.history[0]["train_loss"] is None  # nothing trained yet
    assert all(r["train_loss"] > 0 for r in state.history if r["step"])
    metrics = metrics_from(loop)
    assert metrics["steps"] == metrics["planned_steps"] == 10 and metrics["stopped_by"] == "steps"
    assert metrics["evals"] == state.history and metrics["resumed_from_step"] is None


def test_the_training_loss_of_an_evaluation_is_the_mean_since_the_previous_one():
    model, task = tiny_model(), FakeTask()
    losses: list[float] = []
    original = task.loss

    def loss(model, x, y):
        value, correct = original(model, x, y)
        losses.append(float(value.detach()))
        return value, correct

    task.loss = loss
    state = make_loop(model, task, LoopConfig(total_steps=6, eval_every=3)).run()
    assert [r["train_loss"] for r in state.history] == pytest.approx([sum(losses[:3]) / 3, sum(losses[3:]) / 3],
                                                                     rel=1e-6)


def test_a_time_limit_stops_between_evaluations_and_evaluates_there(monkeypatch):
    """Each step takes one second on a fake clock; a 5.5 s limit ends the run after step 6 of 20."""
    ticks = iter(range(10_000))  # perf_counter: one second later at every read (a step's start, its end)
    monkeypatch.setattr(train_loop, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    task = FakeTask()
    loop = make_loop(tiny_model(), task, LoopConfig(total_steps=20, eval_every=4, max_time_s=5.5))
    taken = count_steps(loop.optimizer)
    state = loop.run()
    assert len(taken) == state.step == 6 and state.train_time_s == 6.0  # 5 s < 5.5 s: a sixth step
    assert [r["step"] for r in state.history] == [4, 6]
    assert metrics_from(loop)["stopped_by"] == "time limit"


def test_log_every_records_each_steps_own_loss():
    model, task = tiny_model(), FakeTask()
    lines: list[str] = []
    loop = make_loop(model, task, LoopConfig(total_steps=8, eval_every=4, log_every=2), log=lines.append)
    state = loop.run()
    assert [e["step"] for e in state.train_log] == [2, 4, 6, 8]
    assert all(e["train_loss"] > 0 and e["lr"] == 0.1 for e in state.train_log)
    assert sum(line.startswith("step 2/8") or line.startswith("step 6/8") for line in lines) == 2
    assert metrics_from(loop)["train_log"] == state.train_log


# -- gradient accumulation --------------------------------------------------------

def test_gradient_accumulation_equals_one_batch_of_all_micro_batches():
    """grad_accum 4 over micro-batches of 8 takes the steps of one 32-sample batch: the loss of each
    micro-batch divided by 4, one optimizer step after the fourth."""
    accumulated, whole = FakeTask(micro_batch=8), FakeTask(micro_batch=32)
    whole.step_batch = lambda step: accumulated.step_batch(step)  # the same 32 samples per step
    a = make_loop(tiny_model(), accumulated, LoopConfig(total_steps=5, eval_every=5, grad_accum=4))
    b = make_loop(tiny_model(), whole, LoopConfig(total_steps=5, eval_every=5, grad_accum=1))
    steps_a, steps_b = count_steps(a.optimizer), count_steps(b.optimizer)
    state_a, state_b = a.run(), b.run()
    assert len(steps_a) == len(steps_b) == 5
    assert accumulated.asked == [(step, micro) for step in range(5) for micro in range(4)]
    assert state_a.samples_seen == state_b.samples_seen == 5 * 32
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert not torch.equal(a.model[0].weight, tiny_model()[0].weight)  # it trained
    assert state_a.history[-1]["train_loss"] == pytest.approx(state_b.history[-1]["train_loss"], rel=1e-5)
    assert metrics_from(a)["grad_accum"] == 4


@pytest.mark.parametrize("samples,micro_batch,grad_accum", [(20, 8, 2), (22, 4, 3)])
def test_the_short_last_step_of_an_epoch_takes_the_mean_gradient_of_its_samples(samples, micro_batch, grad_accum):
    """An epoch of 20 samples in steps of 2 x 8 ends with a step of one 4-sample micro-batch (22 in
    3 x 4: micro-batches of 4, 4 and 2). Each step must move the weights as plain SGD on the mean
    cross-entropy of exactly that step's samples, taken in the epoch's order."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(samples, FEATURES, generator=g)
    y = (x @ TEACHER).argmax(1)
    task = ClassificationTask(train_x=x, train_y=y, test_x=x, test_y=y, batch_size=micro_batch, seed=5,
                              grad_accum=grad_accum)
    assert task.steps_per_epoch == 2
    loop = make_loop(tiny_model(), task, LoopConfig(total_steps=2, eval_every=2, grad_accum=grad_accum))
    loop.run()
    reference, order, per_step = tiny_model(), task.epoch_order(0), micro_batch * grad_accum
    for step in range(2):
        idx = order[step * per_step:(step + 1) * per_step]
        reference.zero_grad()
        nn.functional.cross_entropy(reference(x[idx]), y[idx]).backward()
        with torch.no_grad():
            for p in reference.parameters():
                p -= 0.1 * p.grad
    for p, q in zip(loop.model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert loop.state.samples_seen == samples


# -- non-finite values fail fast --------------------------------------------------

@pytest.mark.parametrize("poison_step", [4, 5])
def test_a_non_finite_loss_stops_at_its_step_before_any_record_or_checkpoint(tmp_path, poison_step):
    """The loss of 0-based step 4 (the last before the evaluation at 5) or 5 is inf: NonFiniteError
    names step 5 or 6 and its lr; the evaluation at 5 exists only when it came before."""
    task = FakeTask(poison_step=poison_step)
    resume = tmp_path / ".resume" / "run"
    loop = make_loop(tiny_model(), task, LoopConfig(total_steps=20, eval_every=5, resume_dir=resume,
                                                    best_dir=tmp_path / "run"))
    with pytest.raises(NonFiniteError, match=rf"^loss became inf at step {poison_step + 1} \(lr 0.1\)"):
        loop.run()
    assert loop.state.step == poison_step + 1  # not one step later
    evaluated = [5] if poison_step >= 5 else []
    assert [r["step"] for r in loop.state.history] == evaluated
    saved = load_checkpoint(resume / LAST, CPU)
    assert (saved["step"] if saved else None) == (evaluated[0] if evaluated else None)
    assert (resume / BEST).exists() == bool(evaluated)


def test_a_non_finite_gradient_with_clipping_stops_at_its_step():
    """A finite loss whose gradient is nan: with clipping on, the gradient norm is watched."""
    model, task = tiny_model(), FakeTask()
    model[0].weight.register_hook(lambda g: g * math.nan if task._step == 2 else g)
    loop = make_loop(model, task, LoopConfig(total_steps=10, eval_every=5, grad_clip_norm=1.0))
    with pytest.raises(NonFiniteError, match=r"^gradient norm became nan at step 3 "):
        loop.run()
    assert loop.state.step == 3 and not loop.state.history


# -- pruning ---------------------------------------------------------------------

@pytest.mark.parametrize("storage", ["bool", "bits"])
def test_pruning_reaches_the_target_and_pruned_weights_stay_zero(storage):
    """Magnitude pruning to 80%, cubic ramp from step 4 to 16 every 4 steps: mask updates at 8, 12, 16
    (the ramp's start prunes nothing), exactly round(0.8 N) zeros from the ramp end to the last step,
    the same ones throughout."""
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    pruner = GradualPruner(model, optimizer, "magnitude", 0.8, warmup_steps=4, ramp_end_step=16, frequency=4,
                           mask_storage=storage)
    task = FakeTask()
    loop = make_loop(model, task, LoopConfig(total_steps=24, eval_every=4), optimizer=optimizer, pruner=pruner)
    state = loop.run()
    params = prunable_parameters(model)
    total = sum(p.numel() for p in params.values())
    zeros = sum(int((p == 0).sum()) for p in params.values())
    assert zeros == round(0.8 * total)
    assert [h["step"] for h in pruner.history] == [8, 12, 16]
    assert pruner.history[-1]["measured_pct"] == pytest.approx(100.0 * round(0.8 * total) / total)
    by_step = {r["step"]: r for r in state.history}
    assert [r["step"] for r in state.history] == [4, 8, 12, 16, 20, 24]
    assert [by_step[s]["at_target"] for s in (4, 8, 12, 16, 20, 24)] == [False] * 3 + [True] * 3
    assert 0.0 == by_step[4]["sparsity_pct"] < by_step[8]["sparsity_pct"] < by_step[12]["sparsity_pct"] < 80.0
    names = dict(model.named_parameters())
    pattern = {name: task.records[16][name] == 0 for name in params}
    for step in (16, 20, 24):
        for name, zero in pattern.items():
            assert torch.equal(task.records[step][name] == 0, zero), (step, name)  # no weight revived
    for name, zero in pattern.items():
        assert torch.equal(names[name].detach() == 0, zero)
    metrics = metrics_from(loop)
    assert metrics["sparsity"]["global_pct"] == pytest.approx(80.0, abs=100.0 / total)
    assert metrics["sparsity"]["zero_params"] == zeros and metrics["sparsity"]["prunable_params"] == total
    assert metrics["pruning_schedule"] == pruner.history
    assert measure_sparsity(params)[0] == metrics["sparsity"]["global_pct"]


# -- checkpoints and resume -------------------------------------------------------

def pruned_run(tmp_path, task: FakeTask, seed: int = 0, identity: str = "run-a") -> TrainingLoop:
    """AdamW, movement pruning (its accumulator is pruner state), dropout (the RNG is state too), with
    last.pt in tmp_path/.resume/run and best.pt kept."""
    model = tiny_model(seed, dropout=0.2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    pruner = GradualPruner(model, optimizer, "movement", 0.6, warmup_steps=3, ramp_end_step=15, frequency=3)
    config = LoopConfig(total_steps=24, eval_every=6, resume_dir=tmp_path / ".resume" / "run",
                        best_dir=tmp_path / "run" / "checkpoints", identity={"run": identity})
    return make_loop(model, task, config, optimizer=optimizer, pruner=pruner,
                     schedule=LRSchedule(0.01, "cosine", total_steps=24, warmup_steps=4))


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in history]


def test_a_killed_run_resumes_from_last_pt_and_ends_as_an_uninterrupted_one(tmp_path):
    torch.manual_seed(5)
    whole = pruned_run(tmp_path / "whole", FakeTask())
    whole.run()

    torch.manual_seed(5)
    killed = pruned_run(tmp_path / "killed", FakeTask(kill_at=14))
    with pytest.raises(Killed):
        killed.run()
    last = tmp_path / "killed" / ".resume" / "run" / LAST
    assert load_checkpoint(last, CPU)["step"] == 12  # the last evaluation before the kill

    torch.manual_seed(99)  # another start: weights, optimizer, masks and RNG must all come from last.pt
    lines: list[str] = []
    resumed = pruned_run(tmp_path / "killed", FakeTask(), seed=1)
    resumed.log = lines.append
    resumed.run()
    assert f"resumed from {last} at step 12/24" in lines
    assert resumed.state.resumed_from_step == 12 and resumed.state.step == 24
    assert resumed.task.asked[0] == (12, 0)  # it went on where it stopped
    assert same_weights(resumed.model.state_dict(), whole.model.state_dict())
    assert without_timing(resumed.state.history) == without_timing(whole.state.history)
    assert resumed.pruner.history == whole.pruner.history
    assert all(torch.equal(resumed.pruner.masks[n], whole.pruner.masks[n]) for n in whole.pruner.masks)
    for p, q in zip(resumed.model.parameters(), whole.model.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(resumed.optimizer.state[p][key], whole.optimizer.state[q][key])
    assert without_timing([resumed.state.best]) == without_timing([whole.state.best])
    assert metrics_from(resumed)["resumed_from_step"] == 12

    # finished: best.pt moves into the run folder, .resume/ goes
    resumed.discard_resume_state()
    assert not (tmp_path / "killed" / ".resume").exists()
    best = load_checkpoint(tmp_path / "killed" / "run" / "checkpoints" / BEST, CPU, ("model", "step"))
    assert best["step"] == whole.state.best["step"]
    assert without_timing([best["evaluation"]]) == without_timing([whole.state.best])
    assert same_weights(best["model"], whole.task.records[best["step"]])


def test_last_pt_of_another_configuration_is_not_resumed(tmp_path):
    with pytest.raises(Killed):
        pruned_run(tmp_path, FakeTask(kill_at=8), identity="run-a").run()
    lines: list[str] = []
    other = pruned_run(tmp_path, FakeTask(), identity="run-b")
    other.log = lines.append
    other.run()
    assert any("belongs to another configuration; starting afresh" in line for line in lines)
    assert other.state.resumed_from_step is None and other.task.asked[0] == (0, 0)


def test_a_last_pt_missing_loop_state_is_set_aside_and_the_run_starts_afresh(tmp_path, capsys):
    loop = pruned_run(tmp_path, FakeTask())
    last = loop.config.resume_dir / LAST
    save_checkpoint(last, {"model": loop.model.state_dict(), "step": 12})  # no optimizer, pruner, rng...
    loop.run()
    assert loop.state.resumed_from_step is None and loop.task.asked[0] == (0, 0)
    assert "checkpoint lacks identity" in capsys.readouterr().err
    assert list(last.parent.glob("last.pt.rejected-*"))


# -- best and final figures -------------------------------------------------------

def test_best_and_final_of_a_dense_run(tmp_path):
    """Scripted scores 2, 7, 5, 6, 3 at steps 2..10: best 7 at step 4 (and best.pt its weights), final 3."""
    scores = {2: 2.0, 4: 7.0, 6: 5.0, 8: 6.0, 10: 3.0}
    task = FakeTask(scores=scores)
    loop = make_loop(tiny_model(), task, LoopConfig(total_steps=10, eval_every=2, best_dir=tmp_path))
    loop.run()
    metrics = metrics_from(loop)
    assert metrics["best_score"] == 7.0 and metrics["best_step"] == 4
    assert metrics["final_score"] == 3.0 and metrics["final_eval_loss"] == loop.state.history[-1]["eval_loss"]
    assert metrics["best_before_target"] is None and metrics["best_scope"].startswith("dense")
    best = load_checkpoint(tmp_path / BEST, CPU, ("model",))
    assert best["step"] == 4 and best["best_score"] == 7.0 and best["iter_num"] == 4
    assert same_weights(best["model"], task.records[4])
    assert not same_weights(best["model"], task.records[10])


def test_best_of_a_lower_is_better_goal_is_the_smallest():
    task = LowerIsBetter(scores={3: 2.0, 6: 1.0, 9: 3.0, 12: 4.0})
    loop = make_loop(tiny_model(), task, LoopConfig(total_steps=12, eval_every=3))
    loop.run()
    metrics = metrics_from(loop)
    assert (metrics["best_score"], metrics["best_step"], metrics["final_score"]) == (1.0, 6, 4.0)


def test_best_of_a_pruned_run_ignores_better_evaluations_before_its_target(tmp_path):
    """The highest score (9, step 4) comes before the ramp ends at 8: it is best_before_target, and the
    best is 6 (step 12) of the evaluations at the target; best.pt holds step 12's weights."""
    task = FakeTask(scores={4: 9.0, 8: 3.0, 12: 6.0, 16: 5.0})
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    pruner = GradualPruner(model, optimizer, "magnitude", 0.5, warmup_steps=2, ramp_end_step=8, frequency=2)
    loop = make_loop(model, task, LoopConfig(total_steps=16, eval_every=4, best_dir=tmp_path), optimizer=optimizer,
                     pruner=pruner)
    loop.run()
    metrics = metrics_from(loop)
    assert [r["at_target"] for r in loop.state.history] == [False, True, True, True]
    assert (metrics["best_score"], metrics["best_step"], metrics["final_score"]) == (6.0, 12, 5.0)
    assert metrics["best_before_target"]["best_score"] == 9.0
    assert metrics["best_before_target"]["sparsity_pct"] == loop.state.history[0]["sparsity_pct"]
    assert metrics["best_scope"].startswith("at target: best of the evaluations at 50.0% sparsity")
    best = load_checkpoint(tmp_path / BEST, CPU, ("model",))
    assert best["step"] == 12 and same_weights(best["model"], task.records[12])
