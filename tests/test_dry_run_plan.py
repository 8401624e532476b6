"""The dry run's lines (lib/run/plan.py): pruning ramps in steps as the trainer computes them, the time
estimate from comparable past runs only, and a note when GPU-sized runs will run on CPU."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib.config import load_settings
from lib.matrix import expand
from lib.pruning.schedules import fixed_steps, pruning_ramp
from lib.run import plan

ROOT = Path(__file__).resolve().parent.parent


def runs_of(defconfig: str, tmp_path: Path, *lines: str):
    path = tmp_path / "config"
    path.write_text((ROOT / "defconfigs" / defconfig).read_text() + "".join(f"{line}\n" for line in lines))
    settings = load_settings(path, warn=lambda message: None)
    return settings, expand(settings)


def test_ramp_is_shown_in_steps_as_the_trainer_computes_it(tmp_path):
    _, runs = runs_of("ci-gpt2-tiny", tmp_path)
    pruned = [spec for spec in runs if spec.pruning != "none"]
    assert pruned
    for spec in pruned:
        ramp = pruning_ramp(spec, *fixed_steps(spec))  # what the trainer logs as `pruning ramp: steps A->B of N`
        assert f"ramp steps {ramp.warmup_steps}->{ramp.ramp_end_step} of {ramp.total_steps}," in plan.recipe(spec)
        assert "epoch" not in plan.recipe(spec)
    magnitude = next(spec for spec in pruned if spec.pruning == "magnitude")
    assert "linear ramp steps 25->100 of 150," in plan.recipe(magnitude)


def test_an_epoch_bound_ramp_end_is_counted_in_steps_per_epoch(tmp_path):
    settings, runs = runs_of("resnet50-imagenet", tmp_path)
    text = "\n".join(plan.plan_lines(settings.runner, runs, tmp_path / "results"))
    assert "ramp steps 5000->75xS," in text and "epoch 75" not in text and "to epoch" not in text
    assert plan.PER_EPOCH_NOTE in text.splitlines()
