"""Upstream AdamWPrune result directories: lib/results/upstream reads them into the
same table as ours, and `make report` regenerates their reports elsewhere.

The fixture is a trimmed copy of ../shared/fixtures/legacy (see its README):
all_results.json in full, two runs with a thinned gpu_stats json, three with
only the AMD summary text (memory in percent). Other upstream layouts (empty
all_results.json with training_metrics.json per run, GPT-2 runs) are written
by the tests.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import make, own_lines
from result_dirs import upstream_lm_dir

from lib.errors import UserError
from lib.report.summary import default_out_dir, write_reports
from lib.results.reader import load_results
from lib.results.run_files import parse_run_id

ROOT = Path(__file__).resolve().parent.parent
LEGACY = ROOT / "tests/fixtures/legacy/test_matrix_results_20250903_180836"
_spec = importlib.util.spec_from_file_location("summary_rows", ROOT / "tests/fixtures/summary_rows.py")
summary_rows = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(summary_rows)


def tree_digest(root: Path) -> dict[str, str]:
    """Path -> sha256 of every file under root, plus the folders themselves."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def legacy_reports(tmp_path_factory) -> tuple[Path, dict, str]:
    """`make report` of the fixture into a temp folder; the fixture's digest before it and make's stderr."""
    out = tmp_path_factory.mktemp("legacy_out")
    before = tree_digest(LEGACY)
    done = make(ROOT, "report", f"RESULTS={LEGACY}", f"OUT={out}")
    assert done.returncode == 0, done.stderr
    return out, before, done.stderr


@pytest.mark.slow  # make report (legacy_reports)
def test_make_report_writes_every_report_and_leaves_the_upstream_tree_unchanged(legacy_reports) -> None:
    out, before, _ = legacy_reports
    assert tree_digest(LEGACY) == before
    for name in ("summary_report.txt", "report.md", "report.html", "all_results.json"):
        assert (out / name).is_file(), name
    graphs = {p.name for p in (out / "graphs").iterdir()}
    for stem in ("accuracy_evolution", "model_comparison", "gpu_memory_comparison", "gpu_memory_timeline",
                 "memory_vs_accuracy", "sparsity_schedule"):
        assert {f"resnet18_{stem}.png", f"resnet18_{stem}.svg"} <= graphs, stem


@pytest.mark.slow  # make report (legacy_reports)
def test_summary_rows_match_upstream_accuracies_and_measured_sparsities(legacy_reports) -> None:
    out, _, _ = legacy_reports
    upstream = {r["test_id"]: r for r in json.loads((LEGACY / "all_results.json").read_text())}
    text = (out / "summary_report.txt").read_text()
    rows = {r["id"]: r for r in summary_rows.rows(text)}
    assert set(rows) == set(upstream)
    for run_id, entry in upstream.items():
        assert rows[run_id]["accuracy"] == pytest.approx(entry["best_accuracy"], abs=0.005)
        assert rows[run_id]["columns"]["Final Acc (%)"] == pytest.approx(entry["final_accuracy"], abs=0.005)
        assert rows[run_id]["sparsity"] == pytest.approx(100 * entry["final_sparsity"], abs=0.005)
    assert "From: " + str(LEGACY) in text and "0.0000" not in text


@pytest.mark.slow  # make report (legacy_reports)
def test_memory_from_samples_or_unavailable_from_percent_only_summaries(legacy_reports) -> None:
    out, _, stderr = legacy_reports
    runs = {r["run_id"]: r for r in json.loads((out / "all_results.json").read_text())["runs"]}
    samples = json.loads(next((LEGACY / "resnet18_adam_none").glob("gpu_stats_*0853.json")).read_text())
    used = [s["memory_used"] for s in samples]
    dense = runs["resnet18_adam_none"]
    assert dense["memory_mean_mib"] == pytest.approx(sum(used) / len(used))
    assert dense["memory_peak_mib"] == max(used) and dense["memory_source"] == "upstream-amd"
    summary_only = runs["resnet18_adam_movement_70"]
    assert summary_only["memory_mean_mib"] is None and summary_only["memory_source"] == "upstream-summary"
    assert "memory given only in percent of the device (mean 3.0%, peak 3.0%)" in stderr
    assert all(r["training_multiplier"] is None for r in runs.values())  # upstream measured no tensor bytes


@pytest.mark.slow  # make report (legacy_reports)
def test_report_md_compares_with_the_dense_baseline_of_the_same_optimizer(legacy_reports) -> None:
    out, _, _ = legacy_reports
    md = (out / "report.md").read_text()
    line = next(l for l in md.splitlines() if l.startswith("| `resnet18_adam_magnitude_70` |"))
    assert f"| {88.11 - 90.51:+.2f} |" in line
    assert "Not measured: no run of this model recorded tensor byte counts" in md


def test_upstream_directories_are_never_the_default_output(tmp_path: Path) -> None:
    assert default_out_dir(LEGACY, "upstream", tmp_path) == tmp_path / f"{LEGACY.name}-report"
    own = tmp_path / "20250101_000000"
    assert default_out_dir(own, "own", tmp_path / "elsewhere") == own


def _upstream_dir(root: Path) -> Path:
    """all_results.json empty; each run's figures in training_metrics.json, ResNet-50's final accuracy not a number."""
    return upstream_lm_dir(root, resnet_final_accuracy="high")


def test_training_metrics_json_fills_an_empty_all_results(tmp_path: Path, capsys) -> None:
    table = load_results(_upstream_dir(tmp_path / "up")).set_index("run_id")
    assert table.attrs["layout"] == "upstream"
    resnet = table.loc["resnet50_sgd_magnitude_90"]
    assert (resnet.best_accuracy_pct, resnet.final_accuracy_pct) == (70.5, 70.25)  # final from the curve
    assert resnet.sparsity_pct == pytest.approx(90.01) and resnet.target_sparsity_pct == 90.0
    assert resnet.sparsity_schedule["axis"] == "epoch" and resnet.wall_time_s == 99.0
    gpt2 = table.loc["gpt2_adamwprune_bitter7_state_50"]
    assert (gpt2.task, gpt2.variant, gpt2.pruning) == ("language_modeling", "bitter7", "state")
    assert gpt2.best_perplexity == pytest.approx(math.exp(3.6)) and math.isnan(gpt2.best_accuracy_pct)
    assert gpt2.sparsity_pct == pytest.approx(49.98) and gpt2.metric_curve["points"][1][0] == 100
    assert (gpt2.memory_mean_mib, gpt2.memory_peak_mib) == (25311.5, 25344.0)
    err = capsys.readouterr().err
    assert "resnet50_sgd_magnitude_90/gpu_stats_*: no gpu_stats json" in err
    assert "resnet50_sgd_magnitude_90/training_metrics.json: final_accuracy is not a number ('high')" in err


def test_upstream_language_model_reports_perplexity(tmp_path: Path) -> None:
    root = _upstream_dir(tmp_path / "up")
    out = tmp_path / "out"
    write_reports(load_results(root), out, "up", graphs=False)
    text = (out / "summary_report.txt").read_text()
    rows = {r["id"]: r for r in summary_rows.rows(text)}
    assert rows["gpt2_adamwprune_bitter7_state_50"]["perplexity"] == pytest.approx(math.exp(3.6), abs=0.005)
    assert rows["gpt2_adamwprune_bitter7_state_50"]["sparsity"] == pytest.approx(49.98)
    assert "0.0000" not in text and "## gpt2" in (out / "report.md").read_text()


def test_corrupt_all_results_is_a_warning_and_run_folders_still_count(tmp_path: Path, capsys) -> None:
    root = tmp_path / "copy"
    shutil.copytree(LEGACY, root)
    (root / "all_results.json").write_text('[{"model": "resnet18"')
    table = load_results(root)
    assert len(table) == 5 and set(table["status"]) == {"missing"}
    assert table["memory_mean_mib"].notna().sum() == 2  # the runs with a gpu_stats json
    assert "all_results.json: not valid JSON" in capsys.readouterr().err


@pytest.mark.slow  # runs make
def test_unknown_layout_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="not a result directory this version can read"):
        load_results(tmp_path)
    done = make(ROOT, "report", f"RESULTS={tmp_path}")
    ours = own_lines(done.stderr)
    assert done.returncode == 2 and len(ours) == 1 and ours[0].startswith(f"error: {tmp_path}: ")


@pytest.mark.parametrize("run_id, expected", [
    ("resnet18_adam_none", dict(model="resnet18", optimizer="adam", pruning="none", target_sparsity_pct=0.0)),
    ("resnet18_adam_none_0", dict(pruning="none", target_sparsity_pct=0.0, seed=None)),
    ("gpt2_adamwprune_bitter7_state_50_s3", dict(variant="bitter7", pruning="state", target_sparsity_pct=50.0,
                                                 seed=3)),
    ("lenet5_sgd_magnitude_92.5", dict(optimizer="sgd", pruning="magnitude", target_sparsity_pct=92.5)),
    ("mystery", dict(model=None, optimizer=None, pruning=None)),
])
def test_run_ids_are_taken_apart(run_id: str, expected: dict) -> None:
    cells = parse_run_id(run_id)
    assert {k: cells[k] for k in expected} == expected
