"""The runner survives being stopped: SIGKILL five times at random moments,
then Ctrl-C (SIGINT) and SIGTERM, each followed by `continue`, ends with the
same runs and summary rows as an uninterrupted run, and no training process
outlives the runner that started it.

One module fixture drives the whole sequence on a 12-run matrix (two runs at
once) and records what it saw; the tests below check one property each. The
SIGKILLs fall a random few seconds into the runs, or just after a run wrote
its result.json (while the next one starts).
"""
from __future__ import annotations

import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runner_matrix import (RUNS, comparable_rows, log_copiers_of, reference_run, runner_config, start_matrix, statuses,
                           trainers_of, wait_for)

pytestmark = pytest.mark.slow  # a 12-run matrix killed and continued seven times

KILLS = 5
SEED = 20240601  # the random moments are the same every time
STOPS = [("SIGKILL", "mid-run"), ("SIGKILL", "after-result"), ("SIGKILL", "mid-run"), ("SIGKILL", "after-result"),
         ("SIGKILL", "mid-run"), ("SIGINT", "mid-run"), ("SIGTERM", "mid-run")]


@dataclass
class Stop:
    how: str
    when: str  # mid-run | after-result
    exit_code: int
    stop_s: float  # signal to the last training process gone
    orphans: list[int]
    copiers: list[int]  # output.log copiers still alive 5 s after the last training process
    successes_before: dict[str, int]  # run ID -> result.json mtime, before the signal
    successes_after: dict[str, int]
    output: str


@dataclass
class Sequence:
    results_dir: Path
    stops: list[Stop] = field(default_factory=list)
    final_exit_code: int | None = None
    final_output: str = ""


def _successes(results_dir: Path) -> dict[str, int]:
    return {run_id: (results_dir / run_id / "result.json").stat().st_mtime_ns
            for run_id, status in statuses(results_dir).items() if status == "success"}


def _stop_once(proc, results_dir: Path, how: str, when: str, rng: random.Random) -> Stop:
    """Send `how` to the runner at a random moment: `mid-run` (a few seconds into the
    runs), or `after-result` (just after a run wrote its result.json, while the next starts)."""
    root = results_dir.parent
    if when == "mid-run":
        assert wait_for(lambda: trainers_of(root) or proc.poll() is not None, 90), "no run started"
        time.sleep(rng.uniform(0.3, 6.0))
    else:
        done = len(_successes(results_dir))
        assert wait_for(lambda: len(_successes(results_dir)) > done or proc.poll() is not None, 120, 0.05)
        time.sleep(rng.uniform(0.0, 1.0))
    assert proc.poll() is None, "the matrix finished before it could be interrupted"
    before = _successes(results_dir)
    sent = time.monotonic()
    proc.send_signal(getattr(signal, how))
    output, _ = proc.communicate(timeout=60)
    wait_for(lambda: not trainers_of(root), 20)
    stop_s, orphans = time.monotonic() - sent, trainers_of(root)
    wait_for(lambda: not log_copiers_of(root), 5)  # each ends once its trainer's pipe closes
    return Stop(how, when, proc.returncode, stop_s, orphans, log_copiers_of(root), before,
                _successes(results_dir), output)


@pytest.fixture(scope="module")
def sequence(tmp_path_factory) -> Sequence:
    tmp = tmp_path_factory.mktemp("reliability")
    config = runner_config(tmp)
    rng = random.Random(SEED)
    proc = start_matrix("run", "--config", config)
    assert wait_for(lambda: list((tmp / "results").glob("*/matrix.json")), 90), "no result directory"
    (matrix,) = (tmp / "results").glob("*/matrix.json")
    seq = Sequence(matrix.parent)
    for how, when in STOPS:
        seq.stops.append(_stop_once(proc, seq.results_dir, how, when, rng))
        proc = start_matrix("continue", "--results", seq.results_dir, "--config", config)
    seq.final_output, _ = proc.communicate(timeout=600)
    seq.final_exit_code = proc.returncode
    return seq


def test_sigkill_five_times_then_continue_gives_the_uninterrupted_results(sequence, tmp_path_factory):
    reference_dir, _ = reference_run(tmp_path_factory)
    kills = [s for s in sequence.stops if s.how == "SIGKILL"]
    assert len(kills) == KILLS and all(s.exit_code == -signal.SIGKILL for s in kills)
    assert sequence.final_exit_code == 0, sequence.final_output
    assert statuses(sequence.results_dir) == statuses(reference_dir) == {r: "success" for r in statuses(reference_dir)}
    assert len(statuses(reference_dir)) == RUNS
    assert comparable_rows(sequence.results_dir) == comparable_rows(reference_dir)


def test_sigkill_leaves_no_training_process_behind(sequence):
    for stop in sequence.stops:
        assert stop.orphans == [], f"{stop.how}: training processes outlived the runner"
        assert stop.copiers == [], f"{stop.how}: output.log copiers outlived their trainers"


def test_no_finished_result_is_lost_or_rewritten_by_an_interruption(sequence):
    for stop in sequence.stops:
        for run_id, mtime in stop.successes_before.items():
            assert stop.successes_after.get(run_id) == mtime, f"{stop.how}: {run_id} lost or rewritten"
    # interruptions came with finished runs on disk, and every interrupted run folder was kept aside
    assert sum(1 for stop in sequence.stops if stop.successes_before) >= 3
    assert list((sequence.results_dir / ".superseded").iterdir())


def test_sigint_and_sigterm_stop_the_runs_within_seconds_and_leave_the_directory_resumable(sequence):
    for stop in sequence.stops:
        if stop.how in ("SIGINT", "SIGTERM"):
            assert stop.exit_code == 130, stop.output
            assert f"make continue RESULTS={sequence.results_dir}" in stop.output
            assert stop.stop_s < 10, f"{stop.how}: took {stop.stop_s:.1f}s to stop"
    assert "already done" in sequence.final_output
