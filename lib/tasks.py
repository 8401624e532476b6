"""What the training loop trains: image classification or language modelling.

A task owns its batches, its loss, its evaluation and the fields it adds to
metrics.json; lib/train_loop.py owns the steps. Batches are a pure function
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


class ClassifierMetrics:
    """Loss, record and summary of any image classifier task (top-1 accuracy)."""

    kind = CLASSIFICATION
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

    @staticmethod
    def better(new: dict[str, float], best: dict[str, float] | None) -> bool:
        return best is None or new["test_accuracy_pct"] > best["test_accuracy_pct"]

    def record(self, step: int, window: TrainWindow, evaluation: dict[str, float]) -> dict[str, Any]:
        return {"epoch": math.ceil(step / self.steps_per_epoch), "step": step, "train_loss": window.mean_loss(),
                "train_accuracy_pct": window.accuracy_pct(), **evaluation}

    @staticmethod
    def describe(record: dict[str, Any]) -> str:
        return (f"epoch {record['epoch']}  loss {_loss_text(record['train_loss'])}  "
                f"test acc {record['test_accuracy_pct']:.2f}%")

    @staticmethod
    def summary(history: list[dict[str, Any]], best: dict[str, Any]) -> dict[str, Any]:
        return {"task": CLASSIFICATION, "epochs": history, "best_accuracy_pct": best["test_accuracy_pct"],
                "best_epoch": best["epoch"], "final_accuracy_pct": history[-1]["test_accuracy_pct"],
                "final_test_loss": history[-1]["test_loss"]}


def _slot_range(step: int, micro: int, steps_per_epoch: int, grad_accum: int, world_size: int, rank: int,
                batch_size: int) -> tuple[int, int, int]:
    """(epoch, first, end) positions in the epoch's order of one micro-batch."""
    epoch, index = divmod(step, steps_per_epoch)
    slot = (index * grad_accum + micro) * world_size + rank
    return epoch, slot * batch_size, (slot + 1) * batch_size


@dataclass
class ClassificationTask(ClassifierMetrics):
    """Images and labels already on the device; the loop asks for batches by step."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    batch_size: int
    seed: int
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    grad_accum: int = 1
    rank: int = 0
    world_size: int = 1
    _order: tuple[int, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.train_x.shape[0] / (self.batch_size * self.grad_accum * self.world_size)))

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if self._order is None or self._order[0] != epoch:
            order = torch.randperm(self.train_x.shape[0], generator=_generator(self.seed, epoch))
            self._order = (epoch, order.to(self.train_x.device))
        return self._order[1]

    def batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Micro-batch `micro` of optimizer step `step` (0-based), or None past the epoch's end."""
        epoch, first, end = _slot_range(step, micro, self.steps_per_epoch, self.grad_accum, self.world_size,
                                        self.rank, self.batch_size)
        idx = self._epoch_order(epoch)[first:end]
        if idx.numel() == 0:
            return None
        x, y = self.train_x[idx], self.train_y[idx]
        if self.augment:
            x = self.augment(x, _generator(self.seed, step, micro, self.rank, 1))
        return x, y

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, self.test_x.shape[0], batch_size):
            yield self.test_x[start:start + batch_size], self.test_y[start:start + batch_size]


@dataclass
class FolderClassificationTask(ClassifierMetrics):
    """Images decoded from an image folder by DataLoader workers, in the same
    step-determined order as ClassificationTask (so resume works alike)."""

    data: ImageFolderData
    batch_size: int
    seed: int
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    grad_accum: int = 1
    rank: int = 0
    world_size: int = 1
    num_workers: int = 4
    _stream: tuple[int, int, Iterator] | None = field(default=None, repr=False)  # (epoch, next first, batches)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(len(self.data.train) / (self.batch_size * self.grad_accum * self.world_size)))

    def batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        epoch, first, end = _slot_range(step, micro, self.steps_per_epoch, self.grad_accum, self.world_size,
                                        self.rank, self.batch_size)
        if first >= len(self.data.train):
            return None
        if self._stream is None or self._stream[:2] != (epoch, first):
            # A new epoch, or a resumed run: start the loader at this position.
            order = torch.randperm(len(self.data.train), generator=_generator(self.seed, epoch)).tolist()
            stride = self.batch_size * self.world_size
            mine = [order[i:i + self.batch_size] for i in range(first, len(order), stride)]
            self._stream = (epoch, first, iter(self.data.loader("train", mine, self.num_workers)))
        epoch_now, _, batches = self._stream
        x, y = next(batches)
        self._stream = (epoch_now, first + self.batch_size * self.world_size, batches)
        if self.augment:
            x = self.augment(x, _generator(self.seed, step, micro, self.rank, 1))
        return x, y

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield from self.data.batches("test", batch_size, shuffle=False, num_workers=self.num_workers)


@dataclass
class LanguageModelTask:
    """Random windows of a token memmap; validation loss and perplexity."""

    tokens: TokenData
    block_size: int
    batch_size: int
    seed: int
    eval_batches: int
    device: torch.device
    rank: int = 0
    kind: str = LANGUAGE_MODELING

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

    @staticmethod
    def better(new: dict[str, float], best: dict[str, float] | None) -> bool:
        return best is None or new["val_loss"] < best["val_loss"]

    def record(self, step: int, window: TrainWindow, evaluation: dict[str, float]) -> dict[str, Any]:
        return {"step": step, "train_loss": window.mean_loss(), **evaluation}

    @staticmethod
    def describe(record: dict[str, Any]) -> str:
        return (f"step {record['step']}  train loss {_loss_text(record['train_loss'])}  val loss {record['val_loss']:.4f}  "
                f"ppl {record['val_perplexity']:.2f}")

    @staticmethod
    def summary(history: list[dict[str, Any]], best: dict[str, Any]) -> dict[str, Any]:
        return {"task": LANGUAGE_MODELING, "evals": history, "best_val_loss": best["val_loss"],
                "best_perplexity": best["val_perplexity"], "best_step": best["step"],
                "final_val_loss": history[-1]["val_loss"], "final_perplexity": history[-1]["val_perplexity"],
                "initial_perplexity": history[0]["val_perplexity"]}
