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


def past_run(root: Path, spec, duration_s: float) -> None:
    """A successful past run of `spec` under `root`, as the runner leaves it."""
    run_dir = root / "20260101_000000" / spec.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps({"spec": spec.to_json()}))
    (run_dir / "result.json").write_text(json.dumps({"status": "success", "duration_s": duration_s}))


def estimate_line(settings, runs, root: Path) -> str:
    return next(line for line in plan.plan_lines(settings.runner, runs, root) if line.startswith("Estimated time:"))


def test_tiny_past_runs_do_not_estimate_a_124m_run(tmp_path):
    """The audit's case: 150-step GPT-2 tiny runs under RESULTS_ROOT gave a 10,000-step GPT-2 124M run 0:01:28."""
    _, tiny = runs_of("ci-gpt2-tiny", tmp_path)
    for spec in tiny:
        past_run(tmp_path / "results", spec, 22.0)
    settings, runs = runs_of("gpt2-finewebedu-bitter7", tmp_path, "CONFIG_GPT2_DATASET_LOCAL=y",
                             'CONFIG_GPT2_DATA_PATH="docs"')
    line = estimate_line(settings, runs, tmp_path / "results")
    assert line.startswith("Estimated time: unknown (no comparable past run"), line


def test_a_comparable_past_run_is_scaled_by_optimizer_steps_plus_start_up(tmp_path):
    settings, runs = runs_of("ci-gpt2-tiny", tmp_path)
    spec = runs[0]
    assert fixed_steps(spec)[0] == 150
    past_run(tmp_path / "results", spec, plan.STARTUP_S + 150.0)  # 1 s a step
    longer = runs_of("ci-gpt2-tiny", tmp_path, "CONFIG_GPT2_MAX_ITERS=300")[1][0]
    past = plan.find_past_runs(tmp_path / "results", {"gpt2"})
    assert plan.estimate_run_s(spec, past) == pytest.approx(plan.STARTUP_S + 150.0)  # the identical run
    assert plan.estimate_run_s(longer, past) == pytest.approx(plan.STARTUP_S + 300.0)
    bigger = runs_of("ci-gpt2-tiny", tmp_path, "CONFIG_BATCH_SIZE=16")[1][0]
    assert plan.estimate_run_s(bigger, past) is None  # another batch: not comparable


def test_runs_without_a_comparable_past_run_are_not_counted_at_a_guess(tmp_path):
    settings, runs = runs_of("ci-gpt2-tiny", tmp_path)
    past_run(tmp_path / "results", runs[0], 20.0)
    other = runs_of("ci-gpt2-tiny", tmp_path, "CONFIG_BATCH_SIZE=16")[1]
    line = estimate_line(settings, [runs[0], other[0]], tmp_path / "results")
    assert line.startswith("Estimated time: at least 0:00:20 "), line


def test_a_gpu_experiment_on_a_machine_without_gpu_gets_one_note(tmp_path, monkeypatch):
    monkeypatch.setattr(plan, "visible_gpus", lambda: [])
    settings, runs = runs_of("gpt2-finewebedu-bitter7", tmp_path)
    notes = [line for line in plan.plan_lines(settings.runner, runs, tmp_path / "results") if "note:" in line]
    assert len(notes) == 1 and notes[0].startswith("note: no GPU is visible: 1 of 1 run set up for a GPU (GPT-2 124M")
    assert "will run on CPU and be very slow" in notes[0] and "bf16" in notes[0] and "torch.compile" in notes[0]
    settings, runs = runs_of("lenet5-quick", tmp_path)
    assert not any("note:" in line for line in plan.plan_lines(settings.runner, runs, tmp_path / "results"))
