"""lib/train/tasks.py: what the loop trains, unit by unit.

Batches are a pure function of (seed, step, micro-batch, rank): every sample
once per epoch over the steps, micro-batches and ranks, another order each
epoch, the same batch whatever was asked before (so a resumed run draws what an
uninterrupted one did). Evaluations cover the whole held-out set (classifiers)
or the same fixed windows every time (language models); records, "better" and
the metrics.json summary follow each task's declared fields. Under a second.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lib.data.text import TokenData
from lib.train.tasks import ClassificationTask, ClassifierMetrics, LanguageModelTask, TrainWindow

CPU = torch.device("cpu")


def indexed_task(n: int = 100, batch_size: int = 8, grad_accum: int = 2, rank: int = 0, world_size: int = 1,
                 seed: int = 0, augment=None) -> ClassificationTask:
    """Sample i has feature i and label i, so a batch names its samples."""
    x = torch.arange(n, dtype=torch.float32)[:, None]
    y = torch.arange(n)
    return ClassificationTask(train_x=x, train_y=y, test_x=x[:10], test_y=y[:10] % 2, batch_size=batch_size,
                              seed=seed, augment=augment, grad_accum=grad_accum, rank=rank, world_size=world_size)


def epoch_samples(task: ClassificationTask, epoch: int) -> list[int]:
    """Every sample this rank trains on in `epoch`, in order."""
    seen = []
    for step in range(epoch * task.steps_per_epoch, (epoch + 1) * task.steps_per_epoch):
        for micro in range(task.grad_accum):
            batch = task.batch(step, micro)
            if batch is not None:
                x, y = batch
                assert torch.equal(x[:, 0].long(), y)
                seen += y.tolist()
    return seen


# -- TrainWindow ---------------------------------------------------------------------

def test_train_window_means_are_weighted_by_samples_and_none_before_any():
    window = TrainWindow()
    assert window.mean_loss() is None and window.accuracy_pct() is None
    window.add(torch.tensor(1.0), torch.tensor(3), 4)
    window.add(torch.tensor(4.0), torch.tensor(1), 2)
    assert window.samples == 6
    assert window.mean_loss() == pytest.approx((1.0 * 4 + 4.0 * 2) / 6)
    assert window.accuracy_pct() == pytest.approx(100.0 * 4 / 6)


# -- batches by step ---------------------------------------------------------------------

def test_each_epoch_visits_every_sample_once_in_a_new_seeded_order():
    task = indexed_task()  # 100 samples, 8 per micro-batch, 2 micro-batches: 7 steps, the last one short
    assert task.steps_per_epoch == math.ceil(100 / 16) == 7
    first, second = epoch_samples(task, 0), epoch_samples(task, 1)
    assert sorted(first) == sorted(second) == list(range(100))
    assert first != second  # reshuffled every epoch
    assert task.batch(6, 1) is None  # past the epoch's end: samples 96..99 are step 6's first micro-batch
    assert task.batch(6, 0)[1].numel() == 4
    assert epoch_samples(indexed_task(), 1) == second  # the seed decides the order
    assert epoch_samples(indexed_task(seed=1), 1) != second


def test_ranks_share_an_epoch_without_overlap():
    ranks = [indexed_task(rank=r, world_size=2) for r in range(2)]
    assert ranks[0].steps_per_epoch == math.ceil(100 / 32) == 4
    seen = [epoch_samples(task, 0) for task in ranks]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(100))


def test_a_batch_does_not_depend_on_what_was_asked_before():
    """What a resumed run relies on: batch(step, micro) on a fresh task is the walked task's."""
    flip = lambda x, g: x + torch.rand(x.shape, generator=g)  # noqa: E731 - an augmentation drawing from g
    walked = indexed_task(augment=flip)
    expected = {}
    for step in range(12):
        for micro in range(2):
            batch = walked.batch(step, micro)
            if batch is not None:
                expected[step, micro] = batch
    for (step, micro), (x, y) in reversed(list(expected.items())):
        fresh = indexed_task(augment=flip)
        got_x, got_y = fresh.batch(step, micro)
        assert torch.equal(got_x, x) and torch.equal(got_y, y), (step, micro)
    x0, _ = indexed_task(augment=flip).batch(0, 0)
    assert not torch.equal(x0, indexed_task().batch(0, 0)[0])  # the augmentation was applied


# -- classifier evaluation and records ----------------------------------------------------

def test_classifier_evaluation_covers_the_whole_test_set():
    torch.manual_seed(0)
    test_x, test_y = torch.randn(1100, 5), torch.randint(0, 3, (1100,))  # three evaluation batches of 512
    task = ClassificationTask(train_x=test_x, train_y=test_y, test_x=test_x, test_y=test_y, batch_size=16, seed=0,
                              grad_accum=1)
    model = nn.Linear(5, 3)
    result = task.evaluate(model)
    with torch.no_grad():
        logits = model(test_x)
    assert result["test_loss"] == pytest.approx(float(nn.functional.cross_entropy(logits, test_y)), rel=1e-5)
    assert result["test_accuracy_pct"] == pytest.approx(100.0 * float((logits.argmax(1) == test_y).float().mean()))


def test_classifier_loss_counts_correct_answers():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x, y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 1, 1])
    loss, correct = ClassifierMetrics.loss(model, x, y)
    assert int(correct) == 2
    assert float(loss.detach()) == pytest.approx(float(nn.functional.cross_entropy(x, y)))


def test_classifier_records_and_summary():
    task = indexed_task()  # 7 steps per epoch
    window = TrainWindow()
    window.add(torch.tensor(0.5), torch.tensor(6), 8)
    record = task.record(9, window, {"test_loss": 1.0, "test_accuracy_pct": 60.0})
    assert record == {"epoch": 2, "step": 9, "train_loss": 0.5, "train_accuracy_pct": 75.0, "test_loss": 1.0,
                      "test_accuracy_pct": 60.0}
    assert task.record(7, window, {})["epoch"] == 1
    assert task.better({"test_accuracy_pct": 61.0}, record) and not task.better({"test_accuracy_pct": 60.0}, record)
    assert task.better(record, None)
    history = [record, {**record, "epoch": 3, "test_accuracy_pct": 55.0, "test_loss": 1.2}]
    before = {**record, "epoch": 1, "test_accuracy_pct": 70.0, "sparsity_pct": 10.0}
    summary = task.summary(history, record, before)
    assert summary == {"task": "classification", "epochs": history, "best_accuracy_pct": 60.0, "best_epoch": 2,
                       "final_accuracy_pct": 55.0, "final_test_loss": 1.2,
                       "best_before_target": {"best_accuracy_pct": 70.0, "best_epoch": 1, "sparsity_pct": 10.0}}
    assert task.summary(history, None)["best_accuracy_pct"] is None  # never evaluated at its target
    assert task.describe({**record, "train_loss": None}).startswith("epoch 2  loss -  test acc 60.00%")


# -- language modelling --------------------------------------------------------------------

class Bigram(nn.Module):
    """nanoGPT's interface: model(x, y) -> (logits, loss)."""

    def __init__(self, vocab: int = 50) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)

    def forward(self, x, y=None):
        logits = self.table(x)
        loss = None if y is None else nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        return logits, loss


def lm_task(rank: int = 0, seed: int = 0) -> LanguageModelTask:
    tokens = np.arange(2000, dtype=np.uint16) % 50
    data = TokenData(train=tokens[:1500], val=tokens[1500:], meta={}, path=Path("."))
    return LanguageModelTask(tokens=data, block_size=16, batch_size=4, seed=seed, eval_batches=3, device=CPU,
                             rank=rank)


def test_language_model_batches_are_next_token_windows_by_seed_step_micro_and_rank():
    task = lm_task()
    x, y = task.batch(3, 1)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(y, (x + 1) % 50)  # the corpus counts up modulo 50: targets are the next tokens
    again = lm_task().batch(3, 1)
    assert torch.equal(again[0], x)
    for other in (task.batch(4, 1), task.batch(3, 0), lm_task(rank=1).batch(3, 1), lm_task(seed=1).batch(3, 1)):
        assert not torch.equal(other[0], x)


def test_language_model_evaluation_uses_the_same_windows_every_time():
    task, model = lm_task(), Bigram()
    first = task.evaluate(model)
    torch.rand(5)  # the global RNG has no say
    assert task.evaluate(model) == first
    assert first["val_perplexity"] == pytest.approx(math.exp(first["val_loss"]))


def test_language_model_summary_and_an_overflowing_perplexity():
    task = lm_task()

    class Huge(nn.Module):
        def forward(self, x, y):
            return None, torch.tensor(1000.0)

    assert task.evaluate(Huge()) == {"val_loss": 1000.0, "val_perplexity": math.exp(700.0)}  # finite, JSON-safe
    window = TrainWindow()
    history = [task.record(0, window, {"val_loss": 4.0, "val_perplexity": math.exp(4.0)}),
               task.record(10, window, {"val_loss": 3.0, "val_perplexity": math.exp(3.0)}),
               task.record(20, window, {"val_loss": 3.5, "val_perplexity": math.exp(3.5)})]
    assert history[0] == {"step": 0, "train_loss": None, "val_loss": 4.0, "val_perplexity": math.exp(4.0)}
    assert task.better(history[1], history[0]) and not task.better(history[2], history[1])  # lower is better
    summary = task.summary(history, history[1])
    assert (summary["best_val_loss"], summary["best_step"], summary["final_val_loss"]) == (3.0, 10, 3.5)
    assert summary["initial_perplexity"] == math.exp(4.0) and summary["evals"] == history


@pytest.mark.parametrize("n,world_size", [(100, 1), (100, 2), (37, 3)])
def test_step_samples_counts_what_every_rank_draws_in_the_step(n, world_size):
    """step_samples (which weights the micro-batch losses) equals the samples the ranks actually draw."""
    ranks = [indexed_task(n=n, batch_size=4, grad_accum=3, rank=r, world_size=world_size) for r in range(world_size)]
    for step in range(2 * ranks[0].steps_per_epoch):
        drawn = sum(len(b[1]) for t in ranks for m in range(3) if (b := t.batch(step, m)) is not None)
        assert ranks[0].step_samples(step) == drawn
