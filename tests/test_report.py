"""Reports from a result directory: lib/results reads it, lib/report writes
all_results.json, summary_report.txt and report.md, scripts/report.py wraps both.

The fixture writes a small directory in the format of docs/results-format.md:
successful runs, a failed run with a log tail, a run whose metrics.json is
corrupt and a run of matrix.json that never started. The summary table is
read back through the independent reader tests/fixtures/summary_rows.py.
"""
from __future__ import annotations

import importlib.util
import json
import math
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import result_dirs
from result_dirs import seeded_matrix

from lib.errors import UserError
from lib.report.graphs import Graph
from lib.report.html import render_html
from lib.report.markdown import Image
from lib.report.stats import NA
from lib.report.summary import write_reports
from lib.results.reader import EXTRA_FIELDS, ROW_FIELDS, load_results

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("summary_rows", ROOT / "tests/fixtures/summary_rows.py")
summary_rows = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(summary_rows)

# run_id -> (optimizer, pruning, variant, target, status, metrics, memory (mean, peak) or None)
RUNS = {
    "lenet5_adam_none": ("adam", "none", None, 0.0, "success",
                         dict(best=98.52, final=98.31, sparsity=0.0, train=4.0, infer=1.0), (812.4, 901.0)),
    "lenet5_adam_magnitude_70": ("adam", "magnitude", None, 70.0, "success",
                                 dict(best=98.1, final=97.95, sparsity=69.98, train=4.25, infer=0.3002),
                                 (830.1, 925.5)),
    "lenet5_adamwprune_none": ("adamwprune", "none", None, 0.0, "success",
                               dict(best=98.6, final=98.47, sparsity=0.0, train=4.0, infer=1.0), (800.7, 890.6)),
    "lenet5_adamwprune_state_70": ("adamwprune", "state", "bitter0", 70.0, "success",
                                   dict(best=98.4, final=98.22, sparsity=70.01, train=None, infer=0.2999),
                                   (790.0, 880.3)),
    "lenet5_sgd_movement_70": ("sgd", "movement", None, 70.0, "failed", None, (512.0, 640.0)),
    "lenet5_adamw_magnitude_70": ("adamw", "magnitude", None, 70.0, "success", "corrupt", (845.2, 930.9)),
    "lenet5_adamw_none": ("adamw", "none", None, 0.0, None, None, None),  # never started
}
LOG_TAIL = [f"line {i}" for i in range(1, 8)] + ["RuntimeError: CUDA out of memory"]
MEMORY_HEADERS = ("GPU Mean (MiB)", "GPU Max (MiB)")


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def _spec_of(run_id: str, run: tuple, model: str = "lenet5") -> dict:
    optimizer, pruning, variant, target = run[:4]
    return {"run_id": run_id, "model": model, "optimizer": optimizer, "pruning": pruning,
            "variant": variant, "target_sparsity_pct": target, "seed": 1, "hyperparams": {"epochs": 3}}


def _metrics(run_id: str, m: dict, task: str = "classification") -> dict:
    return {"run_id": run_id, "model": run_id.split("_")[0], "task": task,
            "epochs": [{"epoch": 1, "test_accuracy_pct": m["best"] - 1.0},
                       {"epoch": 2, "test_accuracy_pct": m["best"]},
                       {"epoch": 3, "test_accuracy_pct": m["final"]}],
            "best_accuracy_pct": m["best"], "final_accuracy_pct": m["final"],
            "sparsity": {"target_pct": 70.0, "global_pct": m["sparsity"]},
            "memory": {"training_multiplier": m["train"], "inference_multiplier": m["infer"]},
            "wall_time_s": 60.5, **m.get("extra", {})}


def _gpu_stats(memory: tuple, device: str) -> dict:
    return {"schema_version": 1, "device": device, "source": "nvml" if device == "cuda" else "rss",
            "summary": {"n_samples": 10, "mean_mib": memory[0], "peak_mib": memory[1]}}


def make_results(root: Path, runs: dict = RUNS, device: str = "cuda", matrix: bool = True,
                 model: str = "lenet5", task: str = "classification") -> Path:
    """A result directory holding `runs` in the format of docs/results-format.md."""
    specs = [_spec_of(run_id, run, model) for run_id, run in runs.items()]
    if matrix:
        _write(root / "matrix.json", {"schema_version": 1, "config_name": "test", "runs": specs})
    for spec, (run_id, (*_, status, metrics, memory)) in zip(specs, runs.items()):
        if status is None:
            continue
        run_dir = root / run_id
        _write(run_dir / "run.json", {"schema_version": 1, "spec": spec})
        if metrics == "corrupt":
            _write(run_dir / "metrics.json", '{"best_accuracy_pct": 9')
        elif metrics:
            _write(run_dir / "metrics.json", _metrics(run_id, metrics, task))
        if memory:
            _write(run_dir / "gpu_stats.json", _gpu_stats(memory, device))
        result = {"schema_version": 1, "run_id": run_id, "status": status, "metrics": {}}
        if status != "success":
            result["log_tail"] = LOG_TAIL
        _write(run_dir / "result.json", result)
    return root


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return make_results(tmp_path / "20250101_000000")


def _table_lines(text: str) -> dict[str, str]:
    return {line.split()[0]: line for line in text.splitlines() if line.startswith("lenet5_")}


def _isnan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def test_table_has_contract_columns_and_row_per_run(results: Path) -> None:
    table = load_results(results).set_index("run_id", drop=False)
    assert list(table.columns) == list(ROW_FIELDS) + list(EXTRA_FIELDS)
    assert set(table.index) == set(RUNS) and table.attrs["layout"] == "own"
    row = table.loc["lenet5_adam_magnitude_70"]
    assert (row.sparsity_pct, row.target_sparsity_pct, row.memory_device) == (69.98, 70.0, "cuda")
    assert row.metric_curve == {"axis": "epoch", "points": [[1.0, 97.1], [2.0, 98.1], [3.0, 97.95]]}
    assert table.loc["lenet5_adamw_none", "status"] == "missing"
    assert table.loc["lenet5_sgd_movement_70", "log_tail"] == LOG_TAIL[-5:]


def test_corrupt_metrics_is_a_warning_not_an_error(results: Path, capsys) -> None:
    table = load_results(results).set_index("run_id")
    row = table.loc["lenet5_adamw_magnitude_70"]
    assert row.status == "success" and math.isnan(row.best_accuracy_pct) and math.isnan(row.sparsity_pct)
    assert row.memory_mean_mib == 845.2  # the other files of the run still count
    assert any("metrics.json" in w for w in row.warnings)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "lenet5_adamw_magnitude_70/metrics.json: not valid JSON" in warnings[0]


def test_all_results_json_rows_follow_the_schema(reports: Path) -> None:
    data = json.loads((reports / "all_results.json").read_text(),
                      parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert data["schema_version"] == 1 and data["source"] == str(reports)
    rows = {row["run_id"]: row for row in data["runs"]}
    assert set(rows) == set(RUNS)
    assert all(list(row) == list(ROW_FIELDS) for row in rows.values())
    good = rows["lenet5_adam_magnitude_70"]
    assert (good["best_accuracy_pct"], good["sparsity_pct"], good["memory_peak_mib"]) == (98.1, 69.98, 925.5)
    assert (good["seed"], good["memory_source"], good["training_multiplier"]) == (1, "nvml", 4.25)
    assert rows["lenet5_adamw_magnitude_70"]["best_accuracy_pct"] is None
    assert rows["lenet5_adamwprune_state_70"]["training_multiplier"] is None
    assert rows["lenet5_adamw_none"]["status"] == "missing"


def test_every_summary_figure_equals_its_source(reports: Path) -> None:
    parsed = {row["id"]: row for row in summary_rows.rows((reports / "summary_report.txt").read_text())}
    assert set(parsed) == set(RUNS)
    for run_id, (*_, metrics, memory) in RUNS.items():
        columns = parsed[run_id]["columns"]
        expected = {}
        if isinstance(metrics, dict):
            expected = {"Best Acc (%)": metrics["best"], "Final Acc (%)": metrics["final"],
                        "Sparsity (%)": metrics["sparsity"]}
            assert parsed[run_id]["accuracy"] == pytest.approx(metrics["best"])
            assert parsed[run_id]["sparsity"] == pytest.approx(metrics["sparsity"])
        if memory:
            expected.update(zip(MEMORY_HEADERS, memory))
        assert columns == pytest.approx(expected), run_id


def test_summary_layout_and_order(reports: Path) -> None:
    text = (reports / "summary_report.txt").read_text()
    head = text.splitlines()
    assert head[0] == "Test Matrix Summary Report" and head[1].startswith("Generated: ")
    assert head[2] == f"From: {reports}" and head[3] == "=" * 80
    for line in ("Total tests: 7", "Successful: 5", "Failed: 1", "Missing: 1", "Best Performers:",
                 "Top 20 by Best Acc:", "Best by Optimizer:", "Memory Efficiency Analysis:", "Failed Runs:"):
        assert line in head, line
    header = next(line for line in head if "Test ID" in line)
    for name in ("Best Acc (%)", "Final Acc (%)", "Sparsity (%)", *MEMORY_HEADERS, "Status"):
        assert name in header
    order = [run_id for run_id in _table_lines(text)][:4]
    assert order == ["lenet5_adamwprune_none", "lenet5_adam_none",
                     "lenet5_adamwprune_state_70", "lenet5_adam_magnitude_70"]
    assert "  adamwprune: lenet5_adamwprune_none (98.60%)" in head
    assert "✓ Success" in text and "✗ Failed" in text and "… Missing" in text


def test_measured_sparsity_and_na_for_missing_figures(reports: Path) -> None:
    text = (reports / "summary_report.txt").read_text()
    lines = _table_lines(text)
    assert "69.98%" in lines["lenet5_adam_magnitude_70"] and "70.00" not in lines["lenet5_adam_magnitude_70"]
    for run_id in ("lenet5_adamw_magnitude_70", "lenet5_sgd_movement_70", "lenet5_adamw_none"):
        assert lines[run_id].count("n/a") >= 3, run_id
    assert "0.0000" not in text


def test_efficiency_uses_measured_multipliers(reports: Path) -> None:
    text = (reports / "summary_report.txt").read_text()
    assert "weights + gradients + optimizer state + masks" in text
    assert "3.03x" not in text
    score = 98.1 / (830.1 / 100)
    assert (f"Best Acc: 98.10%, GPU Mean: 830.1 MiB, Training Memory: 4.25x weights, "
            f"Efficiency Score: {score:.2f}") in text
    assert "Training Memory: not measured" in text  # adamwprune_state_70 has no multiplier
    assert "Inference Memory: 0.30x weights" in text


def test_failed_runs_show_last_log_lines(reports: Path) -> None:
    text = (reports / "summary_report.txt").read_text()
    section = text[text.index("Failed Runs:"):]
    assert "lenet5_sgd_movement_70: ✗ Failed" in section
    assert "| RuntimeError: CUDA out of memory" in section and "| line 4" in section
    assert "| line 3" not in section
    assert "lenet5_adamw_none" in text[text.index("Missing Runs"):]


def _md_row(md: str, config: str) -> dict[str, str]:
    header = next(line for line in md.splitlines() if line.startswith("| Configuration |"))
    row = next(line for line in md.splitlines() if line.startswith(f"| `{config}` |"))
    return dict(zip([c.strip() for c in header.strip("|").split("|")], [c.strip() for c in row.strip("|").split("|")]))


def test_report_md_has_a_table_per_model_with_dense_delta(reports: Path) -> None:
    md = (reports / "report.md").read_text()
    assert "## lenet5" in md and "### Ranking by Best Acc" in md
    state = _md_row(md, "lenet5_adamwprune_state_70")
    assert (state["Best Acc (%)"], state["Final Acc (%)"], state["Sparsity (%)"]) == ("98.40", "98.22", "70.01%")
    assert state["Δ dense"] == "-0.20" and state["n"] == "1" and state["Status"] == "✓ Success"
    assert state["Efficiency (GPU)"] == f"{98.4 / 7.9:.2f}" and state["GPU Mean (MiB)"] == "790.0"
    assert _md_row(md, "lenet5_adam_none")["Δ dense"] == "baseline"
    adamw = _md_row(md, "lenet5_adamw_magnitude_70")
    assert adamw["Best Acc (%)"] == "n/a" and adamw["Δ dense"] == "n/a"  # no metrics, no dense adamw baseline
    assert "one per configuration, so no error bars" in md


def test_cpu_memory_is_labelled_rss(tmp_path: Path) -> None:
    root = make_results(tmp_path / "cpu", device="cpu")
    write_reports(load_results(root), root, "cpu", graphs=False)
    text = (root / "summary_report.txt").read_text()
    assert "Memory: CPU process resident set size (no GPU); not GPU memory" in text
    assert "GPU Mean" not in text
    row = {r["id"]: r for r in summary_rows.rows(text)}["lenet5_adam_none"]
    assert row["columns"]["RSS Avg (MiB)"] == 812.4 and row["columns"]["RSS Max (MiB)"] == 901.0


def test_mixed_memory_devices_get_neutral_labels(results: Path) -> None:
    stats = results / "lenet5_adam_none" / "gpu_stats.json"
    _write(stats, _gpu_stats((812.4, 901.0), "cpu"))
    write_reports(load_results(results), results, "mixed", graphs=False)
    text = (results / "summary_report.txt").read_text()
    assert "Mem Avg (MiB)" in text and "not comparable" in text
    assert "adam (cpu)" in text and "adam (cuda)" in text
    assert "RSS Mean: 812.4 MiB" in text and "GPU Mean: 830.1 MiB" in text


def test_language_model_runs_report_perplexity(tmp_path: Path) -> None:
    runs = {f"gpt2_adamwprune_bitter{v}_state_50": ("adamwprune", "state", f"bitter{v}", 50.0, "success",
                                                     dict(best=0.0, final=0.0, sparsity=50.02, train=3.25,
                                                          infer=0.5, extra={"best_perplexity": p,
                                                                            "final_perplexity": p + 1}),
                                                     (25311.5, 25344.0))
            for v, p in ((7, 41.27), (1, 44.9))}
    root = make_results(tmp_path / "lm", runs, model="gpt2", task="language_modeling")
    for run_id in runs:  # language models report no accuracy
        metrics = json.loads((root / run_id / "metrics.json").read_text())
        del metrics["best_accuracy_pct"], metrics["final_accuracy_pct"]
        _write(root / run_id / "metrics.json", metrics)
    write_reports(load_results(root), root, "lm", graphs=False)
    text = (root / "summary_report.txt").read_text()
    header = next(line for line in text.splitlines() if "Test ID" in line)
    assert "Best PPL" in header and "Acc" not in header
    parsed = summary_rows.rows(text)
    assert [r["id"] for r in parsed] == ["gpt2_adamwprune_bitter7_state_50", "gpt2_adamwprune_bitter1_state_50"]
    assert parsed[0]["perplexity"] == 41.27 and parsed[0]["sparsity"] == 50.02
    rows = json.loads((root / "all_results.json").read_text())["runs"]
    assert rows[0]["best_perplexity"] == 41.27 and rows[0]["best_accuracy_pct"] is None


def test_run_folders_are_read_without_matrix(tmp_path: Path) -> None:
    root = make_results(tmp_path / "nomatrix", matrix=False)
    table = load_results(root)
    assert set(table["run_id"]) == set(RUNS) - {"lenet5_adamw_none"}
    assert set(table["optimizer"]) == {"adam", "adamw", "adamwprune", "sgd"}


@pytest.mark.parametrize("make", [lambda p: p / "absent", lambda p: p])
def test_no_runs_is_a_user_error(tmp_path: Path, make) -> None:
    with pytest.raises(UserError):
        load_results(make(tmp_path))


def test_cli_writes_reports_and_fails_cleanly(results: Path, tmp_path: Path) -> None:
    script = [sys.executable, str(ROOT / "scripts/report.py")]
    out = tmp_path / "out"
    done = subprocess.run(script + [str(results), "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(out / n) for n in
                                   ("all_results.json", "summary_report.txt", "report.md", "report.html", "graphs")]
    assert done.stderr.count("warning: ") == 1
    failed = subprocess.run(script + [str(tmp_path / "absent")], capture_output=True, text=True)
    assert failed.returncode == 2 and failed.stderr.startswith("error: ") and "Traceback" not in failed.stderr


def test_timeout_is_counted_as_failed_and_named(results: Path) -> None:
    result = results / "lenet5_sgd_movement_70" / "result.json"
    _write(result, {**json.loads(result.read_text()), "status": "timeout"})
    write_reports(load_results(results), results, "timeout", graphs=False)
    text = (results / "summary_report.txt").read_text()
    assert "Failed: 1 (1 timeout)" in text.splitlines()
    assert "lenet5_sgd_movement_70: ✗ Timeout" in text


# --- a ci-like matrix in the layout lib/train/harness.py and lib/run/runner.py write -------------------------

def _ci_dir(root: Path, seeds: tuple[int, ...] = (1,)) -> Path:
    seeded_matrix(root, seeds=seeds)
    failed = result_dirs.spec("lenet5", "adamw", "movement", 50.0, seed=1, tag_seed=len(seeds) > 1)
    result_dirs.write_run(root, failed, "failed", None, result_dirs.gpu_stats(120.0, 150.0, "cpu"),
                          log_tail=["Traceback (most recent call last):", "RuntimeError: boom"])
    matrix = json.loads((root / "matrix.json").read_text())
    result_dirs.write_matrix(root, matrix["runs"] + [failed])
    return root


def test_every_summary_figure_matches_metrics_json_of_a_ci_run(tmp_path: Path) -> None:
    root = _ci_dir(tmp_path / "ci")
    write_reports(load_results(root), root, "ci", graphs=False)
    parsed = {row["id"]: row for row in summary_rows.rows((root / "summary_report.txt").read_text())}
    run_dirs = [p for p in root.iterdir() if (p / "result.json").is_file()]
    assert set(parsed) == {p.name for p in run_dirs} and len(parsed) == 7
    for run_dir in run_dirs:
        columns = parsed[run_dir.name]["columns"]
        stats = json.loads((run_dir / "gpu_stats.json").read_text())["summary"]
        expected = {"RSS Avg (MiB)": stats["mean_mib"], "RSS Max (MiB)": stats["peak_mib"]}
        if (run_dir / "metrics.json").is_file():
            metrics = json.loads((run_dir / "metrics.json").read_text())
            expected.update({"Best Acc (%)": round(metrics["best_accuracy_pct"], 2),
                             "Final Acc (%)": round(metrics["final_accuracy_pct"], 2),
                             "Sparsity (%)": round(metrics["sparsity"]["global_pct"], 2)})
        assert columns == pytest.approx(expected, abs=0.005), run_dir.name
    text = (root / "summary_report.txt").read_text()
    assert "| RuntimeError: boom" in text and "Failed: 1" in text


def test_language_model_report_shows_perplexity_never_zero_accuracy(tmp_path: Path) -> None:
    root = tmp_path / "gpt2"
    specs = [result_dirs.spec("gpt2", "adamwprune", "state", 50.0, variant=v) for v in ("bitter7", "bitter1")]
    specs.append(result_dirs.spec("gpt2", "adamw", "none", 0.0))
    result_dirs.write_matrix(root, specs)
    for spec, losses, sparsity in zip(specs, ([4.0, 3.5, 3.72], [4.1, 3.8, 3.9], [4.0, 3.4, 3.45]),
                                      (50.02, 49.98, 0.0)):
        result_dirs.write_run(root, spec, "success", result_dirs.lm_metrics(spec, losses, sparsity),
                              result_dirs.gpu_stats(25311.5, 25344.0))
    write_reports(load_results(root), root, "gpt2")
    text = (root / "summary_report.txt").read_text()
    header = next(line for line in text.splitlines() if "Test ID" in line)
    assert "Best PPL" in header and "Acc" not in header and "0.0000" not in text
    rows = {r["id"]: r for r in summary_rows.rows(text)}
    bitter7 = rows["gpt2_adamwprune_bitter7_state_50"]
    assert bitter7["perplexity"] == pytest.approx(math.exp(3.5), abs=0.005) and bitter7["sparsity"] == 50.02
    assert list(rows)[0] == "gpt2_adamw_none"  # lowest perplexity first
    md = (root / "report.md").read_text()
    assert "Best PPL" in md and "Efficiency" not in md.split("### All configurations")[1].splitlines()[2]
    assert "nan" not in md.lower() and _md_row(md, "gpt2_adamw_none")["Pruning"] == "none"
    assert _md_row(md, "gpt2_adamwprune_bitter7_state_50")["Δ dense"] == NA  # no dense adamwprune run
    assert (root / "graphs" / "gpt2_perplexity_evolution.png").is_file()
    data = json.loads((root / "all_results.json").read_text())["runs"]
    assert all(r["best_accuracy_pct"] is None and r["best_perplexity"] > 1 for r in data)


def test_three_seeds_give_mean_std_and_n_in_report_md(tmp_path: Path) -> None:
    root = _ci_dir(tmp_path / "seeds", seeds=(1, 2, 3))
    table = load_results(root)
    write_reports(table, root, "seeds", graphs=False)
    md = (root / "report.md").read_text()
    dense = table[table["run_id"].str.startswith("lenet5_sgd_none_")]
    mean, std = dense["best_accuracy_pct"].mean(), dense["best_accuracy_pct"].std()
    row = _md_row(md, "lenet5_sgd_none")
    assert row["Best Acc (%)"] == f"{mean:.2f} ± {std:.2f}" and row["n"] == "3" and row["Status"] == "3/3 ✓"
    assert "within noise" in md and "mean ± sample standard deviation" in md
    assert f"`lenet5_sgd_none`: {mean:.2f} ± {std:.2f}% (n=3)" in md
    text = (root / "summary_report.txt").read_text()
    assert len(summary_rows.rows(text)) == 19  # still one row per run
    assert "lenet5_sgd_none_s2" in {r["id"] for r in summary_rows.rows(text)}


def test_report_html_is_one_self_contained_file(tmp_path: Path) -> None:
    root = _ci_dir(tmp_path / "html")
    write_reports(load_results(root), root, "html")
    page = (root / "report.html").read_text()
    graphs = sorted(p.stem for p in (root / "graphs").glob("*.png"))
    # every graph inline as SVG, no XML prolog mid-page, no PNG needed
    assert page.count('<figure>\n<svg role="img" aria-label="') == len(graphs) >= 6
    assert "<?xml" not in page and "<!DOCTYPE svg" not in page and "data:image/png" not in page
    ids = re.findall(r'\sid="([^"]+)"', page)  # the graphs share glyph ids until prefixed
    assert len(ids) == len(set(ids)) and set(re.findall(r'href="#([^"]+)"', page)) <= set(ids)
    assert "<table>" in page and "<code>lenet5_sgd_none</code>" in page
    assert not re.search(r'(src|href)="(?!data:|#)', page)  # nothing loaded from beside it
    assert sorted(p.stem for p in (root / "graphs").glob("*.svg")) == graphs


def test_report_html_falls_back_to_png_without_svg() -> None:
    blocks = [Image("A graph", "g")]
    page = render_html(blocks, "t", [Graph("g", "A graph", b"\x89PNG-bytes", "")])
    assert 'src="data:image/png;base64,' in page and "<svg" not in page


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the graph workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def test_sixty_runs_are_reported_in_under_ten_seconds(tmp_path: Path) -> None:
    root = seeded_matrix(tmp_path / "sixty", optimizers=("sgd", "adam", "adamw", "adamwspam", "adamwadv"),
                         sparsities=(50, 70, 90), seeds=(1, 2, 3), samples=2000, epochs=10)
    start, cpu = time.perf_counter(), _cpu_seconds()
    paths = write_reports(load_results(root), root, "sixty")
    elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    assert len(json.loads(paths[0].read_text())["runs"]) == 60
    assert len(list((root / "graphs").glob("*.png"))) == 7 and paths[-1] == root / "graphs"  # make report says so
    # The work itself, CPU seconds over all processes, bounds the wall time on an
    # idle machine (figures are drawn in parallel); wall time on a shared
    # machine also counts everybody else's work, so it only gets a loose bound.
    assert cpu < 10 and elapsed < 30, f"{cpu:.1f} s CPU, {elapsed:.1f} s wall"


def test_training_memory_shows_every_term_the_multiplier_counts(tmp_path: Path) -> None:
    """docs/results-format.md: training = weights + gradients + optimizer state + masks + pruning state,
    over the weight bytes; movement keeps its accumulated scores (pruning state), so its row must add up
    only with that column."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from lib.report.graphs import contexts, training_memory

    root = tmp_path / "movement"
    s = result_dirs.spec("lenet5", "adamw", "movement", 70.0)
    weights = 2 ** 20  # 1 MiB, so each column in MiB is its multiple of the weights
    terms = {"weights_bytes": weights, "gradients_bytes": weights, "optimizer_state_bytes": 2 * weights,
             "mask_bytes": weights // 4, "pruning_state_bytes": weights}
    metrics = result_dirs.classifier_metrics(s, [90.0, 91.0], 69.9, weights=weights)
    metrics["memory"] = {**terms, "training_multiplier": sum(terms.values()) / weights,
                         "inference_multiplier": 0.3}  # 5.25x
    result_dirs.write_matrix(root, [s])
    result_dirs.write_run(root, s, "success", metrics, result_dirs.gpu_stats(300.0, 350.0, "cpu"))
    write_reports(load_results(root), root, "movement", graphs=False)
    md = (root / "report.md").read_text()
    header, _, row = md.split("### Training memory")[1].split("\n\n")[2].splitlines()[:3]
    headers, cells = [h.strip() for h in header.split("|")[1:-1]], [c.strip() for c in row.split("|")[1:-1]]
    assert "Pruning state (MiB)" in headers
    columns = [float(c) for h, c in zip(headers, cells) if h.endswith("(MiB)")]
    assert sum(columns) == pytest.approx(5.25) and cells[headers.index("Training (× weights)")] == "5.25×"
    for text in (md, (root / "summary_report.txt").read_text()):
        assert "weights + gradients + optimizer state + masks + pruning state" in text and "movement" in text
    figure = training_memory(contexts(load_results(root))[0])
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    title = figure.texts[0].get_window_extent(canvas.get_renderer())
    assert "pruning state" in figure.texts[0].get_text()
    assert figure.bbox.x0 <= title.x0 and title.x1 <= figure.bbox.x1  # the whole title is on the page


def test_stability_measures_the_final_figure_from_the_best_at_target(tmp_path: Path) -> None:
    """BEST_NOTE: a pruned run's best is taken at its target sparsity, never before pruning reached it;
    the Stability table's best − final uses that best (ci-quick's sgd_magnitude_90: 43.0% at epoch 1,
    at 20% sparsity, best at 90% 18.00, final 15.60: 2.40, not 27.40)."""
    root = tmp_path / "stability"
    s = result_dirs.spec("lenet5", "sgd", "magnitude", 90.0)
    metrics = result_dirs.classifier_metrics(s, [43.0, 18.0, 15.6], 90.0)
    metrics.update(best_accuracy_pct=18.0, best_before_target={"accuracy_pct": 43.0, "epoch": 1})
    result_dirs.write_matrix(root, [s])
    result_dirs.write_run(root, s, "success", metrics, result_dirs.gpu_stats(300.0, 350.0, "cpu"))
    write_reports(load_results(root), root, "stability", graphs=False)
    stability = (root / "report.md").read_text().split("### Stability")[1].split("###")[0]
    row = next(line for line in stability.splitlines() if "lenet5_sgd_magnitude_90" in line)
    assert row.split("|")[-2].strip() == "2.40"


def test_efficiency_on_cpu_says_it_is_process_rss(tmp_path: Path) -> None:
    """The efficiency score divides by the measured memory; on CPU that is process RSS, mostly the torch
    runtime, and every report must say so rather than let it pass as model memory."""
    root = seeded_matrix(tmp_path / "cpu", seeds=(1,), device="cpu")
    write_reports(load_results(root), root, "cpu", graphs=False)
    md, summary = (root / "report.md").read_text(), (root / "summary_report.txt").read_text()
    assert "| Efficiency (RSS) |" in md
    efficiency = next(line for line in md.splitlines() if line.startswith("- Efficiency:"))
    assert "process RSS" in efficiency and "torch runtime" in efficiency
    score = next(line for line in summary.splitlines() if line.startswith("Efficiency score ="))
    assert "process RSS" in score and "torch runtime" in score


def test_curve_points_keep_every_value_and_warning_of_the_plain_conversion(tmp_path: Path) -> None:
    """RunFiles.points takes finite floats and float-sized integers directly (a curve may hold millions of
    records, converted in a third of the time with the garbage collector held off); every other value
    still goes through as_float: NaN and one warning each, as before."""
    import gc

    from lib.results.run_files import RunFiles

    values = [1, 2.5, -0.0, 5e-324, True, 10**400, -10**308, None, "9", [1], math.inf, math.nan, 2**53 + 1]
    records = [{"x": i, "y": v} for i, v in enumerate(values)] + ["not a record", {"x": 99}]
    fast, plain = RunFiles(tmp_path, []), RunFiles(tmp_path, [])
    points = fast.points(records, ("x", "y"), "metrics.json")
    expected = [[plain.as_float(r.get(k), "metrics.json", k) for k in ("x", "y")]
                for r in records if isinstance(r, dict)]
    assert [[repr(v) for v in row] for row in points] == [[repr(v) for v in row] for row in expected]
    assert fast.warnings == plain.warnings and len(fast.warnings) == 6
    assert gc.isenabled()
    handed_over = list(records)  # consume: the caller's list, each record dropped once converted
    consumed = RunFiles(tmp_path, []).points(handed_over, ("x", "y"), "metrics.json", consume=True)
    assert [[repr(v) for v in row] for row in consumed] == [[repr(v) for v in row] for row in points]
    assert handed_over == [None] * len(records)
