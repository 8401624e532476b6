"""Resuming an interrupted run from `<results>/.resume/<run_id>/last.pt`.

A killed GPT-2 run resumes from its checkpoint and ends with the same number
of steps, and the same losses, as an uninterrupted one: batches depend only
on (seed, step) and the checkpoint restores weights, optimizer state, masks
and RNG states. The same holds for a classifier (LeNet-5, pruned, with
augmentation). A checkpoint of another configuration is ignored. Every
restart goes through lib/run/task.prepare_run_dir, which sets the unfinished
run folder aside as a retry or `make continue` does.
"""
from __future__ import annotations

import json
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.tiny_data import (gpt2_symbols, one_spec, prepare_gpt2_text, prepare_run, run_trainer, start_trainer,
                             train, write_mnist, write_text)

pytestmark = pytest.mark.slow  # trainer subprocesses, killed and resumed

GPT2_STEPS, GPT2_EVAL = 30, 10


def last_pt(results_dir: Path, run_id: str) -> Path:
    return results_dir / ".resume" / run_id / "last.pt"


def saved_step(path: Path) -> int:
    """The step of a last.pt (-1 while there is none)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)["step"]
    except FileNotFoundError:
        return -1


def kill_after_checkpoint(command: list[str], last: Path, min_step: int, timeout_s: float = 300) -> str:
    """Start the trainer, SIGKILL it once `last` holds step >= min_step; its output.

    Fails the test (rather than passing vacuously) if the trainer finished first.
    """
    proc = start_trainer(command)
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    try:
        for line in proc.stdout:  # the evaluation line is printed just before last.pt is written
            lines.append(line)
            if re.match(rf"step {min_step}\s", line):
                break
        while proc.poll() is None and saved_step(last) < min_step and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "".join(lines)
    if proc.returncode != -signal.SIGKILL:
        pytest.fail(f"the trainer ended (exit {proc.returncode}) before it could be killed after step {min_step}; "
                    f"give the run more steps:\n{output[-3000:]}")
    return output


def evals_differ(a: list[dict], b: list[dict], key: str) -> list[str]:
    return [f"step {x['step']}: {key} {x[key]!r} vs {y[key]!r} (rel {abs(x[key] - y[key]) / abs(x[key]):.2e})"
            for x, y in zip(a, b) if x[key] != y[key]]


def test_killed_gpt2_run_resumes_and_ends_like_an_uninterrupted_one(tmp_path):
    text = write_text(tmp_path / "corpus.txt", n_chars=40_000)
    # AdamWPrune state pruning ramping over the kill point: masks and the fused optimizer resume too.
    spec = one_spec(tmp_path, **gpt2_symbols(
        text, GPT2_MAX_ITERS=GPT2_STEPS, GPT2_EVAL_INTERVAL=GPT2_EVAL, OPTIMIZER_SELECT_ADAMW=False,
        OPTIMIZER_SELECT_ADAMWPRUNE=True, ADAMWPRUNE_BASE_ADAMW=True, PRUNING_SELECT_NONE=False,
        PRUNING_SELECT_STATE=True, GPT2_ADAMWPRUNE_VARIANT_BITTER7=True, ADAMWPRUNE_TARGET_SPARSITY="0.5",
        ADAMWPRUNE_WARMUP_STEPS=5, ADAMWPRUNE_FREQUENCY=5, ADAMWPRUNE_RAMP_END_STEP=25))
    assert spec.run_id == "gpt2_adamwprune_bitter7_state_50"
    prepare_gpt2_text(spec)
    _, whole, _ = train(tmp_path / "whole", spec)
    assert not (tmp_path / "whole" / ".resume").exists()

    results = tmp_path / "killed"
    _, command = prepare_run(results, spec)
    last = last_pt(results, spec.run_id)
    kill_after_checkpoint(command, last, min_step=GPT2_EVAL)
    assert not (results / spec.run_id / "metrics.json").exists()
    killed_at = saved_step(last)
    assert GPT2_EVAL <= killed_at < GPT2_STEPS

    run_dir, command = prepare_run(results, spec)  # the retry sets the killed folder aside
    proc = run_trainer(command)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert f"resumed from {last} at step {killed_at}/{GPT2_STEPS}" in output
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert resumed["steps"] == whole["steps"] == GPT2_STEPS
    assert resumed["resumed_from_step"] == killed_at >= GPT2_EVAL
    assert [e["step"] for e in resumed["evals"]] == [e["step"] for e in whole["evals"]]
    # Same batches, same state: equal to 1e-4 relative (on one CPU thread they match exactly).
    differences = evals_differ(whole["evals"], resumed["evals"], "val_loss")
    assert resumed["final_val_loss"] == pytest.approx(whole["final_val_loss"], rel=1e-4), differences
    assert [e["val_loss"] for e in resumed["evals"]] == \
        pytest.approx([e["val_loss"] for e in whole["evals"]], rel=1e-4), differences
    assert resumed["sparsity"]["global_pct"] == pytest.approx(whole["sparsity"]["global_pct"], abs=1e-9)
    assert abs(resumed["sparsity"]["global_pct"] - 50.0) <= 1.0
    assert [(p["step"], p["measured_pct"]) for p in resumed["pruning_schedule"]] == \
        [(p["step"], p["measured_pct"]) for p in whole["pruning_schedule"]]
    assert not last.parent.exists(), "a finished run leaves no .resume/<run_id>"
    assert not (results / ".resume").exists()


# -- LeNet-5: a run that dies after an evaluation, and a checkpoint of another configuration --

LENET5_EPOCHS, LENET5_STEPS_PER_EPOCH = 3, 6  # 150 images in batches of 25
DIED_AT = 2 * LENET5_STEPS_PER_EPOCH  # last.pt of the last evaluation before the end


def lenet5_symbols(**overrides) -> dict:
    """Pruning ramps past the death (fitted to 75% of the run) and augmentation is on, so both must resume exactly."""
    return {"MODEL_MODE_SINGLE": True, "MODEL_SELECT_LENET5": True, "LENET5_AUGMENT": True,
            "OPTIMIZER_MODE_SINGLE": True, "OPTIMIZER_SELECT_ADAMW": True, "PRUNING_MODE_SINGLE": True,
            "PRUNING_SELECT_MAGNITUDE": True, "TARGET_SPARSITY": "0.7", "PRUNING_WARMUP": 2,
            "PRUNING_FREQUENCY": 3, "PRUNING_RAMP_END_EPOCH": LENET5_EPOCHS, "PRUNING_RAMP_FIT": True,
            "NUM_EPOCHS": LENET5_EPOCHS,
            "BATCH_SIZE": 25, "LEARNING_RATE": "0.003", "SAVE_CHECKPOINT": True, **overrides}


@pytest.fixture(scope="module")
def lenet5_died(tmp_path_factory):
    """A LeNet-5 run that died after its evaluation of epoch 2.

    metrics.json is made a folder, so the trainer fails when it writes its
    results, after every evaluation: the state a kill during the last epoch
    leaves. Returns (spec, its results dir, a copy of its last.pt, tmp dir).
    """
    tmp = tmp_path_factory.mktemp("lenet5_resume")
    write_mnist(tmp / "data", n_train=150, n_test=50)
    spec = one_spec(tmp, **lenet5_symbols())
    results = tmp / "died"
    run_dir, command = prepare_run(results, spec)
    (run_dir / "metrics.json").mkdir()
    proc = run_trainer(command)
    assert proc.returncode != 0, "the trainer should have failed to write metrics.json"
    last = last_pt(results, spec.run_id)
    assert saved_step(last) == DIED_AT
    copy = tmp / "last-copy.pt"
    shutil.copyfile(last, copy)
    return spec, results, copy, tmp


@pytest.fixture(scope="module")
def lenet5_resumed(lenet5_died, tmp_path_factory):
    """(uninterrupted metrics, resumed run folder, resumed metrics, resumed output)."""
    spec, results, _, _ = lenet5_died
    _, whole, _ = train(tmp_path_factory.mktemp("lenet5_whole"), spec)
    return (whole, *train(results, spec))  # train() sets the dead attempt aside, as a retry does


def test_classifier_resumes_after_dying_and_matches_an_uninterrupted_run(lenet5_died, lenet5_resumed):
    spec, results, _, _ = lenet5_died
    whole, _, metrics, output = lenet5_resumed
    assert f"resumed from {last_pt(results, spec.run_id)} at step {DIED_AT}/{whole['steps']}" in output
    assert metrics["resumed_from_step"] == DIED_AT
    assert metrics["steps"] == whole["steps"] == LENET5_EPOCHS * LENET5_STEPS_PER_EPOCH
    assert [e["epoch"] for e in metrics["epochs"]] == list(range(1, LENET5_EPOCHS + 1))
    for key in ("train_loss", "test_loss", "test_accuracy_pct", "sparsity_pct", "lr"):
        assert [e[key] for e in metrics["epochs"]] == pytest.approx([e[key] for e in whole["epochs"]], rel=1e-4), key
    assert metrics["sparsity"]["global_pct"] == whole["sparsity"]["global_pct"]
    assert abs(metrics["sparsity"]["global_pct"] - 70.0) <= 1.0
    assert metrics["pruning_schedule"] == whole["pruning_schedule"]
    assert metrics["best_epoch"] == whole["best_epoch"]
    # A pruned run's best is taken at its target, which this ramp reaches after the crash.
    assert whole["best_epoch"] > DIED_AT // LENET5_STEPS_PER_EPOCH
    assert not last_pt(results, spec.run_id).parent.exists()
    assert (results / ".superseded").is_dir()  # the dead attempt was kept aside, not deleted


def test_best_checkpoint_is_in_the_run_folder_after_a_resume(lenet5_resumed):
    whole, run_dir, metrics, _ = lenet5_resumed
    best = run_dir / "checkpoints" / "best.pt"
    assert best.is_file(), f"SAVE_CHECKPOINT=y but {best} is missing; run folder holds " \
                           f"{sorted(p.name for p in run_dir.iterdir())}"
    saved = torch.load(best, map_location="cpu", weights_only=False)
    assert saved["evaluation"]["epoch"] == metrics["best_epoch"]


def test_checkpoint_of_another_configuration_is_ignored(lenet5_died, tmp_path):
    spec, _, copy, root = lenet5_died
    # Same run ID, another learning rate: the checkpoint must not be resumed.
    other = one_spec(tmp_path, **lenet5_symbols(LEARNING_RATE="0.002", DATA_DIR=str(root / "data")))
    assert other.run_id == spec.run_id and other.training != spec.training
    results = tmp_path / "results"
    last = last_pt(results, other.run_id)
    last.parent.mkdir(parents=True)
    shutil.copyfile(copy, last)
    _, metrics, output = train(results, other)
    assert f"note: {last} belongs to another configuration; starting afresh" in output
    assert "resumed from" not in output
    assert metrics["resumed_from_step"] is None
    assert metrics["steps"] == LENET5_EPOCHS * LENET5_STEPS_PER_EPOCH
    assert len(metrics["epochs"]) == LENET5_EPOCHS
    assert not last.parent.exists()
