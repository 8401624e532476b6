"""What the training loop trains: image classification or language modelling.

A task owns its batches, its loss, its evaluation and the fields it adds to
metrics.json; lib/train/loop.py owns the steps. Batches are a pure function
of (seed, step, micro-batch, rank): a resumed run draws exactly the batches
an uninterrupted one would have, without saving any data-order state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch import nn

from lib.data.imagefolder import ImageFolderData
from lib.data.text import TokenData, get_batch

CLASSIFICATION, LANGUAGE_MODELING = "classification", "language_modeling"
EVAL_SEED = 1234  # the same validation windows at every evaluation, so evaluations compare


def _generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from several integers (seed, step, micro, rank...)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(keys)).generate_state(1)[0]))


@dataclass
class TrainWindow:
    """Training loss (and accuracy) summed since the last evaluation, kept on the
    device so that no step waits for a host sync."""

    loss_sum: Any = 0.0
    correct: Any = 0
    samples: int = 0

    def add(self, loss: torch.Tensor, correct: Optional[torch.Tensor], samples: int) -> None:
        self.loss_sum = self.loss_sum + loss.detach().float() * samples
        if correct is not None:
            self.correct = self.correct + correct
        self.samples += samples

    def mean_loss(self) -> Optional[float]:
        """None before any training step (JSON has no NaN)."""
        return float(self.loss_sum) / self.samples if self.samples else None

    def accuracy_pct(self) -> Optional[float]:
        return 100.0 * float(self.correct) / self.samples if self.samples else None


def _loss_text(loss: Optional[float]) -> str:
    return "-" if loss is None else f"{loss:.4f}"


class TaskReport:
    """How a task judges and reports its evaluations, declared by each task."""

    kind: str
    history_key: str  # the metrics.json list of evaluation records
    goal: str  # the record field that decides "best"
    goal_higher: bool
    best_fields: dict[str, str]  # metrics.json field -> record field, taken from the best record
    final_fields: dict[str, str]  # ... taken from the last record
    line: str  # progress line, formatted from a record

    def loss_divisor(self, step: int, samples: int, grad_accum: int) -> float:
        """What the mean loss of a micro-batch of `samples` is divided by before backward, so that
        the step's gradient is the mean over all its samples: grad_accum when every micro-batch
        of every step is full (language-model windows)."""
        return grad_accum

    def better(self, new: dict[str, Any], best: dict[str, Any] | None) -> bool:
        if best is None:
            return True
        return new[self.goal] > best[self.goal] if self.goal_higher else new[self.goal] < best[self.goal]

    def describe(self, record: dict[str, Any]) -> str:
        return self.line.format(**{**record, "train_loss": _loss_text(record["train_loss"])})

    def summary(self, history: list[dict[str, Any]], best: Optional[dict[str, Any]],
                before_target: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """Best figures from `best` (None when a pruned run was never evaluated at its
        target), final ones from the last record, and the best before the target apart."""
        return {"task": self.kind, self.history_key: history,
                **{k: best[v] if best else None for k, v in self.best_fields.items()},
                **{k: history[-1][v] for k, v in self.final_fields.items()},
                "best_before_target": None if before_target is None else
                {**{k: before_target[v] for k, v in self.best_fields.items()},
                 "sparsity_pct": before_target.get("sparsity_pct")}}


class ClassifierMetrics(TaskReport):
    """Loss and evaluation of any image classifier task (top-1 accuracy)."""

    kind, history_key, goal, goal_higher = CLASSIFICATION, "epochs", "test_accuracy_pct", True
    best_fields = {"best_accuracy_pct": "test_accuracy_pct", "best_epoch": "epoch"}
    final_fields = {"final_accuracy_pct": "test_accuracy_pct", "final_test_loss": "test_loss"}
    line = "epoch {epoch}  loss {train_loss}  test acc {test_accuracy_pct:.2f}%"
    batch_size: int
    steps_per_epoch: int

    @staticmethod
    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return nn.functional.cross_entropy(logits, y), (logits.argmax(1) == y).sum()

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Test loss and top-1 accuracy (%) over the whole held-out set."""
        loss_sum, correct, n = 0.0, 0, 0
        for x, target in self.test_batches(max(self.batch_size, 512)):
            logits = model(x).float()
            loss_sum += nn.functional.cross_entropy(logits, target, reduction="sum").item()
            correct += int((logits.argmax(1) == target).sum())
            n += target.shape[0]
        return {"test_loss": loss_sum / n, "test_accuracy_pct": 100.0 * correct / n}

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def record(self, step: int, window: TrainWindow, evaluation: dict[str, float]) -> dict[str, Any]:
        return {"epoch": math.ceil(step / self.steps_per_epoch), "step": step, "train_loss": window.mean_loss(),
                "train_accuracy_pct": window.accuracy_pct(), **evaluation}


@dataclass(kw_only=True)
class StepBatches(ClassifierMetrics):
    """Where each micro-batch of a step comes from: position in the epoch's
    seeded permutation, by step, micro-batch and rank (so resume works)."""

    batch_size: int
    seed: int
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    grad_accum: int = 1
    rank: int = 0
    world_size: int = 1

    @property
    def num_train(self) -> int:
        raise NotImplementedError

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.num_train / (self.batch_size * self.grad_accum * self.world_size)))

    def epoch_order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.num_train, generator=_generator(self.seed, epoch))

    def step_samples(self, step: int) -> int:
        """Samples in optimizer step `step` over all ranks: fewer than a full step at an epoch's end."""
        per_step = self.batch_size * self.grad_accum * self.world_size
        return min(per_step, self.num_train - (step % self.steps_per_epoch) * per_step)

    def loss_divisor(self, step: int, samples: int, grad_accum: int) -> float:
        # A short last step must not shrink its gradient: weight each micro-batch by its share of
        # the step's samples (exactly grad_accum for full ones; DDP then averages over ranks).
        return self.step_samples(step) / (samples * self.world_size)

    def slot(self, step: int, micro: int) -> tuple[int, int, int]:
        """(epoch, first, end): positions in the epoch's order of one micro-batch."""
        epoch, index = divmod(step, self.steps_per_epoch)
        slot = (index * self.grad_accum + micro) * self.world_size + self.rank
        return epoch, slot * self.batch_size, (slot + 1) * self.batch_size

    def augmented(self, x: torch.Tensor, step: int, micro: int) -> torch.Tensor:
        return self.augment(x, _generator(self.seed, step, micro, self.rank, 1)) if self.augment else x


@dataclass(kw_only=True)
class ClassificationTask(StepBatches):
    """Images and labels already on the device; the loop asks for batches by step."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    _order: tuple[int, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def num_train(self) -> int:
        return self.train_x.shape[0]

    def batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Micro-batch `micro` of optimizer step `step` (0-based), or None past the epoch's end."""
        epoch, first, end = self.slot(step, micro)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self.epoch_order(epoch).to(self.train_x.device))
        idx = self._order[1][first:end]
        if idx.numel() == 0:
            return None
        return self.augmented(self.train_x[idx], step, micro), self.train_y[idx]

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, self.test_x.shape[0], batch_size):
            yield self.test_x[start:start + batch_size], self.test_y[start:start + batch_size]


@dataclass(kw_only=True)
class FolderClassificationTask(StepBatches):
    """Images decoded from an image folder by DataLoader workers, in the same
    step-determined order as ClassificationTask (so resume works alike)."""

    data: ImageFolderData
    num_workers: int = 4
    _stream: tuple[int, int, Iterator] | None = field(default=None, repr=False)  # (epoch, next first, batches)

    @property
    def num_train(self) -> int:
        return len(self.data.train)

    def batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        epoch, first, _ = self.slot(step, micro)
        if first >= self.num_train:
            return None
        stride = self.batch_size * self.world_size
        if self._stream is None or self._stream[:2] != (epoch, first):
            # A new epoch, or a resumed run: start the loader at this position.
            order = self.epoch_order(epoch).tolist()
            mine = [order[i:i + self.batch_size] for i in range(first, len(order), stride)]
            self._stream = (epoch, first, iter(self.data.loader("train", mine, self.num_workers)))
        batches = self._stream[2]
        x, y = next(batches)
        self._stream = (epoch, first + stride, batches)
        return self.augmented(x, step, micro), y

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield from self.data.batches("test", batch_size, shuffle=False, num_workers=self.num_workers)


@dataclass
class LanguageModelTask(TaskReport):
    """Random windows of a token memmap; validation loss and perplexity."""

    tokens: TokenData
    block_size: int
    batch_size: int
    seed: int
    eval_batches: int
    device: torch.device
    rank: int = 0
    kind, history_key, goal, goal_higher = LANGUAGE_MODELING, "evals", "val_loss", False
    best_fields = {"best_val_loss": "val_loss", "best_perplexity": "val_perplexity", "best_step": "step"}
    final_fields = {"final_val_loss": "val_loss", "final_perplexity": "val_perplexity"}
    line = "step {step}  train loss {train_loss}  val loss {val_loss:.4f}  ppl {val_perplexity:.2f}"

    def batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        return get_batch(self.tokens.train, self.block_size, self.batch_size,
                         _generator(self.seed, step, micro, self.rank), self.device)

    @staticmethod
    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, None]:
        _, loss = model(x, y)
        return loss, None

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Mean validation loss over `eval_batches` fixed random windows, and its perplexity."""
        generator = _generator(EVAL_SEED)
        total = 0.0
        for _ in range(self.eval_batches):
            x, y = get_batch(self.tokens.val, self.block_size, self.batch_size, generator, self.device)
            total += model(x, y)[1].item()
        val_loss = total / self.eval_batches
        return {"val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 700.0))}

    def record(self, step: int, window: TrainWindow, evaluation: dict[str, float]) -> dict[str, Any]:
        return {"step": step, "train_loss": window.mean_loss(), **evaluation}

    def summary(self, history: list[dict[str, Any]], best: Optional[dict[str, Any]],
                before_target: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        return {**super().summary(history, best, before_target), "initial_perplexity": history[0]["val_perplexity"]}
