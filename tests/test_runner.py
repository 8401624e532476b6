"""The runner end to end: a real ci-quick matrix, resume, failures, timeouts, bad input."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_script
from lib import runner
from lib.executors import SequentialExecutor
from lib.matrix import RunSpec
from fixtures.summary_rows import rows as summary_rows

MATRIX = ROOT / "scripts" / "matrix.py"


def _results_dir(config: Path) -> Path:
    root = config.parent / "results"
    (found,) = [p for p in root.iterdir() if (p / "matrix.json").is_file()]
    return found


@pytest.fixture(scope="module")
def ci_quick(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """One real ci-quick matrix, shared by the tests that inspect it."""
    from conftest import write_config

    tmp = tmp_path_factory.mktemp("ci_quick")
    config = write_config(tmp, "ci-quick", RESULTS_ROOT=f'"{tmp / "results"}"', DATA_DIR=f'"{tmp / "data"}"')
    proc = run_script(MATRIX, "run", "--config", config)
    return config, _results_dir(config), proc


def test_ci_quick_matrix_runs_every_run_and_reports_measured_figures(ci_quick):
    config, results_dir, proc = ci_quick
    assert proc.returncode == 0, proc.stdout + proc.stderr
    specs = json.loads((results_dir / "matrix.json").read_text())["runs"]
    assert len(specs) == 6
    report = summary_rows((results_dir / "summary_report.txt").read_text())
    assert sorted(r["id"] for r in report) == sorted(s["run_id"] for s in specs)
    for row in report:
        run_dir = results_dir / row["id"]
        assert json.loads((run_dir / "result.json").read_text())["status"] == "success"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert row["accuracy"] == pytest.approx(metrics["best_accuracy_pct"], abs=0.006)
        assert row["sparsity"] == pytest.approx(metrics["sparsity"]["global_pct"], abs=0.006)
        assert abs(metrics["sparsity"]["global_pct"] - metrics["sparsity"]["target_pct"]) < 1.0
        stats = json.loads((run_dir / "gpu_stats.json").read_text())
        assert stats["device"] == "cpu" and stats["summary"]["peak_mib"] > 50
        assert (run_dir / "output.log").read_text().count("epoch ") >= 3
    assert str(results_dir / "summary_report.txt") in proc.stdout


def test_continue_reruns_exactly_the_run_without_result(ci_quick):
    config, results_dir, _ = ci_quick
    victim = "lenet5_adamw_magnitude_50"
    before = {p.parent.name: p.stat().st_mtime_ns for p in results_dir.glob("*/result.json")}
    (results_dir / victim / "result.json").unlink()
    proc = run_script(MATRIX, "continue", "--results", results_dir, "--config", config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 already done, 1 to run" in proc.stdout
    after = {p.parent.name: p.stat().st_mtime_ns for p in results_dir.glob("*/result.json")}
    assert set(after) == set(before)
    assert [name for name in after if after[name] != before[name]] == [victim]
    assert list((results_dir / ".superseded").glob(f"{victim}-*"))
    report = summary_rows((results_dir / "summary_report.txt").read_text())
    assert victim in {r["id"] for r in report}


def _fake_trainer(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_failing_run_is_recorded_and_the_matrix_goes_on(tmp_path, monkeypatch):
    specs = [RunSpec(f"lenet5_sgd_magnitude_{n}", "lenet5", "sgd", "magnitude", None, float(n), 1) for n in (50, 70)]
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
    assert failed["status"] == "failed" and failed["exit_code"] == 3
    assert "loss exploded" in failed["log_tail"]
    assert json.loads((tmp_path / specs[1].run_id / "result.json").read_text())["status"] == "success"
    assert any("ETA" in line for line in lines)
    assert [s.run_id for s in runner.pending(tmp_path, specs)] == [specs[0].run_id]


def test_exit_zero_without_metrics_is_not_success(tmp_path):
    spec = RunSpec("lenet5_sgd_none", "lenet5", "sgd", "none", None, 0.0, 1)
    (tmp_path / spec.run_id).mkdir()
    outcome = SequentialExecutor().run(_fake_trainer("pass"), tmp_path / spec.run_id)
    assert runner.write_result(tmp_path / spec.run_id, spec, outcome)["status"] == "failed"


def test_hanging_run_is_killed_at_the_timeout(tmp_path):
    start = time.monotonic()
    outcome = SequentialExecutor(timeout_s=1).run(_fake_trainer("import time; time.sleep(60)"), tmp_path)
    assert outcome.status == "timeout"
    assert time.monotonic() - start < 15


def test_crashing_run_is_retried(tmp_path):
    outcome = SequentialExecutor(retries=2).run(_fake_trainer("import sys; sys.exit(1)"), tmp_path)
    assert outcome.status == "failed" and outcome.attempts == 3
    assert (tmp_path / "output.log").read_text().count("===== attempt") == 2


def test_bad_learning_rate_stops_before_any_run(isolated_config, tmp_path):
    config = isolated_config("ci-quick")
    config.write_text(config.read_text().replace('CONFIG_LEARNING_RATE="0.002"', 'CONFIG_LEARNING_RATE="abc"'))
    proc = run_script(MATRIX, "run", "--config", config)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        'error: CONFIG_LEARNING_RATE="abc" is not valid; allowed: a number in (0, 10]']
    assert not (tmp_path / "results").exists()


def test_dry_run_lists_runs_without_training(isolated_config, tmp_path):
    proc = run_script(MATRIX, "dry-run", "--config", isolated_config("lenet5-quick"))
    assert proc.returncode == 0, proc.stderr
    numbered = [line for line in proc.stdout.splitlines() if line.startswith("  ") and ". lenet5_" in line]
    assert len(numbered) == 12 and numbered[0] == "  1. lenet5_sgd_none"
    assert "12 runs" in proc.stdout.splitlines()[-1]
    assert not (tmp_path / "results").exists()


def test_make_defconfig_nonexistent_is_one_clear_line():
    proc = subprocess.run(["make", "-s", "defconfig-nonexistent"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if not line.startswith("make")]
    assert ours == ["error: no defconfig named 'nonexistent' in defconfigs/ (`make listdefconfigs` lists them)"]
    assert "Traceback" not in proc.stdout + proc.stderr


def _trainers_of(results_root: Path) -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter(["cmdline"])
            if any(str(results_root) in part for part in (p.info["cmdline"] or [])) and "--run-dir" in p.info["cmdline"]]


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_stopping_the_runner_leaves_no_training_process_and_resumes(isolated_config, tmp_path, how):
    import signal

    config = isolated_config("ci-quick", NUM_EPOCHS="20")
    runner_proc = subprocess.Popen([sys.executable, str(MATRIX), "run", "--config", str(config)], cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not _trainers_of(tmp_path / "results") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _trainers_of(tmp_path / "results"), "no trainer started"
    runner_proc.send_signal(getattr(signal, how))
    runner_proc.wait(timeout=30)
    deadline = time.monotonic() + 15
    while _trainers_of(tmp_path / "results") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _trainers_of(tmp_path / "results") == []
    results_dir = _results_dir(config)
    assert not list(results_dir.glob("*/result.json"))  # the interrupted run is not marked done
    from lib.runner import load_matrix, pending

    assert len(pending(results_dir, load_matrix(results_dir))) == 6
