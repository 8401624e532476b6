"""Settings -> the list of runs (RunSpec) and their IDs.

Expansion rules (docs/configuration.md): pruning `none` gives one run at
sparsity 0; `state` pruning exists only inside AdamWPrune, and AdamWPrune
takes only `state` or `none` (state is added for it whenever any pruning
method is enabled, as upstream does); magnitude and movement pair with every
other optimizer; GPT-2 state runs multiply by the enabled bitter variants (each with
upstream's training budget for it, lib/variant_budgets);
every run multiplies by the seeds. Run IDs keep the upstream shape.

The RunSpec itself, its settings and its JSON live in lib/spec.py (a trainer
reads them without this module); `spec_from_entry` checks a spec read from a
file before it is used.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from lib.config import Settings
from lib.errors import UserError
from lib.models import model_entry
from lib.names import check_name
from lib.spec import (MAX_SEED, OptimizerParams, PruningSettings, RunSpec, SpecError, TrainingSettings,
                      is_finite_number, shown)
from lib.variant_budgets import variant_budget


def spec_from_entry(entry: Any, where: str) -> RunSpec:
    """A RunSpec from one matrix.json entry that may come from anyone: every
    name safe for a path, numbers of the right type; else a UserError naming `where`."""
    if not isinstance(entry, dict):
        raise UserError(f"{where}: not a JSON object")
    run_id = check_name(entry.get("run_id"), "run_id", where)
    where = f"{where} ({run_id})"
    for name in ("model", "optimizer", "pruning"):
        check_name(entry.get(name), name, where)
    check_name(entry.get("variant"), "variant", where, optional=True)
    target, seed, hyperparams = entry.get("target_sparsity_pct"), entry.get("seed"), entry.get("hyperparams")
    if not is_finite_number(target):
        raise UserError(f"{where}: target_sparsity_pct {shown(target)} is not a number")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"{where}: seed {shown(seed)} is not an integer from 0 to {MAX_SEED}")
    if not (isinstance(hyperparams, dict) and all(isinstance(hyperparams.get(k), dict) for k in ("model", "training"))
            and all(isinstance(hyperparams.get(k, {}), dict) for k in ("optimizer", "pruning"))):
        raise UserError(f"{where}: hyperparams lack their 'model' and 'training' objects")
    gpus = hyperparams["model"].get("gpus_per_run")
    if gpus is not None and (isinstance(gpus, bool) or not isinstance(gpus, int) or not 0 <= gpus <= 4096):
        raise UserError(f"{where}: gpus_per_run {gpus!r} is not a GPU count")
    try:
        spec = RunSpec.from_json(entry)  # every setting typed (lib/spec.py); older files' missing keys filled
    except SpecError as exc:
        raise UserError(f"{where}: {exc}") from None
    _check_bounds(spec, where)
    return spec


def _check_bounds(spec: RunSpec, where: str) -> None:
    """Values no configuration can give (Kconfig's ranges), which a stranger's file could: the
    run would fail late or, worse, train something meaningless (negative sparsity, no epochs)."""
    t, p = spec.training, spec.pruning_settings
    bounds = (("target_sparsity_pct", spec.target_sparsity_pct, 0.0 <= spec.target_sparsity_pct < 100.0,
               "from 0 to below 100"),
              ("hyperparams.training.batch_size", t.batch_size, t.batch_size >= 1, "at least 1"),
              ("hyperparams.training.epochs", t.epochs, t.epochs >= 1, "at least 1"),
              ("hyperparams.training.grad_accum", t.grad_accum, t.grad_accum >= 1, "at least 1"),
              ("hyperparams.training.learning_rate", t.learning_rate, t.learning_rate > 0.0, "above 0"),
              ("hyperparams.training.lr_warmup_steps", t.lr_warmup_steps, t.lr_warmup_steps >= 0, "at least 0"),
              ("hyperparams.pruning.warmup_steps", p.warmup_steps, p.warmup_steps >= 0, "at least 0"),
              ("hyperparams.pruning.frequency", p.frequency, p.frequency >= 1, "at least 1"),
              ("hyperparams.pruning.ramp_end_epoch", p.ramp_end_epoch, p.ramp_end_epoch >= 1, "at least 1"),
              ("hyperparams.pruning.ramp_end_step", p.ramp_end_step, p.ramp_end_step >= 0, "at least 0"))
    for name, value, holds, allowed in bounds:
        if not holds:
            raise UserError(f"{where}: {name} {shown(value)} is not {allowed}")


def format_sparsity(pct: float) -> str:
    """70.0 -> '70', 92.5 -> '92.5' (the number as it appears in run IDs)."""
    return f"{pct:g}"


def make_run_id(model: str, optimizer: str, pruning: str, variant: str | None, sparsity_pct: float,
                seed: int | None) -> str:
    parts = [model, optimizer] + ([variant] if variant else []) + [pruning]
    if pruning != "none":
        parts.append(format_sparsity(sparsity_pct))
    run_id = "_".join(parts)
    return f"{run_id}_s{seed}" if seed is not None else run_id


def _methods_for(optimizer: str, enabled: tuple[str, ...], upstream: bool = False) -> list[str]:
    """AdamWPrune prunes only by its state: here it gets state runs whenever any method is enabled;
    upstream's runner (upstream defconfigs) only where state itself is enabled."""
    if optimizer == "adamwprune":
        methods = ["none"] if "none" in enabled else []
        wanted = "state" in enabled if upstream else any(m != "none" for m in enabled)
        return methods + (["state"] if wanted else [])
    return [m for m in enabled if m != "state"]


def _variants(settings: Settings, model: str) -> tuple[str | None, ...]:
    """The bitter variants of a model's state runs: those enabled, for a model that has them."""
    if not model_entry(model).bitter_variants:
        return (None,)
    if not settings.gpt2_variants:  # a silent fallback would run a score nobody chose
        raise UserError(f"{model} with AdamWPrune state pruning needs at least one bitter variant: enable one "
                        "under 'AdamWPrune state-pruning variants' in make menuconfig (GPT2_ADAMWPRUNE_VARIANT_*)")
    return settings.gpt2_variants


# An upstream defconfig's values are written for upstream's trainer of each model, which hard-codes
# some of what our Kconfig makes settings (lib/models.py, upstream_*): its runs get what that trainer did.

def _optimizer_params(settings: Settings, model: str, optimizer: str) -> OptimizerParams:
    """The optimizer's settings for runs of `model`. An upstream defconfig's LEARNING_RATE is what
    upstream's trainer for the model scales: ResNet-18's multiplies it by 0.001 for every optimizer but
    SGD (upstream Kconfig, LEARNING_RATE help), so those runs get that rate unless the file sets their own.
    A trainer that clips nothing also drops AdamWAdv's clip (upstream applies it in the trainer)."""
    params, entry = settings.optimizer_params[optimizer], model_entry(model)
    if not settings.upstream_semantics:
        return params
    scale = entry.upstream_adam_lr_scale
    if optimizer != "sgd" and scale != 1.0 and params.learning_rate is None:
        params = dataclasses.replace(params, learning_rate=settings.training.learning_rate * scale)
    if not entry.upstream_clips and params.adv is not None and params.adv.grad_clip:
        adv = dataclasses.replace(params.adv, grad_clip=0.0)
        params = dataclasses.replace(params, adv=adv)
    return params


def _training(settings: Settings, model: str) -> TrainingSettings:
    """An upstream defconfig's runs of a model whose upstream trainer clips nothing: clipping off."""
    if settings.upstream_semantics and not model_entry(model).upstream_clips:
        return dataclasses.replace(settings.training, grad_clip_norm=0.0)
    return settings.training


def _pruning_settings(settings: Settings, model: str, method: str) -> PruningSettings:
    """An upstream defconfig's magnitude and movement runs get the ramp end and mask interval (steps) of
    the pruners of upstream's trainer for the model, where it hands them only PRUNING_WARMUP (ResNet-18:
    step 3000, every 100 steps, whatever PRUNING_RAMP_END_EPOCH and PRUNING_FREQUENCY say). State runs
    keep AdamWPrune's ADAMWPRUNE_* settings, which upstream's trainer reads."""
    entry, pruning = model_entry(model), settings.pruning
    if not settings.upstream_semantics or method in ("none", "state") or not entry.upstream_pruner_ramp_end_step:
        return pruning
    return dataclasses.replace(pruning, ramp_end_step=entry.upstream_pruner_ramp_end_step,
                               frequency=entry.upstream_pruner_frequency or pruning.frequency)


def expand(settings: Settings) -> list[RunSpec]:
    """Every run of the matrix, in a stable order (model, optimizer, method, variant, sparsity, seed)."""
    runs: list[RunSpec] = []
    tag_seed = len(settings.seeds) > 1
    for model in settings.models:
        for optimizer in settings.optimizers:
            for method in _methods_for(optimizer, settings.pruning_methods, settings.upstream_semantics):
                variants = _variants(settings, model) if method == "state" else (None,)
                levels = ((0.0,) if method == "none" else
                          settings.adamwprune_sparsities_pct if method == "state" else settings.sparsities_pct)
                for variant in variants:
                    model_params, budget = variant_budget(settings.model_params[model], variant)
                    for level in levels:
                        for seed in settings.seeds:
                            run_id = make_run_id(model, optimizer, method, variant, level,
                                                 seed if tag_seed else None)
                            runs.append(RunSpec(
                                run_id, model, optimizer, method, variant, level, seed,
                                training=_training(settings, model),
                                pruning_settings=_pruning_settings(settings, model, method),
                                optimizer_params=_optimizer_params(settings, model, optimizer),
                                model_params=model_params, variant_budget=budget))
    if not runs:
        raise UserError("the configuration expands to no runs: enable a pruning method the selected optimizers "
                        "accept (state pruning needs AdamWPrune)")
    return runs
