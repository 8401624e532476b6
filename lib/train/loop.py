"""The one training loop every trainer uses, for classifiers and language models.

Step-based: an epoch is `steps_per_epoch` optimizer steps. Each step runs
`grad_accum` micro-batches (DDP synchronises only the last), lets the pruner
zero pruned gradients, steps the optimizer and then lets the pruner update
its masks. Evaluation every `eval_every` steps writes a history record; with
a resume folder each evaluation also writes last.pt, so a killed run goes on
from its last evaluation and ends at the same step count as one never
interrupted (batches depend only on the step, see lib/train/tasks.py).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from lib.errors import NonFiniteError
from lib.optim.lr_schedules import LRSchedule
from lib.pruning import GradualPruner, measure_sparsity, prunable_parameters
from lib.trackers.backends import Trackers
from lib.train.checkpoint import BEST, LAST, load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from lib.train.distributed import Dist, any_rank, mean_across_ranks
from lib.train.tasks import ClassificationTask, LanguageModelTask, TrainWindow

Task = Union[ClassificationTask, LanguageModelTask]


@dataclass
class LoopConfig:
    total_steps: int
    eval_every: int
    grad_accum: int = 1
    max_time_s: float = 0.0  # 0: no limit; counts training time across resumes
    mixed_precision: bool = False
    compile_model: bool = False
    resume_dir: Optional[Path] = None  # last.pt lives here; None: no resume
    best_dir: Optional[Path] = None  # best.pt goes here (SAVE_CHECKPOINT); None: not saved
    eval_at_start: bool = False  # language models: record the untrained perplexity
    log_every: int = 0  # extra progress lines between evaluations (0: none)
    grad_clip_norm: float = 0.0  # clip the global norm of the live gradients to this (0: off)
    identity: dict[str, Any] = field(default_factory=dict)  # a checkpoint of another run is not resumed
    # Fields each evaluation record gets from the samples/s since the previous one (GPT-2: MFU).
    throughput_fields: Optional[Callable[[Optional[float]], dict[str, Any]]] = None
    checkpoint_meta: dict[str, Any] = field(default_factory=dict)  # plain values added to best.pt and last.pt


@dataclass
class LoopState:
    step: int = 0
    train_time_s: float = 0.0
    eval_time_s: float = 0.0
    samples_seen: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    train_log: list[dict[str, Any]] = field(default_factory=list)  # the step's own loss every log_every steps
    best: Optional[dict[str, Any]] = None  # best evaluation at the target sparsity (any, for a dense run)
    best_before_target: Optional[dict[str, Any]] = None  # best evaluation of a pruned run before its target
    resumed_from_step: Optional[int] = None
    last_grad_norm: Optional[torch.Tensor] = None  # before clipping, at the latest step (not checkpointed)
    last_step_loss: Optional[torch.Tensor] = None  # mean over the latest step's micro-batches, on the device
    window_mark: tuple[float, int] = (0.0, 0)  # (train_time_s, samples_seen) at the previous evaluation


AT_TARGET_TOLERANCE_PCT = 0.5  # an evaluation counts as "at the target sparsity" within this many points
NONFINITE_CHECK_EVERY = 50  # on CUDA, steps between host syncs for the non-finite check (and at evaluations)


def autocast_for(device: torch.device, enabled: bool) -> tuple[contextlib.AbstractContextManager, str]:
    """bf16 autocast where the device supports it, and the precision actually used."""
    if not enabled:
        return contextlib.nullcontext(), "fp32"
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.float16), "fp16-autocast with loss scaling (no bf16 on this GPU)"
    return torch.autocast(device.type, dtype=torch.bfloat16), "bf16-autocast"


# What _resume reads from last.pt; a checkpoint lacking any is set aside, not half-applied.
RESUME_KEYS = ("identity", "step", "train_time_s", "eval_time_s", "samples_seen", "history", "best", "model",
               "optimizer", "pruner", "rng")
DIVERGED_FACTOR = 1000.0  # a finite training loss this many times the first one has diverged


class NonFiniteWatch:
    """Remembers, on the device and without a host sync, the first step whose
    value (loss or gradient norm) was not finite or, with `diverged_factor`, above
    that multiple of the first value seen (for a loss, about the chance level:
    1000x it means the model puts ~0 probability on every target); `check()`
    syncs and raises."""

    def __init__(self, device: torch.device, diverged_factor: Optional[float] = None) -> None:
        self.first_step = torch.full((), -1, dtype=torch.long, device=device)
        self.value = torch.zeros((), device=device)
        self.factor, self.reference = diverged_factor, None

    def observe(self, value: torch.Tensor, step: int) -> None:
        value = value.detach().float()
        bad = ~torch.isfinite(value)
        if self.factor is not None:
            if self.reference is None:
                self.reference = value.abs().clone()
            bad = bad | (value.abs() > self.factor * self.reference)
        bad = bad & (self.first_step < 0)
        self.first_step = torch.where(bad, torch.full_like(self.first_step, step), self.first_step)
        self.value = torch.where(bad, value, self.value)

    def check(self, lr_at: Callable[[int], float], what: str = "loss") -> None:
        step = int(self.first_step)
        if step < 0:
            return
        value = float(self.value)
        if math.isfinite(value):
            kind = (f"{value:.3g}, over {self.factor:g}x its first value {float(self.reference):.3g} "
                    "(diverged)")
        else:
            kind = "nan" if math.isnan(value) else "inf"
        raise NonFiniteError(f"{what} became {kind} at step {step + 1} (lr {lr_at(step):.3g}); "
                             "stopped: lower the learning rate or clip gradients (CONFIG_GRADIENT_CLIP_NORM)")


def _identity_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


class TrainingLoop:
    def __init__(self, model: nn.Module, task: Task, optimizer: torch.optim.Optimizer,
                 pruner: Optional[GradualPruner], schedule: LRSchedule, config: LoopConfig, *,
                 device: torch.device, dist: Dist = Dist(), log: Callable[[str], None] = print) -> None:
        self.model, self.task, self.optimizer, self.pruner = model, task, optimizer, pruner
        self.schedule, self.config, self.device, self.dist = schedule, config, device, dist
        self.log = log if dist.is_main else (lambda _: None)
        self.state = LoopState()
        self.autocast, self.precision = autocast_for(device, config.mixed_precision)
        # fp16 autocast needs loss scaling; bf16 and fp32 do not (the scaler is then a no-op).
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision.startswith("fp16"))
        self.loss_watch, self.norm_watch = NonFiniteWatch(device, DIVERGED_FACTOR), NonFiniteWatch(device)
        self.forward_model = self._wrap(model)
        # Experiment trackers (lib/trackers/backends.py), set by lib/train/harness.py; none by default. Without
        # LOG_EVERY each step's loss waits on the device until the next evaluation, so tracking
        # adds no host sync per step.
        self.tracker = Trackers([])
        self._untracked: list[tuple[int, torch.Tensor, float]] = []

    def _wrap(self, model: nn.Module) -> nn.Module:
        """torch.compile first, then DDP around it (nanoGPT's order)."""
        if self.config.compile_model:
            model = torch.compile(model)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(model, device_ids=[self.dist.local_rank]
                                            if self.device.type == "cuda" else None)
        return model

    # -- checkpoints ------------------------------------------------------

    def _weights(self) -> dict[str, Any]:
        """The part of best.pt and last.pt nanoGPT's tools read: weights under "model" (keys as
        the module names them, no compile or DDP prefix), "iter_num", "best_<goal>"
        ("best_val_loss" for language models) and the trainer's meta ("model_args", "config")."""
        s, goal = self.state, self.task.goal
        return {"model": self.model.state_dict(), "iter_num": s.step,
                f"best_{goal}": s.best[goal] if s.best else None, **self.config.checkpoint_meta}

    def _checkpoint_state(self) -> dict[str, Any]:
        s = self.state
        return {**self._weights(), "identity": _identity_hash(self.config.identity), "step": s.step,
                "train_time_s": s.train_time_s, "eval_time_s": s.eval_time_s, "samples_seen": s.samples_seen,
                "history": s.history, "train_log": s.train_log, "best": s.best,
                "best_before_target": s.best_before_target, "scaler": self.scaler.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "pruner": self.pruner.state_dict() if self.pruner else None, "rng": rng_state()}

    def _resume(self) -> None:
        if self.config.resume_dir is None:
            return
        saved = load_checkpoint(self.config.resume_dir / LAST, self.device, RESUME_KEYS)
        if saved is None:
            return
        if saved["identity"] != _identity_hash(self.config.identity):
            self.log(f"note: {self.config.resume_dir / LAST} belongs to another configuration; starting afresh")
            return
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.pruner and saved["pruner"]:
            self.pruner.load_state_dict(saved["pruner"])
        restore_rng_state(saved["rng"])
        s = self.state
        s.step, s.train_time_s, s.eval_time_s = saved["step"], saved["train_time_s"], saved["eval_time_s"]
        s.samples_seen, s.history, s.best = saved["samples_seen"], saved["history"], saved["best"]
        s.best_before_target = saved.get("best_before_target")
        s.train_log = saved.get("train_log", [])
        s.window_mark = (s.train_time_s, s.samples_seen)
        if saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        s.resumed_from_step = s.step
        self.log(f"resumed from {self.config.resume_dir / LAST} at step {s.step}/{self.config.total_steps}")

    def _best_path(self) -> Optional[Path]:
        """Until the run finishes, best.pt stays beside last.pt: `make continue`
        sets an unfinished run folder aside, and a resumed run must keep it."""
        if self.config.best_dir is None:
            return None
        return (self.config.resume_dir or self.config.best_dir) / BEST

    def _save(self, improved: bool) -> None:
        if not self.dist.is_main:
            return
        best = self._best_path()
        if best is not None and improved:
            save_checkpoint(best, {**self._weights(), "step": self.state.step, "evaluation": self.state.best})
        if self.config.resume_dir is not None and 0 < self.state.step < self.config.total_steps:
            save_checkpoint(self.config.resume_dir / LAST, self._checkpoint_state())

    def discard_resume_state(self) -> None:
        """The run is done: move best.pt into the run folder and free last.pt
        (for GPT-2 124M about 1.6 GB)."""
        if self.config.resume_dir is None or not self.dist.is_main:
            return
        best = self._best_path()
        if best is not None and best.is_file():
            self.config.best_dir.mkdir(parents=True, exist_ok=True)
            shutil.move(best, self.config.best_dir / BEST)
        shutil.rmtree(self.config.resume_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.config.resume_dir.parent.rmdir()  # .resume/ itself, once no run needs it

    # -- the loop ---------------------------------------------------------

    def _evaluate(self, window: TrainWindow) -> None:
        self._check_finite()  # never record (or checkpoint) a diverged model
        self._flush_tracked_steps()
        start = time.perf_counter()
        if self.dist.enabled and window.samples:  # every rank saw equally many samples
            window.loss_sum = mean_across_ranks(float(window.loss_sum), self.dist, self.device)
            window.correct = mean_across_ranks(float(window.correct), self.dist, self.device)
        self.model.eval()
        with self.autocast:
            evaluation = self.task.evaluate(self.model)
        self.model.train()
        s = self.state
        sparsity = measure_sparsity(prunable_parameters(self.model))[0]
        record = {**self.task.record(s.step, window, evaluation), "sparsity_pct": sparsity,
                  # the rate of the step just taken; before any, the one the first step will take
                  "lr": self.optimizer.param_groups[0]["lr"] if s.step else self.schedule.at(0),
                  "elapsed_s": s.train_time_s + s.eval_time_s,
                  "samples_seen": s.samples_seen}
        if s.last_grad_norm is not None:
            record["grad_norm"] = float(s.last_grad_norm)
        if self.config.throughput_fields is not None:
            record.update(self.config.throughput_fields(self._window_samples_per_s()))
        if self.pruner is not None:
            record["at_target"] = self._at_target(sparsity)
        s.history.append(record)
        self.tracker.log(s.step, {f"eval/{k}": v for k, v in record.items() if k != "step"})
        improved = False
        if record.get("at_target", True):
            improved = self.task.better(record, s.best)
            if improved:
                s.best = record
        elif self.task.better(record, s.best_before_target):
            s.best_before_target = record
        s.eval_time_s += time.perf_counter() - start
        mfu = f"  mfu {record['mfu_pct']:.2f}%" if record.get("mfu_pct") is not None else ""
        self.log(f"{self.task.describe(record)}  sparsity {sparsity:.1f}%  lr {record['lr']:.3g}{mfu}  "
                 f"[{s.step}/{self.config.total_steps} steps, {s.train_time_s:.0f}s]")
        self._save(improved)

    def _window_samples_per_s(self) -> Optional[float]:
        """Training samples/s since the previous evaluation (None when no step ran), then a new window."""
        s = self.state
        time0, samples0 = s.window_mark
        s.window_mark = (s.train_time_s, s.samples_seen)
        seconds, samples = s.train_time_s - time0, s.samples_seen - samples0
        return samples / seconds if samples and seconds > 0 else None

    def _log_step(self, window: TrainWindow) -> None:
        """nanoGPT's per-step line: this step's own loss (rank 0's micro-batches), recorded in train_log."""
        cfg, s = self.config, self.state
        loss = float(s.last_step_loss) if s.last_step_loss is not None else None
        s.train_log.append({"step": s.step, "train_loss": loss, "lr": self.optimizer.param_groups[0]["lr"],
                            "elapsed_s": s.train_time_s + s.eval_time_s})
        self.tracker.log(s.step, {"train/loss": loss, "train/lr": s.train_log[-1]["lr"]})
        if s.step % cfg.eval_every:  # an evaluation line follows otherwise
            self.log(f"step {s.step}/{cfg.total_steps}  loss {loss if loss is not None else math.nan:.4f}  "
                     f"(mean since last evaluation {window.mean_loss() or 0:.4f})  "
                     f"{s.samples_seen / max(s.train_time_s, 1e-9):.1f} samples/s")

    def _track_step(self) -> None:
        """Keep this step's loss for the trackers (when LOG_EVERY does not already send it)."""
        s = self.state
        if self.tracker.active and not self.config.log_every and s.last_step_loss is not None:
            self._untracked.append((s.step, s.last_step_loss, self.optimizer.param_groups[0]["lr"]))

    def _flush_tracked_steps(self) -> None:
        """Send the kept per-step losses: one host sync for all of them."""
        if not self._untracked:
            return
        losses = torch.stack([loss for _, loss, _ in self._untracked]).tolist()
        for (step, _, lr), loss in zip(self._untracked, losses):
            self.tracker.log(step, {"train/loss": loss, "train/lr": lr})
        self._untracked.clear()

    def _at_target(self, sparsity_pct: float) -> bool:
        """A pruned model is judged at its target: the ramp is over and the
        measured sparsity is within AT_TARGET_TOLERANCE_PCT points of it."""
        pruner = self.pruner
        return (self.state.step >= pruner.ramp_end_step
                and abs(sparsity_pct - pruner.final_global_pct()) <= AT_TARGET_TOLERANCE_PCT)

    def _check_finite(self) -> None:
        self.loss_watch.check(self.schedule.at, "loss")
        self.norm_watch.check(self.schedule.at, "gradient norm")

    def _clip_and_watch(self) -> None:
        """Clip the global norm of the live gradients (pruned entries zeroed first)."""
        if self.pruner is not None:
            self.pruner.zero_pruned_gradients()
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip_norm)
        if not self.scaler.is_enabled():  # with loss scaling an inf norm only skips the step
            self.norm_watch.observe(norm, self.state.step)
        self.state.last_grad_norm = norm

    def _time_up(self) -> bool:
        limit = self.config.max_time_s
        return any_rank(bool(limit) and self.state.train_time_s >= limit, self.dist, self.device)

    def _one_step(self, window: TrainWindow) -> None:
        cfg, s = self.config, self.state
        lr = self.schedule.at(s.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        step_loss, step_samples = torch.zeros((), device=self.device), 0
        for micro in range(cfg.grad_accum):
            batch = self.task.batch(s.step, micro)
            if batch is None:
                continue
            x, y = batch
            last = micro == cfg.grad_accum - 1
            sync = (self.forward_model.no_sync() if self.dist.enabled and not last else contextlib.nullcontext())
            with sync:
                with self.autocast:
                    loss, correct = self.task.loss(self.forward_model, x, y)
                self.scaler.scale(loss / self.task.loss_divisor(s.step, y.shape[0], cfg.grad_accum)).backward()
            self.loss_watch.observe(loss, s.step)
            window.add(loss, correct, y.numel())
            step_loss, step_samples = step_loss + loss.detach().float() * y.numel(), step_samples + y.numel()
            s.samples_seen += y.shape[0] * self.dist.world_size
        if self.pruner:
            self.pruner.before_optimizer_step()
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        if cfg.grad_clip_norm > 0:
            self._clip_and_watch()
        self.scaler.step(self.optimizer)  # a plain optimizer.step() unless fp16 loss scaling is on
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        s.last_step_loss = step_loss / step_samples if step_samples else None
        s.step += 1
        if self.pruner:
            self.pruner.after_optimizer_step(s.step)

    def run(self) -> LoopState:
        """Train to `total_steps` (or the time limit) from scratch or from last.pt."""
        self._resume()
        cfg, s = self.config, self.state
        self.model.train()
        window = TrainWindow()
        if cfg.eval_at_start and not s.history:
            self._evaluate(window)
        while s.step < cfg.total_steps and not self._time_up():
            start = time.perf_counter()
            self._one_step(window)
            if self.device.type != "cuda" or s.step % NONFINITE_CHECK_EVERY == 0:
                self._check_finite()  # a sync each step costs nothing on CPU
            logging = bool(cfg.log_every) and s.step % cfg.log_every == 0
            evaluating = s.step % cfg.eval_every == 0 or s.step == cfg.total_steps
            if self.device.type == "cuda" and (logging or evaluating):
                torch.cuda.synchronize(self.device)  # honest step timing (and MFU) at log and evaluation points
            s.train_time_s += time.perf_counter() - start
            self._track_step()
            if logging:
                self._log_step(window)
            if evaluating:
                self._evaluate(window)
                window = TrainWindow()
        if not s.history or s.history[-1]["step"] != s.step:
            self._evaluate(window)  # stopped by the time limit between evaluations
        return s


def best_scope(loop: TrainingLoop) -> str:
    """What "best" means in this run's metrics.json, said in words for the reports."""
    if loop.pruner is None:
        return "dense: best of all evaluations"
    return (f"at target: best of the evaluations at {loop.pruner.final_global_pct():.1f}% sparsity "
            f"(+-{AT_TARGET_TOLERANCE_PCT} points) after the ramp; earlier ones are best_before_target")


def metrics_from(loop: TrainingLoop) -> dict[str, Any]:
    """The loop's part of metrics.json: curves, best and final figures, sparsity, timing."""
    s, task = loop.state, loop.task
    global_pct, per_layer, zeros, total = measure_sparsity(prunable_parameters(loop.model))
    throughput = s.samples_seen / s.train_time_s if s.train_time_s else None
    metrics = {**task.summary(s.history, s.best, s.best_before_target),
               "best_scope": best_scope(loop),
               "sparsity": {"global_pct": global_pct, "per_layer_pct": per_layer, "prunable_params": total,
                            "zero_params": zeros},
               "pruning_schedule": loop.pruner.history if loop.pruner else [],
               "pruning_ramp": loop.pruner.ramp.to_json() if loop.pruner and loop.pruner.ramp else None,
               "grad_clip_norm": loop.config.grad_clip_norm,
               "steps": s.step, "planned_steps": loop.config.total_steps,
               "stopped_by": "time limit" if s.step < loop.config.total_steps else "steps",
               "resumed_from_step": s.resumed_from_step, "train_time_s": s.train_time_s,
               "eval_time_s": s.eval_time_s, "throughput_samples_per_s": throughput,
               "precision": loop.precision, "compiled": loop.config.compile_model,
               "grad_accum": loop.config.grad_accum, "world_size": loop.dist.world_size,
               "train_log": s.train_log}
    if isinstance(task, LanguageModelTask) and throughput:
        metrics["tokens_per_s"] = throughput * task.block_size
    return metrics
