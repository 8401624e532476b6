"""A run that went non-finite is a result ("this method diverged at 90% sparsity"), not a crash:
lib/results reads result.json "non_finite" (only JSON true counts), and summary_report.txt,
report.md and make compare name such runs `✗ Non-finite`, count them apart and say what went
non-finite at which step. The directory is written as lib/run/task.write_result writes it: a
successful run, a crash, a run that stopped on a nan loss, a multi-GPU run known by its
worker's non_finite.json, and two runs from elsewhere whose "non_finite" is "yes" and 1.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
from result_dirs import classifier_metrics, gpu_stats, seeded_matrix, spec, tree_digest, write_matrix, write_run

from lib.report.summary import write_reports
from lib.results.reader import load_results

ROOT = Path(__file__).resolve().parent.parent
_reader = importlib.util.spec_from_file_location("summary_rows", ROOT / "tests/fixtures/summary_rows.py")
summary_rows = importlib.util.module_from_spec(_reader)
_reader.loader.exec_module(summary_rows)

# The trainer's words (lib/train/loop.py, lib/pruning/masks.py), as its `error:` line prints them.
NAN_LOSS = ("loss became nan at step 13 (lr 0.1); stopped: lower the learning rate or clip gradients "
            "(CONFIG_GRADIENT_CLIP_NORM)")
NAN_SCORE = "pruning score bitter7 is nan in fc1.weight at step 40: the weights or the optimizer state went non-finite"

OK = spec("lenet5", "adam", "none", 0.0)
OK_90 = spec("lenet5", "adam", "magnitude", 90.0)
DIVERGED = spec("lenet5", "sgd", "magnitude", 90.0)  # exit 3; its error line above the five lines shown
DIVERGED_DDP = spec("lenet5", "adamw", "magnitude", 90.0)  # torchrun's exit 1, the worker's marker line
CRASHED = spec("lenet5", "sgd", "movement", 90.0)
SAYS_YES = spec("lenet5", "adam", "movement", 90.0)  # "non_finite": "yes", from another lab's writer
SAYS_ONE = spec("lenet5", "adamw", "none", 0.0)  # "non_finite": 1
SPECS = [OK, OK_90, DIVERGED, DIVERGED_DDP, CRASHED, SAYS_YES, SAYS_ONE]
MEMORY = (120.0, 150.0)  # every failed run's sampler still measured this


def _succeed(root: Path, s: dict) -> None:
    accuracy = 98.5 if s["pruning"] == "none" else 97.0
    write_run(root, s, "success", classifier_metrics(s, [accuracy - 1, accuracy], s["target_sparsity_pct"]),
              gpu_stats(300.0, 350.0, "cpu"), exit_code=0, non_finite=False)


def diverged_dir(root: Path) -> Path:
    write_matrix(root, SPECS)
    for s in (OK, OK_90):
        _succeed(root, s)
    failed = dict(metrics=None, stats=gpu_stats(*MEMORY, "cpu"))
    write_run(root, DIVERGED, "failed", **failed, exit_code=3, non_finite=True,
              log_tail=["step 12 loss 2.1", f"error: {NAN_LOSS}", "tracker: finished", "sampler: stopped",
                        "a", "b", "c"])
    write_run(root, DIVERGED_DDP, "failed", **failed, exit_code=1, non_finite=True,
              log_tail=[f"[rank1]: error: {NAN_SCORE}", *[f"torchrun report line {i}" for i in range(8)],
                        f"--- stopped non-finite on rank 1: {NAN_SCORE} ---"])
    write_run(root, CRASHED, "failed", **failed, exit_code=1, non_finite=False,
              log_tail=["Traceback (most recent call last):", "RuntimeError: CUDA out of memory"])
    # Hostile: nothing but JSON true says non-finite, whatever the log tail reads like.
    write_run(root, SAYS_YES, "failed", **failed, exit_code=3, non_finite="yes", log_tail=[f"error: {NAN_LOSS}"])
    write_run(root, SAYS_ONE, "failed", **failed, exit_code=1, non_finite=1, log_tail=["boom"])
    return root


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return diverged_dir(tmp_path / "20260101_000000")


def _table_lines(text: str) -> dict[str, str]:
    """Results Table rows by run ID (the first section that lists every run)."""
    table = text[text.index("Results Table:"):text.index("Best Performers:")]
    return {line.split()[0]: line for line in table.splitlines() if line.startswith("lenet5_")}


def test_the_reader_flags_only_json_true_and_reads_what_went_non_finite(results: Path, capsys):
    runs = [results / s["run_id"] for s in SPECS]
    before = {run.name: tree_digest(run) for run in runs}
    table = load_results(results).set_index("run_id")
    flagged = {run_id for run_id, flag in table["non_finite"].items() if flag}
    assert flagged == {DIVERGED["run_id"], DIVERGED_DDP["run_id"]}
    assert all(isinstance(flag, bool) for flag in table["non_finite"])
    # the status stays what result.json says: a non-finite run is a failed run, counted as one
    assert (table["status"] == "failed").sum() == 5
    assert table.loc[DIVERGED["run_id"], "non_finite_reason"] == NAN_LOSS  # found above the lines shown
    assert NAN_LOSS not in " ".join(table.loc[DIVERGED["run_id"], "log_tail"])
    assert table.loc[DIVERGED_DDP["run_id"], "non_finite_reason"] == NAN_SCORE  # the runner's marker line
    assert table.loc[SAYS_YES["run_id"], "non_finite_reason"] is None  # not non-finite, whatever its tail
    warnings = capsys.readouterr().err
    assert f"{SAYS_YES['run_id']}/result.json: non_finite 'yes' is not true or false; taken as false" in warnings
    assert f"{SAYS_ONE['run_id']}/result.json: non_finite 1 is not true or false; taken as false" in warnings
    write_reports(table.reset_index(), results, "x", graphs=False)
    assert {run.name: tree_digest(run) for run in runs} == before  # read, never written


def test_summary_report_names_non_finite_runs_apart_from_crashes(reports: Path):
    text = (reports / "summary_report.txt").read_text()
    lines = text.splitlines()
    for line in ("Total tests: 7", "Successful: 2", "Failed: 5 (2 non-finite)", "Missing: 0"):
        assert line in lines, line
    table = _table_lines(text)
    assert table[DIVERGED["run_id"]].endswith("✗ Non-finite")
    assert table[DIVERGED_DDP["run_id"]].endswith("✗ Non-finite")
    for s in (CRASHED, SAYS_YES, SAYS_ONE):
        assert table[s["run_id"]].endswith("✗ Failed"), s["run_id"]
    section = text[text.index("Failed Runs:"):]
    assert f"  {DIVERGED['run_id']}: ✗ Non-finite: {NAN_LOSS}" in lines  # at which step, and what
    assert f"  {DIVERGED_DDP['run_id']}: ✗ Non-finite: {NAN_SCORE}" in lines
    assert f"  {CRASHED['run_id']}: ✗ Failed" in lines and "    | RuntimeError: CUDA out of memory" in lines
    assert f"  {SAYS_YES['run_id']}: ✗ Failed" in lines
    assert "non_finite 'yes' is not true or false" in section  # the warning, in the report too


def test_the_independent_reader_still_reads_every_row_and_figure(reports: Path):
    """summary_rows.py takes every number on a row for a figure of the column above it: the status
    label must add none, and the figures of the runs around it must stay under their headers."""
    parsed = {row["id"]: row for row in summary_rows.rows((reports / "summary_report.txt").read_text())}
    assert set(parsed) == {s["run_id"] for s in SPECS}
    for s in SPECS[2:]:
        assert parsed[s["run_id"]]["columns"] == {"RSS Avg (MiB)": MEMORY[0], "RSS Max (MiB)": MEMORY[1]}
    assert parsed[OK_90["run_id"]]["columns"] == pytest.approx(
        {"Best Acc (%)": 97.0, "Final Acc (%)": 97.0, "Sparsity (%)": 90.0, "RSS Avg (MiB)": 300.0,
         "RSS Max (MiB)": 350.0})
    assert parsed[OK_90["run_id"]]["accuracy"] == 97.0 and parsed[OK_90["run_id"]]["sparsity"] == 90.0


def test_report_md_and_all_results_json_keep_the_distinction(reports: Path):
    md = (reports / "report.md").read_text()
    assert "- Failed: 5 (2 non-finite)" in md.splitlines()
    header = next(line for line in md.splitlines() if line.startswith("| Configuration |"))
    names = [c.strip() for c in header.strip("|").split("|")]

    def status(s: dict) -> str:
        row = next(line for line in md.splitlines() if line.startswith(f"| `{s['run_id']}` |"))
        return dict(zip(names, [c.strip() for c in row.strip("|").split("|")]))["Status"]

    assert status(DIVERGED) == status(DIVERGED_DDP) == "✗ Non-finite"
    assert status(CRASHED) == status(SAYS_ONE) == "✗ Failed" and status(OK) == "✓ Success"
    # why each run did not succeed: what went non-finite at which step, else the last line of its log
    section = md[md.index("## Runs that did not succeed (5)"):].splitlines()
    assert f"- `{DIVERGED['run_id']}`: ✗ Non-finite: `{NAN_LOSS}`" in section
    assert f"- `{DIVERGED_DDP['run_id']}`: ✗ Non-finite: `{NAN_SCORE}`" in section
    assert f"- `{CRASHED['run_id']}`: ✗ Failed: `RuntimeError: CUDA out of memory`" in section
    assert f"- `{SAYS_ONE['run_id']}`: ✗ Failed: `boom`" in section
    rows = {row["run_id"]: row for row in json.loads((reports / "all_results.json").read_text())["runs"]}
    assert (rows[DIVERGED["run_id"]]["status"], rows[DIVERGED["run_id"]]["non_finite"]) == ("failed", True)
    assert (rows[SAYS_YES["run_id"]]["status"], rows[SAYS_YES["run_id"]]["non_finite"]) == ("failed", False)
    assert rows[OK["run_id"]]["non_finite"] is False


def test_seeds_of_which_one_went_non_finite(tmp_path: Path):
    root = seeded_matrix(tmp_path / "seeds", optimizers=("sgd",), sparsities=(90,), seeds=(1, 2, 3))
    result = root / "lenet5_sgd_magnitude_90_s2" / "result.json"
    result.write_text(json.dumps({**json.loads(result.read_text()), "status": "failed", "non_finite": True,
                                  "log_tail": [f"error: {NAN_LOSS}"]}))
    write_reports(load_results(root), root, "seeds", graphs=False)
    md = (root / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| `lenet5_sgd_magnitude_90` |"))
    assert row.endswith("| 2 | 2/3 ✗ (1 non-finite) |")
    assert "Failed: 1 (1 non-finite)" in (root / "summary_report.txt").read_text().splitlines()


def test_odd_combinations_from_elsewhere(tmp_path: Path, capsys):
    """A successful run claiming non-finite keeps its figures (a warning); a timeout that went non-finite
    (a multi-GPU run whose other ranks hung) is counted as non-finite, not twice; a non-finite run
    whose tail does not say why is labelled without a reason."""
    specs = [spec("lenet5", "sgd", "none", 0.0), spec("lenet5", "sgd", "magnitude", 50.0),
             spec("lenet5", "sgd", "magnitude", 70.0)]
    write_matrix(tmp_path, specs)
    write_run(tmp_path, specs[0], "success", classifier_metrics(specs[0], [90.0, 91.0], 0.0),
              gpu_stats(300.0, 350.0, "cpu"), non_finite=True)
    write_run(tmp_path, specs[1], "timeout", None, None, non_finite=True, log_tail=["killed"])
    write_run(tmp_path, specs[2], "failed", None, None, non_finite=True, log_tail=[17, None, "RuntimeError: x"])
    table = load_results(tmp_path).set_index("run_id")
    assert list(table["non_finite"]) == [False, True, True]
    assert table.loc[specs[0]["run_id"], "best_accuracy_pct"] == 91.0
    assert "non_finite is true for a successful run; taken as false" in capsys.readouterr().err
    write_reports(table.reset_index(), tmp_path, "odd", graphs=False)
    lines = (tmp_path / "summary_report.txt").read_text().splitlines()
    assert "Failed: 2 (2 non-finite)" in lines and "Successful: 1" in lines
    assert f"  {specs[1]['run_id']}: ✗ Non-finite" in lines and f"  {specs[2]['run_id']}: ✗ Non-finite" in lines


def test_make_compare_names_the_side_that_went_non_finite(results: Path, tmp_path: Path):
    baseline = tmp_path / "baseline"
    write_matrix(baseline, SPECS)
    for s in SPECS:
        _succeed(baseline, s)
    before = tree_digest(results)
    script = [str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "scripts" / "compare.py")]
    out = tmp_path / "out"
    proc = subprocess.run(script + [str(baseline), str(results), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert tree_digest(results) == before
    for text in (proc.stdout, (out / "compare.txt").read_text(), (out / "compare.md").read_text()):
        lines = text.splitlines()
        best = {s["run_id"]: next(line for line in lines if s["run_id"] in line and "Best Acc" in line)
                for s in (DIVERGED, CRASHED, OK)}
        assert best[DIVERGED["run_id"]].rstrip(" |").endswith("not measured on both sides (B: ✗ Non-finite)")
        assert best[CRASHED["run_id"]].rstrip(" |").endswith("not measured on both sides (B: ✗ Failed)")
        assert "✗" not in best[OK["run_id"]]
        section = text[text.index("Runs that did not succeed (5 runs)"):text.index("Only in A")]
        assert f"B: {DIVERGED['run_id']}: ✗ Non-finite: `{NAN_LOSS}`" in section  # what, and at which step
        assert f"B: {DIVERGED_DDP['run_id']}: ✗ Non-finite: `{NAN_SCORE}`" in section
        for s in (CRASHED, SAYS_YES, SAYS_ONE):
            assert f"B: {s['run_id']}: ✗ Failed" in section
        assert "A: " not in section
