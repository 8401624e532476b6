"""The runner end to end: a real 12-run matrix, resume, failures, timeouts, retries, bad input."""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import pytest
from conftest import run_script
from fixtures.summary_rows import rows as summary_rows
from runner_matrix import MATRIX, RUNS, comparable_rows, reference_run, runner_config

from lib.errors import NON_FINITE_MARKER
from lib.run import runner
from lib.run.process import run_attempts
from lib.run.slots import SlotPool, visible_gpus
from lib.run.task import write_result
from lib.spec import RunSpec
from tests.specs import make_spec


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, str]:
    return reference_run(tmp_path_factory)


@pytest.mark.slow  # a 12-run matrix (the module's reference run)
def test_matrix_runs_every_run_and_reports_measured_figures(reference):
    results_dir, output = reference
    specs = json.loads((results_dir / "matrix.json").read_text())["runs"]
    assert len(specs) == RUNS
    report = summary_rows((results_dir / "summary_report.txt").read_text())
    assert sorted(r["id"] for r in report) == sorted(s["run_id"] for s in specs)
    slots = SlotPool(jobs_per_gpu=2, gpus=visible_gpus())  # PARALLEL_JOBS=2 in ci-runner
    for row in report:
        run_dir = results_dir / row["id"]
        result = json.loads((run_dir / "result.json").read_text())
        assert result["status"] == "success" and result["attempts"] == 1
        assert result["executor"] == "local" and result["placement"]["threads"] == slots.threads
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert row["accuracy"] == pytest.approx(metrics["best_accuracy_pct"], abs=0.006)
        assert row["sparsity"] == pytest.approx(metrics["sparsity"]["global_pct"], abs=0.006)
        assert abs(metrics["sparsity"]["global_pct"] - metrics["sparsity"]["target_pct"]) < 1.0
        stats = json.loads((run_dir / "gpu_stats.json").read_text())
        assert stats["device"] == "cpu" and stats["summary"]["peak_mib"] > 50
        assert "epoch 1" in (run_dir / "output.log").read_text()
    assert str(results_dir / "summary_report.txt") in output
    assert f"executor local: {slots.describe()}" in output


@pytest.mark.slow  # a 12-run matrix (the module's reference run)
def test_continue_reruns_exactly_the_runs_without_a_valid_result(reference, tmp_path):
    """Missing, corrupt and truncated result.json all count as not done; old folders are set aside."""
    results_dir = tmp_path / "copy"
    shutil.copytree(reference[0], results_dir)
    missing, corrupt, failed = "lenet5_adamw_magnitude_50", "lenet5_sgd_none", "lenet5_adam_magnitude_90"
    (results_dir / missing / "result.json").unlink()
    (results_dir / corrupt / "result.json").write_text('{"status": "succ')
    result = json.loads((results_dir / failed / "result.json").read_text())
    (results_dir / failed / "result.json").write_text(json.dumps({**result, "status": "failed"}))
    before = {p.parent.name: p.stat().st_mtime_ns for p in results_dir.glob("*/result.json")}
    config = runner_config(tmp_path)
    proc = run_script(MATRIX, "continue", "--results", results_dir, "--config", config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{RUNS - 3} already done, 3 to run" in proc.stdout
    after = {p.parent.name: p.stat().st_mtime_ns for p in results_dir.glob("*/result.json")}
    assert sorted(name for name in after if after[name] != before.get(name)) == sorted([missing, corrupt, failed])
    for name in (missing, corrupt, failed):
        assert list((results_dir / ".superseded").glob(f"{name}-*"))
    assert comparable_rows(results_dir) == comparable_rows(reference[0])


@pytest.mark.slow  # a 12-run matrix (the module's reference run)
def test_continue_reports_a_changed_config_and_keeps_the_recorded_matrix(reference, tmp_path):
    results_dir = tmp_path / "copy"
    shutil.copytree(reference[0], results_dir)
    config = runner_config(tmp_path, NUM_EPOCHS="3", SPARSITY_ENABLE_95="y")
    proc = run_script(MATRIX, "continue", "--results", results_dir, "--config", config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    note = next(line for line in proc.stdout.splitlines() if line.startswith("note:"))
    assert "NUM_EPOCHS: 1 -> 3" in note and "SPARSITY_ENABLE_95: n -> y" in note
    assert f"{RUNS} already done, 0 to run" in proc.stdout
    assert not list(results_dir.glob("*_95"))


def _fake_trainer(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _spec(run_id: str) -> RunSpec:
    return make_spec(run_id, pruning="magnitude", target=50.0)


def test_failing_run_is_recorded_and_the_matrix_goes_on(tmp_path, monkeypatch):
    specs = [_spec(f"lenet5_sgd_magnitude_{n}") for n in (50, 70)]
    ok = ("import json, sys, pathlib; d = pathlib.Path(sys.argv[-1]); "
          "(d / 'metrics.json').write_text(json.dumps({'best_accuracy_pct': 90.0, 'sparsity': {'global_pct': 70.0}}))")

    def command(spec, run_dir, python=sys.executable):
        if spec.run_id.endswith("_50"):
            return _fake_trainer("import sys; print('loss exploded'); sys.exit(3)")
        return _fake_trainer(ok) + [str(run_dir)]

    monkeypatch.setattr(runner, "trainer_command", command)
    monkeypatch.setattr(runner, "prepare_data", lambda runs, out: None)
    monkeypatch.setattr(runner, "check_runnable", lambda runs: None)
    lines: list[str] = []
    counts = runner.run_matrix(tmp_path, specs, out=lines.append)
    assert counts == {"success": 1, "failed": 1}
    failed = json.loads((tmp_path / specs[0].run_id / "result.json").read_text())
    assert failed["status"] == "failed" and failed["exit_code"] == 3 and failed["attempts"] == 1
    assert "loss exploded" in failed["log_tail"]
    assert json.loads((tmp_path / specs[1].run_id / "result.json").read_text())["status"] == "success"
    assert any("ETA" in line for line in lines)
    assert [s.run_id for s in runner.pending(tmp_path, specs)] == [specs[0].run_id]


def test_exit_zero_without_metrics_is_not_success(tmp_path):
    spec = _spec("lenet5_sgd_none")
    (tmp_path / spec.run_id).mkdir()
    outcome = run_attempts(_fake_trainer("pass"), tmp_path / spec.run_id)
    assert write_result(tmp_path / spec.run_id, spec, outcome)["status"] == "failed"


def test_hanging_run_is_killed_at_the_timeout_and_marked_timeout(tmp_path, monkeypatch):
    from lib.config import default_runner

    spec = _spec("lenet5_sgd_magnitude_50")
    monkeypatch.setattr(runner, "trainer_command", lambda s, d: _fake_trainer("import time; time.sleep(60)"))
    monkeypatch.setattr(runner, "prepare_data", lambda runs, out: None)
    monkeypatch.setattr(runner, "check_runnable", lambda runs: None)
    start = time.monotonic()
    counts = runner.run_matrix(tmp_path, [spec], dataclasses.replace(default_runner(), timeout_s=1, retries=1), out=lambda line: None)
    assert counts == {"success": 0, "failed": 1}
    result = json.loads((tmp_path / spec.run_id / "result.json").read_text())
    assert result["status"] == "timeout" and result["attempts"] == 2 and result["exit_code"] == -15
    assert time.monotonic() - start < 20


def test_crashing_run_is_retried_then_failed(tmp_path):
    outcome = run_attempts(_fake_trainer("import sys; print('boom'); sys.exit(1)"), tmp_path, retries=2)
    assert outcome.status == "failed" and outcome.attempts == 3 and outcome.exit_code == 1 and not outcome.non_finite
    log = (tmp_path / "output.log").read_text()
    assert log.count("===== attempt") == 2 and log.count("boom") == 3


def test_a_run_that_went_non_finite_is_not_retried(tmp_path):
    """Exit code 3 (lib/errors.NON_FINITE_EXIT, a trainer's NonFiniteError): the same settings diverge again."""
    outcome = run_attempts(_fake_trainer("import sys; print('loss became nan'); sys.exit(3)"), tmp_path, retries=2)
    assert outcome.status == "failed" and outcome.attempts == 1 and outcome.exit_code == 3 and outcome.non_finite
    assert "===== attempt" not in (tmp_path / "output.log").read_text()


def test_a_launched_run_that_went_non_finite_is_known_by_its_marker_not_its_exit_code(tmp_path):
    """Under torchrun a worker's exit 3 reaches the runner as torchrun's 1; the marker the worker left
    (lib/train/harness.record_non_finite) says the run diverged: not retried, recorded, advised."""
    spec = _spec("lenet5_sgd_magnitude_50")
    run_dir = tmp_path / spec.run_id
    run_dir.mkdir()
    error = "loss became nan at step 3 (lr 10); stopped: lower the learning rate"
    worker = (f"import json, sys; print('error: ' + {error!r}); "
              f"open({str(run_dir / NON_FINITE_MARKER)!r}, 'w').write(json.dumps({{'rank': 1, 'error': {error!r}}})); "
              "print('\\n'.join(['torchrun report'] * 30)); sys.exit(1)")
    outcome = run_attempts(_fake_trainer(worker), run_dir, retries=2)
    assert (outcome.status, outcome.exit_code, outcome.attempts, outcome.non_finite) == ("failed", 1, 1, True)
    result = write_result(run_dir, spec, outcome)
    assert result["non_finite"] is True and result["exit_code"] == 1
    assert result["log_tail"][-1] == f"--- stopped non-finite on rank 1: {error} ---"  # the worker's line scrolled off
    [advice] = runner.failure_lines(tmp_path, [spec])
    assert advice.startswith("1 run went non-finite (lenet5_sgd_magnitude_50); make continue reruns")


def test_a_marker_left_by_an_earlier_attempt_does_not_judge_the_next(tmp_path):
    """Each attempt starts without the marker, so a crash after it is retried as a crash."""
    (tmp_path / NON_FINITE_MARKER).write_text("{}")
    outcome = run_attempts(_fake_trainer("import sys; sys.exit(1)"), tmp_path, retries=1)
    assert (outcome.attempts, outcome.non_finite) == (2, False)


def test_run_that_succeeds_on_retry_records_its_attempts(tmp_path):
    flaky = ("import pathlib, sys; p = pathlib.Path('flaky'); n = int(p.read_text()) if p.exists() else 0; "
             "p.write_text(str(n + 1)); sys.exit(0 if n >= 1 else 1)")
    outcome = run_attempts(_fake_trainer(f"import os; os.chdir({str(tmp_path)!r}); " + flaky), tmp_path, retries=3)
    assert outcome.status == "success" and outcome.attempts == 2


def test_bad_learning_rate_stops_before_any_run(isolated_config, tmp_path):
    config = isolated_config("ci-quick")
    config.write_text(config.read_text().replace('CONFIG_LEARNING_RATE="0.002"', 'CONFIG_LEARNING_RATE="abc"'))
    proc = run_script(MATRIX, "run", "--config", config)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        'error: CONFIG_LEARNING_RATE="abc" is not valid; allowed: a number in (0, 10]']
    assert not (tmp_path / "results").exists()


def test_dry_run_lists_runs_slots_and_estimate_without_training(isolated_config, tmp_path):
    proc = run_script(MATRIX, "dry-run", "--config", isolated_config("lenet5-quick"))
    assert proc.returncode == 0, proc.stderr
    numbered = [line for line in proc.stdout.splitlines() if line.startswith("  ") and ". lenet5_" in line]
    assert len(numbered) == 12 and numbered[0].startswith("  1. lenet5_sgd_none  (lr 0.01 constant)  [slot 1")
    assert "Slots: " in proc.stdout
    assert "Estimated time: unknown (no comparable past run under " in proc.stdout
    assert "12 runs" in proc.stdout.splitlines()[-1]
    assert not (tmp_path / "results").exists()


@pytest.mark.slow  # a 12-run matrix (the module's reference run)
def test_dry_run_estimates_from_past_runs_of_the_same_model(reference, tmp_path):
    results_dir = reference[0]
    config = runner_config(tmp_path, RESULTS_ROOT=f'"{results_dir.parent}"')
    proc = run_script(MATRIX, "dry-run", "--config", config)
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("Estimated time:"))
    assert "with 2 runs at once" in line and f"{RUNS} of {RUNS} runs with an identical past run" in line
    durations = [json.loads(p.read_text())["duration_s"] for p in results_dir.glob("*/result.json")]
    h, m, s = map(int, line.split()[2].split(":"))
    assert 0.8 * sum(durations) / 2 <= h * 3600 + m * 60 + s <= 1.2 * sum(durations) / 2 + 1


def test_continue_picks_the_newest_matrix_directory_not_reproduce_or_compare_folders(tmp_path):
    """reproduce_<time>/ and compare_<time>/ sort after every <YYYYMMDD_HHMMSS> by name; _10 after _9."""
    for name in ("20260101_120000", "20260102_090000_9", "20260102_090000_10", "20260102_090000_2",
                 "reproduce_20260103_080000", "compare_20260103_080000", "zz_copy", "20260104_100000"):
        (tmp_path / name).mkdir()
        if name != "20260104_100000":  # a folder of a matrix still being created: no matrix.json yet
            (tmp_path / name / "matrix.json").write_text("{}")
    assert runner.newest_matrix_dir(tmp_path) == tmp_path / "20260102_090000_10"


def test_continue_without_a_matrix_directory_names_the_fix(tmp_path):
    (tmp_path / "reproduce_20260103_080000").mkdir()
    (tmp_path / "reproduce_20260103_080000" / "matrix.json").write_text("{}")
    with pytest.raises(runner.UserError, match="no result directory under .* RESULTS=dir"):
        runner.newest_matrix_dir(tmp_path)


@pytest.mark.parametrize("command", ["continue", "run", "dry-run"])
def test_executor_from_the_environment_is_checked_like_the_command_line(command):
    """make hands EXECUTOR over through the environment, where argparse applies no `choices`."""
    from conftest import script_module

    matrix_cli = script_module("matrix")
    assert matrix_cli.parse_args([command], {"EXECUTOR": "slurm"}).executor == "slurm"
    assert matrix_cli.parse_args([command], {"EXECUTOR": ""}).executor is None
    with pytest.raises(runner.UserError, match=r"^EXECUTOR='slrum' is not valid; allowed: local, slurm$"):
        matrix_cli.parse_args([command], {"EXECUTOR": "slrum"})


def test_executor_given_to_make_or_the_dry_run_overrides_the_configurations(isolated_config, capsys):
    """`make EXECUTOR=slurm` (and the dry run) run on Slurm whatever .config says; it used to be ignored."""
    from conftest import script_module

    matrix_cli, config = script_module("matrix"), isolated_config("ci-quick")
    matrix_cli.dry_run(config, "slurm")
    assert "Executor: Slurm array" in capsys.readouterr().out
    matrix_cli.dry_run(config)
    assert "Slurm" not in capsys.readouterr().out


def test_make_executor_refuses_an_unknown_name(tmp_path):
    from lib.config import default_runner

    with pytest.raises(runner.UserError, match="executor='bogus' is not valid"):
        runner.make_executor(default_runner(), tmp_path, name="bogus")


def test_advice_after_failures_fits_the_failure(tmp_path):
    """A run that went non-finite fails the same way under `make continue`: the advice names the symbols;
    a crash or timeout keeps the `make continue` advice; a run that never finished gets none."""
    specs = [_spec(name) for name in ("diverged", "crashed", "timed_out", "fine", "never_finished")]
    for spec, status, code in zip(specs, ("failed", "failed", "timeout", "success"), (3, 1, None, 0)):
        (tmp_path / spec.run_id).mkdir()  # result.json as written before "non_finite": known by exit code 3
        (tmp_path / spec.run_id / "result.json").write_text(json.dumps({"status": status, "exit_code": code}))
    ddp = _spec("diverged_ddp")  # torchrun's exit 1, the worker's marker recorded as "non_finite"
    (tmp_path / ddp.run_id).mkdir()
    (tmp_path / ddp.run_id / "result.json").write_text(json.dumps({"status": "failed", "exit_code": 1,
                                                                   "non_finite": True}))
    specs.insert(1, ddp)
    non_finite, other = runner.failure_lines(tmp_path, specs)
    assert non_finite.startswith("2 runs went non-finite (diverged, diverged_ddp); make continue reruns the "
                                 "recorded settings")
    assert "CONFIG_LEARNING_RATE" in non_finite and "CONFIG_GRADIENT_CLIP_NORM" in non_finite
    assert other == "2 runs failed; see their output.log, then `make continue`"
    assert runner.failure_lines(tmp_path, specs[4:]) == []


def test_a_non_finite_stop_exits_with_its_own_code(capsys):
    """What the runner tells it apart by: NonFiniteError exits 3, every other UserError 2."""
    from lib.errors import NON_FINITE_EXIT, NonFiniteError, UserError, run_cli

    for error, code in ((NonFiniteError("loss became nan at step 3"), NON_FINITE_EXIT), (UserError("bad"), 2)):
        def fail(error=error):
            raise error
        with pytest.raises(SystemExit) as stop:
            run_cli(fail)
        assert stop.value.code == code
    assert capsys.readouterr().err == "error: loss became nan at step 3\nerror: bad\n"


def test_config_changes_show_a_value_with_no_setting_as_unset(tmp_path):
    """LeNet-5's int options have no value once LeNet-5 is off: `(unset)`, not a bool's `n`."""
    from conftest import write_config

    recorded = write_config(tmp_path, "lenet5-quick", LENET5_TRAIN_LIMIT="1000")
    recorded = recorded.rename(tmp_path / "config.txt")
    current = write_config(tmp_path, "ci-gpt2-tiny")
    changes = runner.config_changes(current, recorded, limit=1000)
    assert "LENET5_TRAIN_LIMIT: 1000 -> (unset)" in changes
    assert "MODEL_SELECT_LENET5: y -> n" in changes or "MODEL_LENET5: y -> n" in changes
