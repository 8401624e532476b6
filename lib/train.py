"""The shared training loop and the run-folder plumbing every `<model>/train.py` uses.

A trainer process reads its RunSpec from `<run-dir>/run.json`, trains, and
writes `<run-dir>/metrics.json` atomically. It never writes result.json: that
is the runner's record of how the process ended.
"""
from __future__ import annotations

import argparse
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from lib.jsonio import SCHEMA_VERSION, read_json, write_json_atomic
from lib.matrix import RunSpec
from lib.optim import state_bytes
from lib.optim.lr_schedules import LRSchedule, lr_schedule_for
from lib.pruning import GradualPruner, measure_sparsity, prunable_parameters
from lib.pruning.scores import score_name


def parse_run_dir(description: str) -> tuple[Path, bool]:
    """(run folder, whether the trainer may download data) from the command line."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--run-dir", required=True, type=Path, help="run folder holding run.json")
    parser.add_argument("--no-download", action="store_true",
                        help="use only data already on disk (the runner prepared it before the matrix)")
    args = parser.parse_args()
    return args.run_dir, not args.no_download


def load_spec(run_dir: Path) -> RunSpec:
    return RunSpec.from_json(read_json(run_dir / "run.json")["spec"])


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator for data order."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(requested: str) -> tuple[torch.device, str | None]:
    """The device to use and, when it differs from the request, a note saying why."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu"), None
    if requested.startswith("cuda") and not torch.cuda.is_available():
        return torch.device("cpu"), f"DEVICE={requested} requested but no CUDA device is present: ran on CPU"
    return torch.device(requested), None


def environment(device: torch.device, note: str | None) -> dict[str, Any]:
    return {"device": device.type, "torch_version": torch.__version__, "num_threads": torch.get_num_threads(),
            "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "host": platform.node(), "device_note": note}


def build_pruner(spec: RunSpec, model: nn.Module, optimizer: torch.optim.Optimizer, total_steps: int,
                 steps_per_epoch: int) -> GradualPruner | None:
    """The run's pruner, or None for a dense run.

    State runs follow AdamWPrune's own warm-up/frequency/ramp-end settings
    (as upstream); magnitude and movement runs the general pruning ones.
    """
    if spec.pruning == "none":
        return None
    pruning, opt = spec.hyperparams["pruning"], spec.hyperparams["optimizer"]
    ramp_end = min(pruning["ramp_end_epoch"] * steps_per_epoch, total_steps)
    warmup, frequency = pruning["warmup_steps"], pruning["frequency"]
    if spec.pruning == "state":
        warmup, frequency = opt["warmup_steps"], opt["frequency"]
        ramp_end = min(opt["ramp_end_step"] or ramp_end, total_steps)
    score = score_name(spec.pruning, spec.variant, opt.get("state_score", "bitter0"))
    return GradualPruner(model, optimizer, score, spec.target_sparsity_pct / 100.0, warmup_steps=min(warmup, ramp_end),
                         ramp_end_step=ramp_end, frequency=frequency, schedule=pruning["schedule"], seed=spec.seed)


def schedule_for(spec: RunSpec, total_steps: int, warmup_steps: int | None = None,
                 min_lr: float | None = None) -> LRSchedule:
    """The run's learning-rate schedule (lib/optim/lr_schedules.py)."""
    training = spec.hyperparams["training"]
    warmup = training.get("lr_warmup_steps", 0) if warmup_steps is None else warmup_steps
    return lr_schedule_for(spec.optimizer, spec.hyperparams["optimizer"], training, total_steps, warmup, min_lr)


@dataclass
class ClassificationTask:
    """Data and batch transform of an image classifier; the loop does the rest."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """(mean loss, top-1 accuracy %) over a held-out set."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, x.shape[0], batch_size):
        logits = model(x[start:start + batch_size])
        target = y[start:start + batch_size]
        loss_sum += nn.functional.cross_entropy(logits, target, reduction="sum").item()
        correct += int((logits.argmax(1) == target).sum())
    return loss_sum / x.shape[0], 100.0 * correct / x.shape[0]


def memory_account(model: nn.Module, optimizer: torch.optim.Optimizer, pruner: GradualPruner | None) -> dict:
    """Bytes of weights, gradients, optimizer state and masks, measured from the tensors."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    state = state_bytes(optimizer)
    masks = pruner.mask_bytes() if pruner else 0
    tracked = pruner.tracked_bytes() if pruner else 0
    nonzero = sum(int(torch.count_nonzero(p)) * p.element_size() for p in model.parameters())
    return {"weights_bytes": weights, "gradients_bytes": grads, "optimizer_state_bytes": state,
            "mask_bytes": masks, "pruning_state_bytes": tracked,
            "training_multiplier": (weights + grads + state + masks + tracked) / weights,
            "inference_multiplier": nonzero / weights,
            "terms": "training: weights + gradients + optimizer state + masks + pruning state; "
                     "inference: non-zero weights only (sparse storage, index overhead not counted)"}


def train_classifier(model: nn.Module, task: ClassificationTask, optimizer: torch.optim.Optimizer,
                     pruner: GradualPruner | None, *, epochs: int, batch_size: int, schedule: LRSchedule,
                     generator: torch.Generator, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train for `epochs`, evaluate each epoch; return the metrics of metrics.json."""
    n = task.train_x.shape[0]
    step, history, best = 0, [], (-1.0, 0)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        epoch_start, loss_sum, correct = time.perf_counter(), 0.0, 0
        order = torch.randperm(n, generator=generator).to(task.train_x.device)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            x, y = task.train_x[idx], task.train_y[idx]
            if task.augment:
                x = task.augment(x, generator)
            for group in optimizer.param_groups:
                group["lr"] = schedule.at(step)
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if pruner:
                pruner.before_optimizer_step()
            optimizer.step()
            step += 1
            if pruner:
                pruner.after_optimizer_step(step)
            loss_sum += loss.item() * y.shape[0]
            correct += int((logits.argmax(1) == y).sum())
        test_loss, test_acc = evaluate(model, task.test_x, task.test_y, max(batch_size, 512))
        sparsity, _, _, _ = measure_sparsity(prunable_parameters(model))
        record = {"epoch": epoch, "train_loss": loss_sum / n, "train_accuracy_pct": 100.0 * correct / n,
                  "test_loss": test_loss, "test_accuracy_pct": test_acc, "sparsity_pct": sparsity,
                  "lr": optimizer.param_groups[0]["lr"], "epoch_time_s": time.perf_counter() - epoch_start}
        history.append(record)
        best = max(best, (test_acc, epoch))
        log(f"epoch {epoch}/{epochs}  loss {record['train_loss']:.4f}  test acc {test_acc:.2f}%  "
            f"sparsity {sparsity:.1f}%  {record['epoch_time_s']:.1f}s")
    train_time = time.perf_counter() - start
    global_pct, per_layer, zeros, total = measure_sparsity(prunable_parameters(model))
    return {"task": "classification", "epochs": history, "best_accuracy_pct": best[0], "best_epoch": best[1],
            "final_accuracy_pct": history[-1]["test_accuracy_pct"], "final_test_loss": history[-1]["test_loss"],
            "sparsity": {"global_pct": global_pct, "per_layer_pct": per_layer, "prunable_params": total,
                         "zero_params": zeros},
            "pruning_schedule": pruner.history if pruner else [],
            "memory": memory_account(model, optimizer, pruner),
            "train_time_s": train_time, "throughput_samples_per_s": epochs * n / train_time if train_time else None,
            "steps": step}


def write_metrics(run_dir: Path, spec: RunSpec, metrics: dict[str, Any]) -> None:
    metrics = {"schema_version": SCHEMA_VERSION, "run_id": spec.run_id, "model": spec.model, **metrics}
    metrics["sparsity"]["target_pct"] = spec.target_sparsity_pct
    write_json_atomic(run_dir / "metrics.json", metrics)


def cuda_peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None

