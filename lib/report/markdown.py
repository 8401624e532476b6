"""report.md: the tables of the result write-ups (seeds 001 and 004), per model.

Owns what report.md (and report.html, which renders the same blocks) says:
every configuration with measured sparsity, metric, memory, efficiency score
and the delta to the dense baseline of the same optimizer; the metric by
target sparsity; a ranking that says which entries are within noise; the
stability of the last evaluations; and training memory from measured bytes.
With several seeds every figure is mean ± standard deviation with its n
(lib/report/stats). The document is a list of small blocks so that the Markdown and
HTML renderers cannot disagree on content.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Sequence, Union

import pandas as pd

from lib.report.graphs import MIB, Graph
from lib.report.labels import (BEST_NOTE, MEMORY_TERMS, NON_FINITE, PERPLEXITY, PRUNING_STATE_NOTE, TRAINING_TERMS,
                               MemoryLabels, Metric, efficiency_scores, memory_labels, non_finite_reason, run_kind,
                               runs_status, status_counts, status_label, table_metrics)
from lib.report.stats import NA, Estimate, configurations, fmt, has_seeds, is_missing
from lib.results.run_files import one_line

STABILITY_WINDOW = 10  # last evaluations whose spread says how settled a run is (as seed 004)


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: Sequence[str]
    ordered: bool = False


@dataclass(frozen=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    align: str = ""  # "l" or "r" per column; figures right-aligned
    notes: Sequence[str] = field(default_factory=tuple)


@dataclass(frozen=True)
class Image:
    title: str
    name: str  # graphs/<name>.png


Block = Union[Heading, Paragraph, Bullets, Table, Image]


def code_span(text: str) -> str:
    """`text` as one literal Markdown code span: a path from another lab may hold Markdown, HTML or
    newlines, which must not become headings, links or tags. Control characters are shown as \\xNN,
    and the fence is one backtick longer than any run of backticks inside (CommonMark)."""
    text = one_line(text)
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _overview(table: pd.DataFrame, memory: MemoryLabels, seeds: bool) -> list[Block]:
    items = status_counts(table) + ([memory.note] if memory.note else [])
    items.append("Sparsity: the measured share of prunable weights that are exactly zero after training, "
                 "not the target.")
    items.append(f"Efficiency: {memory.efficiency_note}; classifiers only.")
    items.append(BEST_NOTE)
    items.append("Δ dense: the metric minus the mean of the successful dense (pruning none) runs of the same "
                 "model and optimizer.")
    items.append("Seeds: figures are mean ± sample standard deviation over the successful seeds of a "
                 "configuration, n says how many; two entries are *within noise* when their means differ by "
                 "less than twice the standard error of the difference." if seeds else
                 "Seeds: one per configuration, so no error bars and no noise estimate; differences smaller "
                 "than run-to-run noise cannot be told apart (set SEEDS to several values).")
    return [Bullets(items)]


def _baselines(configs: pd.DataFrame, metric: Metric) -> dict[str, Estimate]:
    """Per optimizer, the metric over every successful dense run (all seeds pooled)."""
    dense = configs[configs["pruning"] == "none"]
    baselines = {}
    for optimizer, group in dense.groupby("optimizer", sort=False):
        runs = pd.concat(list(group["runs"]))
        baselines[optimizer] = Estimate.of(runs.loc[runs["status"] == "success", metric.best])
    return baselines


def _delta(cfg: pd.Series, metric: Metric, baselines: dict[str, Estimate]) -> str:
    if cfg.pruning == "none":
        return "baseline"
    base, value = baselines.get(cfg.optimizer), cfg[metric.best]
    if base is None or base.n == 0 or value.n == 0:
        return NA
    noise = " (within noise)" if value.within_noise(base) else ""
    return fmt(value.mean - base.mean, 2, signed=True) + noise


def _configuration_table(configs: pd.DataFrame, metric: Metric, memory: MemoryLabels) -> Table:
    baselines = _baselines(configs, metric)
    classifier = metric is not PERPLEXITY
    headers = ["Configuration", "Optimizer", "Pruning", "Sparsity (%)", metric.best_header,
               metric.final_header, memory.mean_header, memory.peak_header]
    headers += ([f"Efficiency ({memory.kind})"] if classifier else []) + ["Δ dense", "n", "Status"]
    rows = []
    for _, cfg in _sorted(configs, metric).iterrows():
        row = [f"`{cfg.config}`", str(cfg.optimizer), str(cfg.pruning) + (f" ({cfg.variant})" if cfg.variant else ""),
               cfg.sparsity_pct.text(2, "%"), cfg[metric.best].text(2), cfg[metric.final].text(2),
               cfg.memory_mean_mib.text(1), cfg.memory_peak_mib.text(1)]
        row += ([cfg.efficiency.text(2)] if classifier else []) + [
            _delta(cfg, metric, baselines), str(cfg[metric.best].n), runs_status(cfg.runs)]
        rows.append(row)
    return Table(headers, rows, "lll" + "r" * (len(headers) - 4) + "l")


def _sorted(configs: pd.DataFrame, metric: Metric) -> pd.DataFrame:
    """Best mean first, unmeasured last, ties by name."""
    key = [e.mean if e.n else math.nan for e in configs[metric.best]]
    return configs.assign(_key=key).sort_values(["_key", "config"], ascending=[not metric.higher_is_better, True],
                                                na_position="last", kind="stable")


def _method(cfg: pd.Series) -> str:
    return " ".join(str(p) for p in (cfg.optimizer, cfg.variant, cfg.pruning) if p)


def _by_sparsity(configs: pd.DataFrame, metric: Metric) -> list[Block]:
    """Seed 004's comparison: rows are target sparsities, columns methods."""
    levels = sorted({t for t in configs["target_sparsity_pct"] if not is_missing(t)})
    if len(levels) < 2:
        return []
    methods = list(dict.fromkeys(_method(cfg) for _, cfg in configs.iterrows()))
    cells = {(cfg.target_sparsity_pct, _method(cfg)): cfg[metric.best].text(2) for _, cfg in configs.iterrows()}
    rows = [[fmt(level, 0)] + [cells.get((level, m), "") for m in methods] for level in levels]
    return [Heading(3, f"{metric.name} by target sparsity"),
            Table(["Target sparsity (%)"] + methods, rows, "r" * (len(methods) + 1))]


def _ranking(configs: pd.DataFrame, metric: Metric, seeds: bool) -> list[Block]:
    ranked = [cfg for _, cfg in _sorted(configs, metric).iterrows() if cfg[metric.best].n]
    items = []
    for i, cfg in enumerate(ranked):
        value = cfg[metric.best]
        close = next((j for j in range(i) if value.within_noise(ranked[j][metric.best])), None)
        note = f" — within noise of #{close + 1}" if close is not None else ""
        n = f" (n={value.n})" if seeds else ""
        items.append(f"`{cfg.config}`: {value.text(2, metric.unit)}{n}{note}")
    return [Heading(3, f"Ranking by {metric.name}"), Bullets(items or ["none measured"], ordered=True)]


def _run_stability(run: pd.Series, metric: Metric) -> tuple[float, float]:
    """Std of the run's last evaluations, and how far its final figure fell from its Best
    (positive: worse). Best is the Best column's: for a pruned run at its target sparsity,
    so a peak reached before pruning caught up does not count (BEST_NOTE)."""
    values: list = []  # the last STABILITY_WINDOW measured values, found from the end: a curve may be long
    for point in reversed(run["metric_curve"]["points"]):
        if not is_missing(point[1]):
            values.append(point[1])
            if len(values) == STABILITY_WINDOW:
                break
    values.reverse()
    if len(values) < 2:
        return math.nan, math.nan
    best, final = run[metric.best], run[metric.final]
    drop = best - final if metric.higher_is_better else final - best  # NaN when either is unmeasured
    return Estimate.of(values[-STABILITY_WINDOW:]).std, drop


def _stability(configs: pd.DataFrame, metric: Metric) -> list[Block]:
    rows = []
    for _, cfg in configs.iterrows():
        runs = cfg.runs[(cfg.runs["status"] == "success") & cfg.runs["metric_curve"].astype(bool)]
        spreads, drops = zip(*(_run_stability(run, metric) for _, run in runs.iterrows())) if len(runs) else ((), ())
        spread, drop = Estimate.of(spreads), Estimate.of(drops)
        if spread.n:
            rows.append([f"`{cfg.config}`", spread.text(2), drop.text(2)])
    if not rows:
        return []
    figure = metric.title.removeprefix("best ")
    return [Heading(3, "Stability"),
            Table(["Configuration", f"Std of last ≤{STABILITY_WINDOW} evaluations", "Best − final"], rows, "lrr",
                  [f"Best − final: how far the final {figure} is from the run's best {figure} as the Best "
                   "column gives it (for a pruned run, at its target sparsity; positive: the run ended worse "
                   "than its best)."])]


def _training_memory(configs: pd.DataFrame) -> list[Block]:
    rows = []
    for _, cfg in configs.iterrows():
        recorded = [b for b in cfg.runs["memory_bytes"] if b]
        if not recorded:
            continue
        terms = [fmt(recorded[0][term] / MIB if term in recorded[0] else math.nan, 2) for term, _ in MEMORY_TERMS]
        rows.append([f"`{cfg.config}`", *terms, Estimate.of(cfg.runs["training_multiplier"]).text(2, "×"),
                     Estimate.of(cfg.runs["inference_multiplier"]).text(2, "×")])
    heading = Heading(3, "Training memory (measured from the tensors)")
    if not rows:
        return [heading, Paragraph("Not measured: no run of this model recorded tensor byte counts "
                                   "(upstream directories do not).")]
    headers = ["Configuration"] + [f"{label.capitalize()} (MiB)" for _, label in MEMORY_TERMS] + [
        "Training (× weights)", "Inference (× weights)"]
    return [heading, Paragraph(f"Training = {TRAINING_TERMS}, over the dense weight bytes ({PRUNING_STATE_NOTE}); "
                               "the columns add up to it. Inference = "
                               "non-zero weights over the dense weight bytes. A bool mask takes one byte per "
                               "weight (0.25× of fp32 weights), a bit mask (CONFIG_PRUNING_MASK_STORAGE_BITS) "
                               "one bit (0.031×): AdamW-family state pruning is then 4 + 0.03 = 4.03× by formula, "
                               "3.03× without the gradients (the seeds' figure); the masks column is measured."),
            Table(headers, rows, "l" + "r" * (len(headers) - 1))]


def _unsuccessful(table: pd.DataFrame) -> list[Block]:
    """The runs that did not succeed, each with why in its own words when it went non-finite, else the last
    line of its log tail (summary_report.txt shows five)."""
    failed = table[~table["status"].isin(["success", "missing"])]
    if failed.empty:
        return []
    items = []
    for _, r in failed.iterrows():
        kind = run_kind(r)
        why = non_finite_reason(r) if kind == NON_FINITE else (r.log_tail[-1] if r.log_tail else None)
        items.append(f"{code_span(r.run_id)}: {status_label(kind)}" + (f": {code_span(why)}" if why else ""))
    return [Heading(2, f"Runs that did not succeed ({len(items)})"), Bullets(items)]


def markdown_blocks(table: pd.DataFrame, source_name: str, figures: Sequence[Graph] = ()) -> list[Block]:
    """The content of report.md and report.html."""
    memory = memory_labels(table)
    seeds = has_seeds(table)
    blocks: list[Block] = [Heading(1, f"Results: {code_span(source_name)}"), *_overview(table, memory, seeds)]
    table = table.assign(efficiency=efficiency_scores(table))
    for model, runs in table.groupby("model", sort=True, dropna=False):
        metric = table_metrics(runs)[0]
        configs = configurations(runs, [metric.best, metric.final, "sparsity_pct", "memory_mean_mib",
                                        "memory_peak_mib", "efficiency"])
        blocks += [Heading(2, str(model)), Heading(3, "All configurations"),
                   _configuration_table(configs, metric, memory), *_by_sparsity(configs, metric),
                   *_ranking(configs, metric, seeds), *_stability(configs, metric), *_training_memory(configs)]
    blocks += _unsuccessful(table)
    if figures:
        blocks += [Heading(2, "Graphs")] + [Image(graph.title, graph.name) for graph in figures]
    return blocks


def _markdown_table(block: Table) -> list[str]:
    align = block.align.ljust(len(block.headers), "l")
    lines = ["| " + " | ".join(block.headers) + " |",
             "|" + "|".join("--:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in block.rows]
    return lines + [""] + [f"*{note}*" for note in block.notes] + ([""] if block.notes else [])


def render_markdown(blocks: Sequence[Block]) -> str:
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            lines += [block.text, ""]
        elif isinstance(block, Bullets):
            lines += [f"{f'{i}.' if block.ordered else '-'} {item}" for i, item in enumerate(block.items, 1)] + [""]
        elif isinstance(block, Table):
            lines += _markdown_table(block)
        else:
            lines += [f"![{block.title}](graphs/{block.name}.png)", f"*{block.title}*", ""]
    return "\n".join(lines)
