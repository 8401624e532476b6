"""Write the reports of one result table: all_results.json, summary_report.txt
(the seed-000 layout), report.md, report.html and graphs/.

Owns: summary_report.txt (one row per run, figures formatted as percent with
2 decimals, sparsity with a % sign, memory in MiB with 1 decimal, "n/a" for
anything not measured), all_results.json, and writing every report. It reads
nothing from disk (lib/results builds the table) and prints only measured
figures: no target sparsity, no theoretical memory multipliers. Everything is
rendered before anything is written, and each file is written atomically.
"""
from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from lib.errors import escaped
from lib.jsonio import SCHEMA_VERSION, write_json_atomic, write_text_atomic
from lib.names import check_no_links
from lib.provenance import git_commit, package_versions
from lib.report.graphs import Graph, render_graphs
from lib.report.html import render_html
from lib.report.labels import (BEST_NOTE, MIXED_MEMORY, PERPLEXITY, PRUNING_STATE_NOTE, TRAINING_TERMS,
                               MemoryLabels, Metric, efficiency_scores, memory_labels, non_finite_reason, run_kind, status_counts,
                               status_label, table_metrics)
from lib.report.markdown import markdown_blocks, render_markdown
from lib.report.stats import NA, configurations, fmt, has_seeds
from lib.results.reader import LM_FIELDS, NUMERIC_FIELDS, ROW_FIELDS
from lib.results.run_files import one_line

TOP_N = 20
RULE = "-" * 80
Column = tuple[str, Callable[[Any], str]]  # header, cell text from a row


def ranked(table: pd.DataFrame, column: str, descending: bool) -> pd.DataFrame:
    """Rows with a value in `column`, best first, ties by run ID."""
    return table.dropna(subset=[column]).sort_values(
        [column, "run_id"], ascending=[not descending, True], kind="stable")


def sort_runs(table: pd.DataFrame, metric: Metric) -> pd.DataFrame:
    """All rows by the metric, best first; unmeasured (missing, failed) last."""
    return table.sort_values([metric.best, "run_id"], ascending=[not metric.higher_is_better, True],
                             na_position="last", kind="stable")


def figure_columns(table: pd.DataFrame, memory: MemoryLabels) -> list[Column]:
    """The measured-figure columns of the results table: metric by task, sparsity, memory."""
    columns: list[Column] = []
    for metric in table_metrics(table):
        columns += [(metric.best_header, lambda r, m=metric: fmt(r[m.best], 2)),
                    (metric.final_header, lambda r, m=metric: fmt(r[m.final], 2))]
    # Measured sparsity with a % sign, so 0.50% is never read as a fraction.
    return columns + [("Sparsity (%)", lambda r: fmt(r["sparsity_pct"], 2, "%")),
                      (memory.mean_header, lambda r: fmt(r["memory_mean_mib"], 1)),
                      (memory.peak_header, lambda r: fmt(r["memory_peak_mib"], 1))]


def render_text_table(rows: pd.DataFrame, columns: list[Column]) -> list[str]:
    """Fixed-width table: first and last columns left-aligned, figures right-aligned,
    two spaces apart, so each figure sits under its header."""
    cells = [[cell(row) for _, cell in columns] for _, row in rows.iterrows()]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, (h, _) in enumerate(columns)]

    def line(values: list[str]) -> str:
        last = len(values) - 1
        return "  ".join(v.ljust(w) if i in (0, last) else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    header = line([h for h, _ in columns])
    body = [line(r) for r in cells]
    rule = "-" * max(len(text) for text in [header, *body])
    return [rule, header, rule, *body, rule]


def _header_lines(table: pd.DataFrame, source_name: str, memory: MemoryLabels) -> list[str]:
    lines = ["Test Matrix Summary Report",
             f"Generated: {datetime.now().isoformat(timespec='seconds')}",
             # one_line: a newline in a path from another lab must not forge report lines
             f"From: {one_line(source_name)}", "=" * 80, "", *status_counts(table), BEST_NOTE]
    if table.empty:
        lines.append("No runs were found in this directory (see the warnings, if any, on the terminal).")
    return lines + ([memory.note] if memory.note else []) + [""]


def _results_table(table: pd.DataFrame, memory: MemoryLabels) -> list[str]:
    columns = [("Test ID", lambda r: str(r["run_id"]))] + figure_columns(table, memory) + [
        ("Status", lambda r: status_label(run_kind(r)))]
    return ["Results Table:"] + render_text_table(sort_runs(table, table_metrics(table)[0]), columns)


def _best_performers(table: pd.DataFrame, metric: Metric) -> list[str]:
    best = ranked(table, metric.best, metric.higher_is_better)
    lines = ["", "Best Performers:", RULE]
    if has_seeds(table):
        lines.append("Several seeds per configuration: report.md ranks configurations by mean ± std (n) "
                     "and marks those within noise of each other.")
    lines.append(f"Top {TOP_N} by {metric.name}:")
    lines += [f"{i}. {r.run_id}: {metric.text(r[metric.best])}"
              for i, (_, r) in enumerate(best.head(TOP_N).iterrows(), 1)] or ["  none measured"]
    lines += ["", "Best by Optimizer:"]
    for optimizer, runs in best.groupby("optimizer", sort=True):
        top = runs.iloc[0]
        lines.append(f"  {optimizer}: {top.run_id} ({metric.text(top[metric.best])})")
    return lines


def _memory_section(table: pd.DataFrame, metric: Metric, memory: MemoryLabels) -> list[str]:
    lines = ["", f"{memory.title}:", RULE]
    # A run that crashed early used little memory without being efficient.
    lowest = ranked(table[table["status"] == "success"], "memory_mean_mib", descending=False)
    if lowest.empty:
        return lines + ["  No successful run recorded memory."]
    lines.append("Most Memory-Efficient Tests (lowest mean memory):")
    for i, (_, r) in enumerate(lowest.head(TOP_N).iterrows(), 1):
        kind = memory.kind_of(r)
        lines += [f"{i}. {r.run_id}:",
                  f"   {metric.name}: {metric.text(r[metric.best])}, "
                  f"{kind} Mean: {fmt(r.memory_mean_mib, 1)} MiB, {kind} Max: {fmt(r.memory_peak_mib, 1)} MiB"]
    # Mixed GPU and RSS figures are averaged apart: they measure different things.
    mixed = memory is MIXED_MEMORY
    lines += ["", "Memory by Optimizer (average of run means, GPU and RSS apart):" if mixed
              else f"{memory.kind} Memory by Optimizer (average of run means):"]
    # a run whose optimizer or device is unknown (no run.json, a corrupt spec) is counted, as "unknown"
    known = lowest.fillna({"optimizer": "unknown", "memory_device": "unknown"})
    groups = [(f"{key[0]} ({key[1]})" if mixed else key[0], runs["memory_mean_mib"])
              for key, runs in known.groupby(["optimizer", "memory_device"] if mixed else ["optimizer"])]
    width = max([12] + [len(name) for name, _ in groups])
    return lines + [f"  {name:<{width}}: {mib.mean():8.1f} MiB (avg of {len(mib)} runs)"
                    for name, mib in groups]


def _multiplier(value: Any) -> str:
    text = fmt(value, 2, "x weights")
    return "not measured" if text == NA else text


def _efficiency_section(table: pd.DataFrame, metric: Metric, memory: MemoryLabels) -> list[str]:
    lines = ["", "Memory Efficiency Analysis:", RULE,
             "Multipliers are measured from the tensors, over the model's dense weight bytes:",
             f"  Training memory  = {TRAINING_TERMS}",
             f"    ({PRUNING_STATE_NOTE})",
             "  Inference memory = non-zero weights (benefits from sparsity)",
             f"Efficiency score = {memory.efficiency_note}",
             "", f"Top {TOP_N} by Efficiency Score:"]
    scored = table.assign(score=efficiency_scores(table))
    best = ranked(scored, "score", descending=True).head(TOP_N)
    for i, (_, r) in enumerate(best.iterrows(), 1):
        lines += [f"{i}. {r.run_id}",
                  f"   Best Acc: {fmt(r.best_accuracy_pct, 2, '%')}, {memory.kind_of(r)} Mean: "
                  f"{fmt(r.memory_mean_mib, 1)} MiB, Training Memory: {_multiplier(r.training_multiplier)}, "
                  f"Efficiency Score: {fmt(r.score, 2)}"]
    if best.empty:
        lines.append("  not defined: language models have no accuracy" if metric is PERPLEXITY
                     else "  not measured (no run has both an accuracy and a memory figure)")
    lines += ["", f"Top {TOP_N} Lowest Inference Memory (measured, with sparsity):"]
    lean = ranked(table, "inference_multiplier", descending=False).head(TOP_N)
    for i, (_, r) in enumerate(lean.iterrows(), 1):
        lines += [f"{i}. {r.run_id}",
                  f"   {metric.name}: {metric.text(r[metric.best])}, Sparsity: {fmt(r.sparsity_pct, 2, '%')}, "
                  f"Inference Memory: {_multiplier(r.inference_multiplier)}"]
    return lines + (["  not measured"] if lean.empty else [])


def _adamwprune_section(table: pd.DataFrame, metric: Metric) -> list[str]:
    runs = ranked(table[table["optimizer"] == "adamwprune"], metric.best, metric.higher_is_better)
    if runs.empty:
        return []
    lines = ["", "AdamWPrune Runs (measured; training memory counts "
             f"{TRAINING_TERMS}):", RULE]
    for _, r in runs.head(TOP_N).iterrows():
        lines += [f"  {r.run_id}:",
                  f"    {metric.name}: {metric.text(r[metric.best])}, Sparsity: {fmt(r.sparsity_pct, 2, '%')}",
                  f"    Training Memory: {_multiplier(r.training_multiplier)}, "
                  f"Inference Memory: {_multiplier(r.inference_multiplier)}"]
    return lines


def _problem_sections(table: pd.DataFrame) -> list[str]:
    lines: list[str] = []
    failed = table[~table["status"].isin(["success", "missing"])]
    if not failed.empty:
        lines += ["", "Failed Runs:", RULE]
        for _, r in failed.iterrows():
            tail = [f"    | {line}" for line in r.log_tail] or ["    (no log tail recorded)"]
            reason = non_finite_reason(r)
            lines += [f"  {r.run_id}: {status_label(run_kind(r))}" + (f": {reason}" if reason else ""), *tail]
    missing = table.loc[table["status"] == "missing", "run_id"]
    if not missing.empty:
        lines += ["", "Missing Runs (no valid result.json; `make continue` reruns them):", RULE]
        lines += [f"  {run_id}" for run_id in missing]
    warnings = list(dict.fromkeys(w for ws in table["warnings"] for w in ws))
    if warnings:
        # escaped as on the terminal: a warning names a path from another lab, which may hold a newline
        lines += ["", "Warnings while reading results:", RULE] + [f"  {escaped(w)}" for w in warnings]
    return lines


def render_summary(table: pd.DataFrame, source_name: str) -> str:
    """summary_report.txt in the seed-000 layout, from measured figures only."""
    memory = memory_labels(table)
    metric = table_metrics(table)[0]
    lines = (_header_lines(table, source_name, memory) + _results_table(table, memory)
             + _best_performers(table, metric) + _memory_section(table, metric, memory)
             + _efficiency_section(table, metric, memory) + _adamwprune_section(table, metric)
             + _problem_sections(table))
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> Any:
    """A JSON-ready scalar: NaN and NA become null, numpy scalars Python ones."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def results_rows(table: pd.DataFrame) -> list[dict]:
    """The all_results.json rows: ROW_FIELDS, plus perplexities when present."""
    fields = list(ROW_FIELDS) + [f for f in LM_FIELDS if f in table]
    return [{f: _plain(row[f]) for f in fields} for row in table.to_dict("records")]


def configuration_stats(table: pd.DataFrame) -> list[dict]:
    """Per configuration: n and, per metric, mean, sample std and standard error std/sqrt(n)
    over its successful runs (std and stderr null below two measured values)."""
    fields = [f for f in ROW_FIELDS + LM_FIELDS if f in table and f in NUMERIC_FIELDS and f != "target_sparsity_pct"]
    out = []
    for _, config in configurations(table, fields).iterrows():
        metrics = {}
        for field in fields:
            est = config[field]
            if est.n:
                stderr = est.std / math.sqrt(est.n) if est.n > 1 else None
                metrics[field] = {"mean": _plain(est.mean), "std": _plain(est.std), "stderr": _plain(stderr),
                                  "n": est.n}
        out.append({"config": config["config"], "runs": list(config["runs"]["run_id"]), "metrics": metrics})
    return out


def _all_results(table: pd.DataFrame, source_name: str) -> dict:
    provenance = table.attrs.get("provenance") or {}
    return {"schema_version": SCHEMA_VERSION, "generated_at": datetime.now().isoformat(timespec="seconds"),
            "source": source_name,
            **{key: provenance.get(key) for key in ("config", "git_commit", "git_commit_note", "git_dirty",
                                                    "versions", "host")},
            "report": {"git_commit": git_commit(), "versions": package_versions()},
            "configurations": configuration_stats(table), "runs": results_rows(table)}


def default_out_dir(results_dir: Path, layout: str, reports_root: Path) -> Path:
    """Where reports go when no OUT is given: into our own directory itself;
    never into an upstream one, whose reports go to <reports_root>/<name>-report."""
    results_dir = Path(results_dir)
    return results_dir if layout == "own" else reports_root / f"{results_dir.resolve().name}-report"


def write_reports(table: pd.DataFrame, out_dir: Path, source_name: str, graphs: bool = True) -> list[Path]:
    """Write all_results.json, summary_report.txt, report.md, report.html and
    graphs/*.png|svg into `out_dir`; return the paths written (graphs/ once, when it holds figures)."""
    out_dir = Path(out_dir)
    check_no_links(out_dir, ["graphs", "all_results.json", "summary_report.txt", "report.md", "report.html"])
    figures: list[Graph] = render_graphs(table) if graphs else []
    blocks = markdown_blocks(table, source_name, figures)
    texts = {"summary_report.txt": render_summary(table, source_name),
             "report.md": render_markdown(blocks),
             "report.html": render_html(blocks, f"Results: {one_line(source_name)}", figures)}
    write_json_atomic(out_dir / "all_results.json", _all_results(table, source_name))
    for name, text in texts.items():
        write_text_atomic(out_dir / name, text)
    for figure in figures:
        figure.write(out_dir / "graphs")
    written = [out_dir / "all_results.json"] + [out_dir / name for name in texts]
    return written + ([out_dir / "graphs"] if figures else [])
