"""The Slurm executor, through submitit's local cluster (SLURM_CLUSTER=local):
the matrix reports as the local executor's does, `make continue` crosses
executors, a task killed on its node is recorded, a preempted task is requeued."""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import pytest
from conftest import run_script
from runner_matrix import MATRIX, RUNS, comparable_rows, reference_run, runner_config, statuses

from lib.config import default_runner
from lib.config import parse_slurm_extra as parse_extra
from lib.run.slots import cpu_cores
from lib.run.slurm_executor import RunOnNode, SlurmExecutor
from lib.run.task import RunPolicy, RunTask
from tests.specs import make_spec

SLURM_LOCAL = dict(EXECUTOR_SLURM="y", SLURM_CLUSTER='"local"', SLURM_GPUS_PER_TASK="0", SLURM_CPUS_PER_TASK="1",
                   SLURM_ARRAY_PARALLELISM="2")


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("submitit")
    proc = run_script(MATRIX, "run", "--config", runner_config(tmp, **SLURM_LOCAL))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (matrix,) = (tmp / "results").glob("*/matrix.json")
    return matrix.parent, proc.stdout


@pytest.mark.slow  # a 12-run matrix
def test_slurm_matrix_reports_identically_to_the_local_one(slurm_run, tmp_path_factory):
    results_dir, output = slurm_run
    reference_dir, _ = reference_run(tmp_path_factory)
    assert "executor slurm: Slurm array" in output
    assert statuses(results_dir) == statuses(reference_dir) and len(statuses(results_dir)) == RUNS
    assert comparable_rows(results_dir) == comparable_rows(reference_dir)
    jobs = json.loads((results_dir / ".submitit" / "jobs.json").read_text())
    assert sorted(jobs) == sorted(statuses(results_dir))
    for run_id, job_id in jobs.items():
        result = json.loads((results_dir / run_id / "result.json").read_text())
        assert result["executor"] == "slurm" and result["placement"]["job_id"] == job_id
        assert result["placement"]["threads"] == max(1, cpu_cores() // 2)  # two tasks at once share the cores


def _continue_one_elsewhere(source: Path, tmp_path: Path, executor: str, victim: str) -> dict:
    results_dir = tmp_path / "copy"
    shutil.copytree(source, results_dir)
    (results_dir / victim / "result.json").unlink()
    config = runner_config(tmp_path, **SLURM_LOCAL)  # slurm settings for when slurm is asked for
    proc = run_script(MATRIX, "continue", "--results", results_dir, "--config", config, "--executor", executor)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{RUNS - 1} already done, 1 to run" in proc.stdout
    assert comparable_rows(results_dir) == comparable_rows(source)
    return json.loads((results_dir / victim / "result.json").read_text())


@pytest.mark.slow  # a 12-run matrix
def test_continue_finishes_a_slurm_directory_locally(slurm_run, tmp_path):
    result = _continue_one_elsewhere(slurm_run[0], tmp_path, "local", "lenet5_adam_magnitude_70")
    assert result["status"] == "success" and result["executor"] == "local"


@pytest.mark.slow  # a 12-run matrix
def test_continue_finishes_a_local_directory_on_slurm(tmp_path_factory, tmp_path):
    reference_dir, _ = reference_run(tmp_path_factory)
    result = _continue_one_elsewhere(reference_dir, tmp_path, "slurm", "lenet5_sgd_magnitude_90")
    assert result["status"] == "success" and result["executor"] == "slurm"


def _task(tmp_path: Path, code: str, run_id: str = "lenet5_sgd_none") -> RunTask:
    spec = make_spec(run_id)
    return RunTask(tmp_path, spec, (sys.executable, "-c", code), RunPolicy(retries=2))


def _follow(executor: SlurmExecutor, timeout_s: float = 120) -> list:
    events, deadline = [], time.monotonic() + timeout_s
    while not any(e.kind == "finished" for e in events) and time.monotonic() < deadline:
        events += executor.poll(0.5)
    return events


def test_task_killed_on_its_node_is_recorded_as_interrupted(tmp_path):
    # The trainer SIGKILLs the task process that runs it: the task never writes result.json.
    task = _task(tmp_path, "import os, signal; print('going down'); os.kill(os.getppid(), signal.SIGKILL)")
    executor = SlurmExecutor(tmp_path, dataclasses.replace(default_runner(), executor="slurm", slurm_cluster="local",
                                                               slurm_gpus_per_task=0))
    executor.launch([task])
    events = _follow(executor)
    assert [e.kind for e in events] == ["started", "finished"]
    result = json.loads((task.run_dir / "result.json").read_text())
    assert result == events[-1].result
    assert result["status"] == "interrupted" and result["executor"] == "slurm"
    assert any("without result.json" in line for line in result["log_tail"])
    assert "going down" in "\n".join(result["log_tail"])


@pytest.mark.slow  # waits for submitit's timeout (8 s)
def test_preempted_task_is_requeued_and_finishes(tmp_path):
    """Slurm's warning signal before the time limit: submitit checkpoints RunOnNode and requeues the same task."""
    import submitit

    marker = tmp_path / "second-attempt"
    # First start: hang until preempted (and mark that it was here). Requeued start: succeed.
    code = (f"import json, pathlib, sys, time; m = pathlib.Path({str(marker)!r}); d = pathlib.Path(sys.argv[1]); "
            "first = not m.exists(); m.touch(); "
            "time.sleep(60) if first else (d / 'metrics.json').write_text(json.dumps({'best_accuracy_pct': 1.0}))")
    spec = make_spec("lenet5_sgd_none")
    task = RunTask(tmp_path, spec, (sys.executable, "-c", code, str(tmp_path / spec.run_id)))
    executor = submitit.LocalExecutor(folder=tmp_path / ".submitit")
    executor.update_parameters(timeout_min=0.2, signal_delay_s=6)  # the signal comes 6 s before the limit
    job = executor.submit(RunOnNode(1), task)
    result = job.result()
    assert result["status"] == "success" and marker.exists()
    assert list((tmp_path / ".superseded").glob(f"{spec.run_id}-*"))  # the preempted attempt, kept aside
    assert "Requeued" in (job.stderr() or "") + (job.stdout() or "")


def test_slurm_extra_is_parsed_into_sbatch_options():
    assert parse_extra("account=proj qos=high exclusive") == {"account": "proj", "qos": "high", "exclusive": ""}
