"""What the runner shows: the ETA over parallel slots, plain lines or a bar, and the dry run's estimate."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import termios
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import script_module

from lib.run.plan import STARTUP_S, estimate_lines, estimate_run_s, find_past_runs, makespan_s
from lib.run.progress import MatrixProgress
from lib.run.task import RunTask
from tests.specs import make_spec


def _task(n: int, epochs: int = 2) -> RunTask:
    spec = make_spec(f"lenet5_sgd_magnitude_{n}", pruning="magnitude", target=n, epochs=epochs)
    return RunTask(Path("/nowhere"), spec, ("true",))


def _result(seconds: float, status: str = "success") -> dict:
    return {"status": status, "duration_s": seconds, "exit_code": 0 if status == "success" else 1,
            "metrics": {"best_accuracy_pct": 98.0, "sparsity_pct": 50.0}}


def test_eta_divides_the_work_left_by_the_slots():
    lines: list[str] = []
    progress = MatrixProgress(total=5, slots=2, out=lines.append)
    progress.started(_task(1), None)
    progress.started(_task(2), None)
    progress.finished(_task(1), _result(10.0))
    # mean 10 s: 3 queued runs (30 s) + the running one (about 10 s left) over 2 slots
    assert progress.eta_s() == pytest.approx(20.0, abs=0.5)
    assert progress.counts() == "done 1, failed 0, running 1"
    assert lines[0].startswith("[1/5] start   lenet5_sgd_magnitude_1")
    assert "success lenet5_sgd_magnitude_1  10.0s  acc 98.00%" in lines[2] and "ETA 0:00:20" in lines[2]


def test_a_failed_run_says_where_its_log_is():
    lines: list[str] = []
    progress = MatrixProgress(total=1, out=lines.append)
    progress.started(_task(1), None)
    progress.finished(_task(1), _result(3.0, "timeout"))
    assert "TIMEOUT (exit 1); see lenet5_sgd_magnitude_1/output.log" in lines[-1]
    assert progress.remaining == 0 and "ETA" not in lines[-1]


def test_a_run_that_went_non_finite_says_so_whatever_its_exit_code():
    """A two-process run reaches the runner as torchrun's exit 1; result.json's "non_finite" tells."""
    lines: list[str] = []
    progress = MatrixProgress(total=1, out=lines.append)
    progress.finished(_task(1), {**_result(3.0, "failed"), "non_finite": True})
    assert "FAILED (non-finite, exit 1); see lenet5_sgd_magnitude_1/output.log" in lines[-1]


def test_terminal_gets_a_live_bar_with_counts_and_eta(capsys):
    progress = MatrixProgress(total=3, slots=2, out=lambda line: pytest.fail("no plain lines on a terminal"), bar=True)
    progress.started(_task(1), None)
    progress.finished(_task(1), _result(4.0))
    progress.close()
    err = capsys.readouterr().err
    assert "1/3" in err and "done 1, failed 0, running 0" in err and "ETA" in err


def test_makespan_replays_runs_on_the_slots():
    assert makespan_s([(10.0, 1)] * 4, slots=2) == 20.0
    assert makespan_s([(10.0, 1), (10.0, 2), (10.0, 1)], slots=2) == 30.0  # the DDP run waits for both slots


def _past_run(root: Path, task: RunTask, seconds: float, status: str = "success") -> None:
    run_dir = root / "20240101_000000" / task.spec.run_id
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"spec": task.spec.to_json()}))
    (run_dir / "result.json").write_text(json.dumps({"status": status, "duration_s": seconds}))


def test_estimate_uses_identical_past_runs_then_comparable_ones_per_epoch(tmp_path):
    _past_run(tmp_path, _task(50, epochs=2), 40.0)
    _past_run(tmp_path, _task(70, epochs=2), 60.0)
    _past_run(tmp_path, _task(90, epochs=2), 999.0, status="failed")  # failures say nothing about duration
    past = find_past_runs(tmp_path, {"lenet5"})
    assert past.count == 2
    assert estimate_run_s(_task(50, epochs=2).spec, past) == 40.0
    # the start-up once, then the median of (40 - S) / 2 and (60 - S) / 2 s per epoch x 4
    assert estimate_run_s(_task(90, epochs=4).spec, past) == pytest.approx(STARTUP_S + 4 * (50.0 - STARTUP_S) / 2)
    lines = estimate_lines([_task(50).spec, _task(70).spec], tmp_path, slots=2)
    assert lines[0].startswith("Estimated time: 0:01:00 with 2 runs at once (serial 0:01:40)")


def test_no_past_runs_is_said_plainly(tmp_path):
    assert estimate_lines([_task(50).spec], tmp_path, slots=1) == [
        f"Estimated time: unknown (no comparable past run under {tmp_path}: one with the same model settings, "
        "data and batch)"]


def test_counts_of_one_read_in_the_singular(tmp_path):
    """`1 run, 1 already done`, `with 1 run at once`, `1 past run`: never "1 runs"."""
    from lib.errors import counted
    from lib.run.runner import run_matrix

    assert [counted(n, "run") for n in (0, 1, 2)] == ["0 runs", "1 run", "2 runs"]
    assert counted(1, "matrix", "matrices") == "1 matrix" and counted(3, "matrix", "matrices") == "3 matrices"
    task = _task(50)
    _past_run(tmp_path, task, 30.0)
    (line,) = estimate_lines([task.spec], tmp_path, slots=1)
    assert "with 1 run at once" in line and "from 1 past run under" in line and "1 of 1 run with" in line
    said: list[str] = []
    results = tmp_path / "20240101_000000"
    run_matrix(results, [task.spec], executor=SimpleNamespace(name="fake"), out=said.append)  # all done
    assert said == [f"{results}: 1 run, 1 already done, 0 to run"]


def test_a_live_bar_only_in_a_terminal_that_has_a_width(monkeypatch, tmp_path):
    """tqdm draws nothing in a terminal of size 0x0, so start lines would vanish: lines there, as in a pipe."""
    matrix_cli = script_module("matrix")
    master, slave = pty.openpty()
    try:
        with open(slave, "w", closefd=False) as terminal:
            monkeypatch.setattr("sys.stdout", terminal)
            assert matrix_cli.live_bar_fits() is False  # a pty whose size was never set
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
            assert matrix_cli.live_bar_fits() is True
        with open(tmp_path / "log", "w") as pipe_like:
            monkeypatch.setattr("sys.stdout", pipe_like)
            assert matrix_cli.live_bar_fits() is False
    finally:
        os.close(master)
        os.close(slave)
