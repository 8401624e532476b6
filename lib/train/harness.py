"""The trainer side of a run folder, shared by every `<model>/train.py`.

A trainer process reads its RunSpec from `<run-dir>/run.json`, builds its
optimizer, pruner and schedule from it, trains with lib/train/loop.py and
writes `<run-dir>/metrics.json` atomically. It never writes result.json:
that is the runner's record of how the process ended.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from lib.errors import NON_FINITE_MARKER, NonFiniteError, UserError
from lib.gpu_monitor.sampler import read_summary
from lib.jsonio import SCHEMA_VERSION, read_json, write_json_atomic
from lib.models import model_entry
from lib.names import resume_dir
from lib.optim import state_bytes
from lib.optim.lr_schedules import LRSchedule, lr_schedule_for
from lib.pruning import GradualPruner
from lib.pruning.schedules import curve_for, pruning_ramp
from lib.pruning.scores import score_name
from lib.spec import RunSpec, SpecError
from lib.trackers.backends import Trackers, open_trackers
from lib.trackers.settings import TrackerSettings
from lib.train.batch_plan import BatchPlan
from lib.train.checkpoint import checkpoint_dir
from lib.train.distributed import Dist
from lib.train.loop import LoopConfig, TrainingLoop, metrics_from


def parse_run_dir(description: str) -> tuple[Path, bool]:
    """(run folder, whether the trainer may download data) from the command line."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--run-dir", required=True, type=Path, help="run folder holding run.json")
    parser.add_argument("--no-download", action="store_true",
                        help="use only data already on disk (the runner prepared it before the matrix)")
    args = parser.parse_args()
    return args.run_dir, not args.no_download


@dataclass(frozen=True)
class RunContext:
    """What every trainer knows once it has started: its folder, spec and device."""

    run_dir: Path
    spec: RunSpec
    download: bool
    device: torch.device
    device_note: Optional[str]
    started: float


def start_run(description: str) -> RunContext:
    """Parse the command line, read run.json, seed everything and pick the device."""
    started = time.perf_counter()
    run_dir, download = parse_run_dir(description)
    spec = load_spec(run_dir)
    seed_everything(spec.seed)
    device, note = resolve_device(spec.training.device)
    if note:
        print(f"note: {note}")
    if device.type == "cuda" and model_entry(spec.model).tf32_setting:  # GPT2_TF32_ALLOWED, as upstream and nanoGPT
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = spec.training.tf32
    return RunContext(run_dir, spec, download, device, note, started)


def load_spec(run_dir: Path) -> RunSpec:
    """The typed RunSpec of run.json (lib/spec.py: no configuration code, no kconfiglib)."""
    path = run_dir / "run.json"
    data = read_json(path)
    try:
        return RunSpec.from_json(data.get("spec") if isinstance(data, dict) else None)
    except SpecError as exc:
        raise UserError(f"{path}: spec: {exc}") from None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (initial weights, dropout); data order has its
    own per-step generators (lib/train/tasks.py)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    """The run's pruner, or None for a dense run; prints its ramp."""
    if spec.pruning == "none":
        return None
    pruning = spec.pruning_settings
    ramp = pruning_ramp(spec, total_steps, steps_per_epoch)
    frequency = spec.pruning_timing()[2]
    score = score_name(spec.pruning, spec.variant, spec.optimizer_params.state_score)
    curve = curve_for(pruning.schedule, spec.pruning)
    print(f"{ramp.describe()}; curve {curve}, mask update every {frequency} steps")
    pruner = GradualPruner(model, optimizer, score, spec.target_sparsity_pct / 100.0,
                           warmup_steps=ramp.warmup_steps, ramp_end_step=ramp.ramp_end_step, frequency=frequency,
                           schedule=curve, seed=spec.seed, mask_storage=pruning.mask_storage)
    pruner.ramp = ramp
    return pruner


def schedule_for(spec: RunSpec, total_steps: int, warmup_steps: int | None = None,
                 min_lr: float | None = None, decay_steps: int = 0) -> LRSchedule:
    """The run's learning-rate schedule (lib/optim/lr_schedules.py)."""
    warmup = spec.training.lr_warmup_steps if warmup_steps is None else warmup_steps
    return lr_schedule_for(spec.optimizer, spec.optimizer_params, spec.training, total_steps, warmup, min_lr,
                           decay_steps, per_model=model_entry(spec.model).lr_schedule)


def memory_account(model: nn.Module, optimizer: torch.optim.Optimizer, pruner: GradualPruner | None) -> dict:
    """Bytes of weights, gradients, optimizer state and masks, measured from the tensors."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    # Every trainable parameter has a gradient of its size during each step
    # (the loop frees them between steps, so count what a step holds).
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
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


def write_metrics(run_dir: Path, spec: RunSpec, metrics: dict[str, Any]) -> None:
    metrics = {"schema_version": SCHEMA_VERSION, "run_id": spec.run_id, "model": spec.model, **metrics}
    metrics["sparsity"]["target_pct"] = spec.target_sparsity_pct
    write_json_atomic(run_dir / "metrics.json", metrics)


def cuda_peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None



def grad_clip_norm(spec: RunSpec) -> float:
    """GRADIENT_CLIP_NORM, or the model's default when it is empty (0 = off)."""
    configured = spec.training.grad_clip_norm
    return model_entry(spec.model).grad_clip_norm if configured is None else configured


def loop_config(spec: RunSpec, run_dir: Path, plan: BatchPlan, *, total_steps: int, eval_every: int,
                max_time_s: float = 0.0, eval_at_start: bool = False,
                throughput_fields: Optional[Callable[[Optional[float]], dict[str, Any]]] = None,
                model_args: Optional[dict[str, Any]] = None) -> LoopConfig:
    """The loop's settings for a run; checkpoints carry the run's spec as "config" (JSON
    types only, so torch.load(weights_only=True) reads them) and `model_args` when given."""
    training = spec.training
    meta: dict[str, Any] = {"config": json.loads(json.dumps(spec.to_json()))}
    if model_args is not None:
        meta["model_args"] = dict(model_args)
    return LoopConfig(
        total_steps=total_steps, eval_every=max(1, eval_every), grad_accum=plan.grad_accum, max_time_s=max_time_s,
        mixed_precision=training.mixed_precision, compile_model=training.compile_model,
        resume_dir=resume_dir(run_dir) if training.resume else None,
        best_dir=checkpoint_dir(run_dir) if training.save_checkpoint else None,
        eval_at_start=eval_at_start, log_every=training.log_every,
        grad_clip_norm=grad_clip_norm(spec), throughput_fields=throughput_fields, checkpoint_meta=meta,
        identity={"spec": spec.to_json(), "plan": plan.to_json()})


def train_and_record(run_dir: Path, spec: RunSpec, loop: TrainingLoop, *, started: float, note: Optional[str],
                     plan: BatchPlan, dataset: dict[str, Any], dist: Dist = Dist(),
                     extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Run the loop, then write metrics.json (rank 0 only) with the trainer's `extra`
    fields; returns the metrics. Rank 0 also logs to the trackers run.json enables."""
    if dist.is_main:
        loop.tracker = start_trackers(run_dir, spec)
    try:
        loop.run()
        metrics = metrics_from(loop)
        metrics["memory"] = memory_account(loop.model, loop.optimizer, loop.pruner)
        metrics["memory"]["cuda_max_allocated_mib"] = cuda_peak_mib(loop.device)
        metrics.update(dataset=dataset, environment=environment(loop.device, note), batch_plan=plan.to_json(),
                       wall_time_s=time.perf_counter() - started, **(extra or {}))
        if dist.is_main:
            write_metrics(run_dir, spec, metrics)
            loop.discard_resume_state()
            loop.tracker.log(loop.state.step, final_figures(metrics, run_dir))
    except NonFiniteError as exc:
        record_non_finite(run_dir, exc, dist)
        raise
    finally:
        loop.tracker.finish()
    return metrics


def record_non_finite(run_dir: Path, error: NonFiniteError, dist: Dist = Dist()) -> None:
    """Leave NON_FINITE_MARKER in the run folder before the trainer exits NON_FINITE_EXIT: under
    torchrun the runner sees only torchrun's exit code (1), so this file is how it learns that the
    run diverged (not retried, advised a lower rate). Every rank that stops writes it; one of them wins.
    A marker that cannot be written (a full disk) must not replace the error nor its exit code."""
    try:
        write_json_atomic(run_dir / NON_FINITE_MARKER, {"schema_version": SCHEMA_VERSION, "rank": dist.rank,
                                                        "world_size": dist.world_size, "error": str(error)})
    except OSError as exc:  # WriteError among them
        print(f"warning: {exc}")


def start_trackers(run_dir: Path, spec: RunSpec) -> Trackers:
    """The run's trackers (run.json "tracking"), started under its name, config and matrix."""
    settings = TrackerSettings.from_json(read_json(run_dir / "run.json").get("tracking"))
    trackers = open_trackers(settings, run_dir)
    trackers.start(settings.run_name_for(spec.run_id), {"run_id": spec.run_id, **spec.to_json()},
                   group=run_dir.parent.name)
    return trackers


def final_figures(metrics: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The end-of-run figures for the trackers: best and final metrics, sparsity, the memory
    account and the memory sampler's summary as of its latest flush (every 5 s)."""
    figures = {f"final/{k}": v for k, v in metrics.items() if k.startswith(("best_", "final_"))}
    figures["final/sparsity_pct"] = metrics["sparsity"]["global_pct"]
    figures.update({f"memory/{k}": v for k, v in metrics["memory"].items()})
    figures.update({f"memory_samples/{k}": v for k, v in (read_summary(run_dir / "gpu_stats.json") or {}).items()})
    return figures
