"""What `make test-matrix-dry-run` says before anything runs: how many runs go
at once on which slots, and how long the matrix should take, estimated from
past successful runs under RESULTS_ROOT.

A past run of exactly the same spec gives its mean duration. Otherwise only a
comparable past run informs a run's estimate: the same model with the same
model settings (size, data, block...: everything but its length), batch,
gradient accumulation, data directory, device, precision and compile setting.
Its duration less the process start-up (STARTUP_S) is scaled by the run's
length in optimizer steps where the configuration fixes them (GPT-2's
max_iters), else in epochs (the same data and batch: the same steps per
epoch), and a GPT-2 run's GPT2_MAX_TIME caps it. A run with no comparable past
run has no estimate (and the output says so). The matrix time replays the runs
in order on the slots, as the local executor starts them.
"""
from __future__ import annotations

import heapq
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from lib.config import RunnerSettings
from lib.errors import UserError, counted
from lib.matrix import spec_from_entry
from lib.jsonio import read_json
from lib.models import model_entry
from lib.optim.lr_schedules import peak_lr, schedule_label
from lib.pruning.schedules import curve_for, fixed_steps, pruning_ramp
from lib.run.slots import SlotPool, visible_gpus
from lib.spec import RunSpec, is_finite_number
from lib.variant_budgets import budget_label


MAX_PAST_RUN_S = 366 * 86400  # a "past run" longer than a year is a damaged or crafted file, not a measurement


STARTUP_S = 4.0  # a trainer process's start-up (Python, torch import) before its first step, on 2 CPU cores
# Model settings that set a run's length, not the cost of a step: left out of what makes past runs comparable
LENGTH_PARAMS = frozenset({"max_iters", "max_time_s", "variant_budgets", "warmup_steps", "min_lr", "lr_decay_iters"})


@dataclass
class PastRuns:
    """Durations of successful past runs: by exact spec, and per unit of length (step or epoch, less
    the start-up) by comparable configuration (`_cost_key`)."""

    exact: dict[str, list[float]] = field(default_factory=dict)
    per_unit: dict[str, list[float]] = field(default_factory=dict)
    count: int = 0


def _key(spec: RunSpec) -> str:
    # through JSON, so a spec read back from run.json (lists) matches a fresh one (tuples)
    return json.dumps(spec.to_json(), sort_keys=True, default=str)


def run_length(spec: RunSpec) -> tuple[str, int]:
    """A run's length: optimizer steps where the configuration fixes them (GPT-2's max_iters, as the
    trainer counts them), else epochs."""
    fixed = fixed_steps(spec)
    return ("steps", fixed[0]) if fixed else ("epochs", spec.training.epochs)


def _cost_key(spec: RunSpec) -> str:
    """What a past run must share with a run to inform its estimate: everything that sets the cost of a
    step or the steps of an epoch (optimizer and pruning method aside)."""
    t = spec.training
    model = {k: v for k, v in spec.model_params.items() if k not in LENGTH_PARAMS}
    return json.dumps([spec.model, model, run_length(spec)[0], t.batch_size, t.grad_accum, t.hyper_param_auto,
                       t.target_effective_batch, t.data_dir, t.device, t.compile_model, t.mixed_precision],
                      sort_keys=True, default=str)


def find_past_runs(root: Path, models: set[str]) -> PastRuns:
    """Durations of the successful runs of `models` in every result directory under `root`; those
    directories may hold other labs' results, so a run whose files do not make sense is left out."""
    past = PastRuns()
    for result_path in sorted(root.glob("*/*/result.json")) if root.is_dir() else []:
        if not result_path.parent.name.startswith(tuple(f"{m}_" for m in models)):
            continue
        found = _past_run(result_path)
        if found is None:
            continue
        spec, duration = found
        past.count += 1
        past.exact.setdefault(_key(spec), []).append(duration)
        length = run_length(spec)[1]
        if isinstance(length, int) and length > 0:
            try:
                past.per_unit.setdefault(_cost_key(spec), []).append(max(0.0, duration - STARTUP_S) / length)
            except OverflowError:  # a length too large for a float
                continue
    return past


def _past_run(result_path: Path) -> tuple[RunSpec, float] | None:
    """The spec and duration of a successful past run, None when it is not one or its files are unusable."""
    directory = result_path.parent.parent
    try:
        result = read_json(result_path, within=directory)
        record = read_json(result_path.parent / "run.json", within=directory)
        spec = spec_from_entry(record.get("spec") if isinstance(record, dict) else None, str(result_path.parent))
    except UserError:
        return None
    if not isinstance(result, dict) or result.get("status") != "success":
        return None
    duration = result.get("duration_s")
    if not is_finite_number(duration) or not 0 < duration <= MAX_PAST_RUN_S:
        return None
    return spec, float(duration)


def estimate_run_s(spec: RunSpec, past: PastRuns) -> float | None:
    """Seconds the run should take, None when no past run is comparable (see the module's docstring)."""
    exact = past.exact.get(_key(spec))
    if exact:
        return sum(exact) / len(exact)
    per_unit = past.per_unit.get(_cost_key(spec))
    length = run_length(spec)[1]
    if not per_unit or not length:
        return None
    estimate = STARTUP_S + statistics.median(per_unit) * length
    cap = spec.model_params.get("max_time_s") or 0
    if is_finite_number(cap) and cap > 0:
        estimate = min(estimate, STARTUP_S + float(cap))
    return estimate


def makespan_s(durations: list[tuple[float, int]], slots: int) -> float:
    """Wall time of running (duration, slots taken) in order, each starting when enough slots are free."""
    free_at = [0.0] * max(slots, 1)
    heapq.heapify(free_at)
    end = 0.0
    for duration, width in durations:
        taken = [heapq.heappop(free_at) for _ in range(min(width, len(free_at)))]
        start = max(taken)
        for _ in taken:
            heapq.heappush(free_at, start + duration)
        end = max(end, start + duration)
    return end


def estimate_lines(runs: list[RunSpec], root: Path, slots: int) -> list[str]:
    """The dry run's time estimate, as lines."""
    from lib.run.progress import hms

    past = find_past_runs(root, {spec.model for spec in runs})
    estimates = [estimate_run_s(spec, past) for spec in runs]
    known = [(e, spec.gpus) for e, spec in zip(estimates, runs) if e is not None]  # slots taken
    if not known:
        return [f"Estimated time: unknown (no comparable past run under {root}: one with the same model "
                "settings, data and batch)"]
    exact = sum(1 for spec in runs if past.exact.get(_key(spec)))
    missing = len(runs) - len(known)
    lines = [f"Estimated time: {'at least ' if missing else ''}{hms(makespan_s(known, slots))} with "
             f"{counted(slots, 'run')} at once (serial {hms(sum(d for d, _ in known))}); from "
             f"{counted(past.count, 'past run')} under {root}, {exact} of {counted(len(runs), 'run')} with an "
             "identical past run"]
    if missing:
        lines.append(f"  {counted(missing, 'run')} with no comparable past run (same model settings, data and "
                     "batch) not counted: time unknown")
    return lines


def first_wave(pool: SlotPool, runs: list[RunSpec]) -> list[str]:
    """Where the runs that start at once go; later ones start as slots free up."""
    labels, blocked = [], False
    for spec in runs:
        placement = None if blocked else pool.acquire(spec.gpus)
        blocked = blocked or placement is None
        labels.append(f"  [{placement.describe()}]" if placement else "")
    return labels


def ramp_label(spec: RunSpec) -> str:
    """When a pruned run's ramp runs, in optimizer steps as its log says it (`pruning ramp: steps A->B
    of N`), computed as the trainer computes it (lib/pruning/schedules.pruning_ramp), fitted to the run
    where PRUNING_RAMP_FIT says so. A run whose steps per epoch come from its data's size has an
    epoch-bound end shown as that many epochs of steps."""
    fixed = fixed_steps(spec)
    if fixed:
        ramp = pruning_ramp(spec, *fixed)
        text = f"steps {ramp.warmup_steps}->{ramp.ramp_end_step} of {ramp.total_steps}"
        if ramp.fitted_from:
            text += f" (fitted from {ramp.fitted_from[0]}->{ramp.fitted_from[1]}, PRUNING_RAMP_FIT)"
        return text
    warmup, end_step, _ = spec.pruning_timing()
    if end_step:
        return f"steps {warmup}->{end_step}"
    epochs = spec.pruning_settings.ramp_end_epoch
    return f"steps {warmup}->{epochs}xS"


PER_EPOCH_NOTE = ("  S: the run's steps per epoch, set by its data's size and batch; its log gives the ramp as "
                  "`pruning ramp: steps A->B of N`")


def recipe(spec: RunSpec) -> str:
    """What differs between runs beyond their name: peak learning rate, its decay, the sparsity curve
    and its ramp in optimizer steps, a variant's extended training budget."""
    decay = schedule_label(spec.optimizer, spec.optimizer_params, spec.training, model_entry(spec.model).lr_schedule)
    text = f"lr {peak_lr(spec.optimizer_params, spec.training):g} {decay}"
    if spec.pruning != "none":
        frequency = spec.pruning_timing()[2]
        text += (f", {curve_for(spec.pruning_settings.schedule, spec.pruning)} ramp {ramp_label(spec)}, "
                 f"masks every {frequency} steps")
    budget = budget_label(spec)
    return f"{text}, {budget}" if budget else text


SMALL_GPT2_SIZES = ("tiny", "mini")  # gpt2/sizes.py's CPU-test sizes
LARGE_EFFECTIVE_BATCH = 512


def gpu_setup(spec: RunSpec) -> list[str]:
    """Why a run looks set up for a GPU (empty: it does not, or DEVICE="cpu" asks for the CPU)."""
    if spec.training.device == "cpu":
        return []
    t, reasons = spec.training, []
    if spec.model == "gpt2" and spec.model_params.get("model_size") not in SMALL_GPT2_SIZES:
        reasons.append(f"GPT-2 {spec.model_params.get('model_size')}")
    if spec.model == "resnet50":
        reasons.append("ResNet-50")
    effective = t.target_effective_batch if t.hyper_param_auto else t.batch_size * t.grad_accum
    if effective >= LARGE_EFFECTIVE_BATCH:
        reasons.append(f"effective batch {effective}")
    if t.mixed_precision:
        reasons.append("MIXED_PRECISION")
    if t.compile_model:
        reasons.append("COMPILE_MODEL")
    return reasons


def cpu_note(runs: list[RunSpec]) -> str | None:
    """The note for a machine with no visible GPU and runs set up for one; what the trainer does on CPU
    (lib/train/loop.py): MIXED_PRECISION still autocasts to bf16 and COMPILE_MODEL still compiles."""
    gpu_runs = [why for why in map(gpu_setup, runs) if why]
    if not gpu_runs:
        return None
    reasons = list(dict.fromkeys(reason for why in gpu_runs for reason in why))
    text = (f"note: no GPU is visible: {len(gpu_runs)} of {counted(len(runs), 'run')} set up for a GPU "
            f"({', '.join(reasons)}) will run on CPU and be very slow")
    on_cpu = [r for r in ("MIXED_PRECISION", "COMPILE_MODEL") if r in reasons]
    if on_cpu:
        text += ("; on CPU " + " and ".join({"MIXED_PRECISION": "MIXED_PRECISION still autocasts to bf16",
                                            "COMPILE_MODEL": "COMPILE_MODEL still runs torch.compile"}[r]
                                           for r in on_cpu))
    return text


def plan_lines(settings: RunnerSettings, runs: list[RunSpec], root: Path) -> list[str]:
    """The dry run: the slots, the numbered runs (the first wave with its placement), the time estimate."""
    if settings.executor == "slurm":
        from lib.run.slurm_executor import SlurmExecutor

        slots, where = settings.slurm_array_parallelism or len(runs), [""] * len(runs)
        lines = [f"Executor: {SlurmExecutor(root, settings).describe()}"]
    else:
        gpus = visible_gpus()
        pool = SlotPool(jobs_per_gpu=settings.parallel_jobs, gpus=gpus, min_free_mib=settings.min_free_gpu_mib)
        slots, where = pool.capacity, first_wave(pool, runs)
        lines = [f"Slots: {pool.describe()}"]
        note = None if gpus else cpu_note(runs)
        lines += [note] if note else []
    lines += [f"  {number}. {spec.run_id}  ({recipe(spec)}){placed}"
              for number, (spec, placed) in enumerate(zip(runs, where), 1)]
    if any(spec.pruning != "none" and not fixed_steps(spec) and not spec.pruning_timing()[1] for spec in runs):
        lines.append(PER_EPOCH_NOTE)
    return lines + estimate_lines(runs, root, slots)
