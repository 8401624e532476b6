"""Write the reports of one result table: all_results.json, summary_report.txt
(the seed-000 layout) and report.md.

Owns: formatting figures (percent with 2 decimals, sparsity with a % sign,
memory in MiB with 1 decimal, "n/a" for anything not measured), labelling
memory by what was measured (GPU memory or process RSS), ranking runs and
comparing them with their dense baseline. It reads nothing from disk
(lib/results builds the table) and prints only measured figures: no target
sparsity, no theoretical memory multipliers. All three files are rendered
before any is written, and each is written atomically.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from lib.errors import UserError
from lib.jsonio import SCHEMA_VERSION, write_json_atomic, write_text_atomic
from lib.results import LANGUAGE_MODELING, LM_FIELDS, ROW_FIELDS

NA = "n/a"
TOP_N = 20
RULE = "-" * 80
STATUS_LABELS = {"success": "✓ Success", "failed": "✗ Failed", "timeout": "✗ Timeout",
                 "interrupted": "✗ Interrupted", "missing": "… Missing"}
TRAINING_TERMS = "weights + gradients + optimizer state + masks"


@dataclass(frozen=True)
class Metric:
    """The figure runs are ranked by: accuracy for classifiers, perplexity for LMs."""
    best: str
    final: str
    best_header: str
    final_header: str
    name: str
    unit: str
    higher_is_better: bool

    def text(self, value: Any) -> str:
        return fmt(value, 2, self.unit)


ACCURACY = Metric("best_accuracy_pct", "final_accuracy_pct", "Best Acc (%)", "Final Acc (%)",
                  "Best Acc", "%", True)
PERPLEXITY = Metric(LM_FIELDS[0], LM_FIELDS[1], "Best PPL", "Final PPL", "Best PPL", "", False)


@dataclass(frozen=True)
class MemoryLabels:
    """How memory figures are named, from what the sampler measured."""
    mean_header: str
    peak_header: str
    kind: str
    title: str
    note: str | None

    def kind_of(self, row: Any) -> str:
        """What one row measured: in a mixed table each run names its own kind."""
        if self is not MIXED_MEMORY:
            return self.kind
        return {"cuda": "GPU", "cpu": "RSS"}.get(row["memory_device"], self.kind)


# "Avg" rather than "Mean" for RSS and mixed: summary_rows.py (and scripts
# like it) match a bare "n" column anywhere in the header, which splits
# "RSS Mean (MiB)" apart; "GPU Mean (MiB)" is read whole.
GPU_MEMORY = MemoryLabels("GPU Mean (MiB)", "GPU Max (MiB)", "GPU", "GPU Memory Usage (measured)", None)
RSS_MEMORY = MemoryLabels("RSS Avg (MiB)", "RSS Max (MiB)", "RSS",
                          "Process Memory Usage (RSS, measured; not GPU memory)",
                          "Memory: CPU process resident set size (no GPU); not GPU memory")
MIXED_MEMORY = MemoryLabels("Mem Avg (MiB)", "Mem Max (MiB)", "Mem",
                            "Memory Usage (measured; GPU and RSS mixed)",
                            "Memory: GPU memory for cuda runs, process RSS for cpu runs; "
                            "the two are not comparable")

Column = tuple[str, Callable[[Any], str]]  # header, cell text from a row


def fmt(value: Any, digits: int, suffix: str = "", signed: bool = False) -> str:
    """A figure with `digits` decimals, or "n/a" when it was not measured."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return NA
    return f"{value:{'+' if signed else ''}.{digits}f}{suffix}"


def memory_labels(table: pd.DataFrame) -> MemoryLabels:
    devices = set(table["memory_device"].dropna())
    if devices == {"cpu"}:
        return RSS_MEMORY
    return GPU_MEMORY if devices <= {"cuda"} else MIXED_MEMORY


def table_metrics(table: pd.DataFrame) -> list[Metric]:
    """Accuracy columns unless every run is a language model; perplexity for LM runs."""
    is_lm = table["task"] == LANGUAGE_MODELING
    metrics = [ACCURACY] if not is_lm.all() else []
    if is_lm.any() and PERPLEXITY.best in table:
        metrics.append(PERPLEXITY)
    return metrics or [ACCURACY]


def status_label(status: Any) -> str:
    return STATUS_LABELS.get(status, f"? {status}")


def ranked(table: pd.DataFrame, column: str, descending: bool) -> pd.DataFrame:
    """Rows with a value in `column`, best first, ties by run ID."""
    return table.dropna(subset=[column]).sort_values(
        [column, "run_id"], ascending=[not descending, True], kind="stable")


def sort_runs(table: pd.DataFrame, metric: Metric) -> pd.DataFrame:
    """All rows by the metric, best first; unmeasured (missing, failed) last."""
    return table.sort_values([metric.best, "run_id"], ascending=[not metric.higher_is_better, True],
                             na_position="last", kind="stable")


def efficiency_scores(table: pd.DataFrame) -> pd.Series:
    """Best accuracy (%) per 100 MiB of mean measured memory; NaN where either is missing."""
    return table["best_accuracy_pct"] / (table["memory_mean_mib"] / 100.0)


def dense_deltas(table: pd.DataFrame, metric: Metric) -> pd.Series:
    """Best metric minus the mean of the successful dense runs of the same model and optimizer."""
    dense = table[(table["pruning"] == "none") & (table["status"] == "success")]
    baseline = dense.groupby(["model", "optimizer"])[metric.best].mean()
    keys = pd.MultiIndex.from_frame(table[["model", "optimizer"]])
    return table[metric.best] - baseline.reindex(keys).to_numpy()


def figure_columns(table: pd.DataFrame, memory: MemoryLabels) -> list[Column]:
    """The measured-figure columns shared by the text and Markdown tables."""
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


def _counts(table: pd.DataFrame) -> list[str]:
    status = table["status"]
    failed = status[~status.isin(["success", "missing"])]
    others = failed[failed != "failed"].value_counts()  # timeouts and the like, named apart
    detail = ", ".join(f"{n} {kind}" for kind, n in others.items())
    return [f"Total tests: {len(table)}",
            f"Successful: {int((status == 'success').sum())}",
            f"Failed: {len(failed)}" + (f" ({detail})" if detail else ""),
            f"Missing: {int((status == 'missing').sum())}"]


def _header_lines(table: pd.DataFrame, source_name: str, memory: MemoryLabels) -> list[str]:
    lines = ["Test Matrix Summary Report",
             f"Generated: {datetime.now().isoformat(timespec='seconds')}",
             f"From: {source_name}", "=" * 80, "", *_counts(table)]
    return lines + ([memory.note] if memory.note else []) + [""]


def _results_table(table: pd.DataFrame, memory: MemoryLabels) -> list[str]:
    columns = [("Test ID", lambda r: str(r["run_id"]))] + figure_columns(table, memory) + [
        ("Status", lambda r: status_label(r["status"]))]
    return ["Results Table:"] + render_text_table(sort_runs(table, table_metrics(table)[0]), columns)


def _best_performers(table: pd.DataFrame, metric: Metric) -> list[str]:
    best = ranked(table, metric.best, metric.higher_is_better)
    lines = ["", "Best Performers:", RULE, f"Top {TOP_N} by {metric.name}:"]
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
    groups = [(f"{key[0]} ({key[1]})" if mixed else key[0], runs["memory_mean_mib"])
              for key, runs in lowest.groupby(["optimizer", "memory_device"] if mixed else ["optimizer"])]
    width = max(12, *(len(name) for name, _ in groups))
    return lines + [f"  {name:<{width}}: {mib.mean():8.1f} MiB (avg of {len(mib)} runs)"
                    for name, mib in groups]


def _multiplier(value: Any) -> str:
    text = fmt(value, 2, "x weights")
    return "not measured" if text == NA else text


def _efficiency_section(table: pd.DataFrame, metric: Metric, memory: MemoryLabels) -> list[str]:
    lines = ["", "Memory Efficiency Analysis:", RULE,
             "Multipliers are measured from the tensors, over the model's dense weight bytes:",
             f"  Training memory  = {TRAINING_TERMS}",
             "  Inference memory = non-zero weights (benefits from sparsity)",
             f"Efficiency score = best accuracy (%) per 100 MiB of mean measured memory ({memory.kind})",
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
            lines += [f"  {r.run_id}: {status_label(r.status)}", *tail]
    missing = table.loc[table["status"] == "missing", "run_id"]
    if not missing.empty:
        lines += ["", "Missing Runs (no valid result.json; `make continue` reruns them):", RULE]
        lines += [f"  {run_id}" for run_id in missing]
    warnings = list(dict.fromkeys(w for ws in table["warnings"] for w in ws))
    if warnings:
        lines += ["", "Warnings while reading results:", RULE] + [f"  {w}" for w in warnings]
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


def render_markdown(table: pd.DataFrame, source_name: str) -> str:
    """report.md: one table per model, with efficiency and the delta to the dense baseline."""
    memory = memory_labels(table)
    metric = table_metrics(table)[0]
    table = table.assign(score=efficiency_scores(table), delta=dense_deltas(table, metric))
    columns = [("Run", lambda r: f"`{r.run_id}`"), ("Optimizer", lambda r: str(r.optimizer)),
               ("Pruning", lambda r: str(r.pruning))] + figure_columns(table, memory) + [
        ("Efficiency", lambda r: fmt(r.score, 2)), ("Δ dense", lambda r: fmt(r.delta, 2, signed=True)),
        ("Status", lambda r: status_label(r.status))]
    lines = [f"# Results: {source_name}", "",
             *(f"- {line}" for line in _counts(table)),
             *([f"- {memory.note}"] if memory.note else []),
             "- Efficiency: best accuracy (%) per 100 MiB of mean measured memory.",
             f"- Δ dense: {metric.name} minus the mean of the successful dense (pruning none) "
             "runs of the same model and optimizer.", ""]
    for model, runs in table.groupby("model", sort=True, dropna=False):
        lines += [f"## {model}", "", "| " + " | ".join(h for h, _ in columns) + " |",
                  "|" + "|".join("---" if i < 3 or h == "Status" else "--:"
                                 for i, (h, _) in enumerate(columns)) + "|"]
        lines += ["| " + " | ".join(cell(r) for _, cell in columns) + " |"
                  for _, r in sort_runs(runs, metric).iterrows()]
        lines.append("")
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    """A JSON-ready scalar: NaN and NA become null, numpy scalars Python ones."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def results_rows(table: pd.DataFrame) -> list[dict]:
    """The all_results.json rows: ROW_FIELDS, plus perplexities when present."""
    fields = list(ROW_FIELDS) + [f for f in LM_FIELDS if f in table]
    return [{f: _plain(row[f]) for f in fields} for row in table.to_dict("records")]


def write_reports(table: pd.DataFrame, out_dir: Path, source_name: str) -> list[Path]:
    """Write all_results.json, summary_report.txt and report.md into `out_dir`; return their paths."""
    if table.empty:
        raise UserError(f"{source_name}: no runs to report")
    out_dir = Path(out_dir)
    all_results = {"schema_version": SCHEMA_VERSION,
                   "generated_at": datetime.now().isoformat(timespec="seconds"),
                   "source": source_name, "runs": results_rows(table)}
    summary = render_summary(table, source_name)
    markdown = render_markdown(table, source_name)
    paths = [out_dir / "all_results.json", out_dir / "summary_report.txt", out_dir / "report.md"]
    write_json_atomic(paths[0], all_results)
    write_text_atomic(paths[1], summary)
    write_text_atomic(paths[2], markdown)
    return paths
