"""How reports name what they show: the metric of a task (accuracy for
classifiers, perplexity for language models), what a memory figure measured
(GPU memory or process RSS, never one called the other), the training-memory
terms, run statuses (a run that went non-finite named apart from a crash), and
the derived figures every report shares (efficiency score, dense baseline).

Shared by lib/report/summary.py (text), lib/report/markdown.py (Markdown and
HTML) and lib/report/graphs.py, so the three always use the same words for
the same figure.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import pandas as pd

from lib.report.stats import fmt
from lib.results.reader import LANGUAGE_MODELING, MEMORY_TERMS as MEMORY_TERM_KEYS


def _term_label(key: str) -> str:
    words = key.removesuffix("_bytes").replace("_", " ")  # "optimizer_state_bytes" -> "optimizer state"
    return "masks" if words == "mask" else words  # one per pruned tensor


# What reports count a run as (run_kinds): its status, or NON_FINITE for one that stopped on a NaN or
# infinity. No digit in a label: readers of summary_report.txt take every number on a row for a figure.
NON_FINITE = "non-finite"
STATUS_LABELS = {"success": "✓ Success", "failed": "✗ Failed", NON_FINITE: "✗ Non-finite",
                 "timeout": "✗ Timeout", "interrupted": "✗ Interrupted", "missing": "… Missing"}
# The training-memory terms a run records (metrics.json "memory"), in the
# reader's order, with the words reports use for them.
MEMORY_TERMS = tuple((key, _term_label(key)) for key in MEMORY_TERM_KEYS)
TRAINING_TERMS = " + ".join(label for _, label in MEMORY_TERMS)  # "weights + gradients + ... + pruning state"
# What "pruning state" holds: a reader cannot guess it, and it is what makes movement cost more.
PRUNING_STATE_NOTE = ("pruning state is what a pruning method keeps per weight besides its masks: movement's "
                      "accumulated scores, movement-upstream's initial weights w0 (0 for magnitude and state "
                      "pruning)")
EFFICIENCY_NOTE = "best accuracy (%) per 100 MiB of mean measured memory"


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
    axis_label: str  # for graphs, with its unit
    title: str  # the best figure in words, for titles
    slug: str  # for file names

    @property
    def best_axis_label(self) -> str:
        return f"Best {self.axis_label[0].lower()}{self.axis_label[1:]}, pruned runs at target sparsity"

    def text(self, value: Any) -> str:
        return fmt(value, 2, self.unit)


BEST_NOTE = ("Best: for a pruned run, the best evaluation at its target sparsity (measured within 0.5 points, "
             "after the ramp), never one taken before pruning reached it (metrics.json keeps that apart as "
             "best_before_target); for a dense run, the best of all evaluations. Upstream result directories "
             "report best as upstream recorded it.")

ACCURACY = Metric("best_accuracy_pct", "final_accuracy_pct", "Best Acc (%)", "Final Acc (%)",
                  "Best Acc", "%", True, "Test accuracy (%)", "best test accuracy", "accuracy")
PERPLEXITY = Metric("best_perplexity", "final_perplexity", "Best PPL", "Final PPL", "Best PPL", "", False,
                    "Validation perplexity", "best validation perplexity", "perplexity")


@dataclass(frozen=True)
class MemoryLabels:
    """How memory figures are named, from what the sampler measured."""
    mean_header: str
    peak_header: str
    kind: str
    title: str
    note: str | None
    axis_label: str  # for graphs, with its unit
    name: str  # what was measured, in words, for titles
    slug: str  # for file names
    caveat: str  # what a figure built on it (efficiency, Pareto front) measures; "" when plain

    @property
    def efficiency_note(self) -> str:
        """The efficiency score in words, with what its memory is."""
        return f"{EFFICIENCY_NOTE} ({self.caveat or self.kind})"

    def kind_of(self, row: Any) -> str:
        """What one row measured: in a mixed table each run names its own kind."""
        if self is not MIXED_MEMORY:
            return self.kind
        return {"cuda": "GPU", "cpu": "RSS"}.get(row["memory_device"], self.kind)


# "Avg" rather than "Mean" for RSS and mixed: summary_rows.py (and scripts
# like it) match a bare "n" column anywhere in the header, which splits
# "RSS Mean (MiB)" apart; "GPU Mean (MiB)" is read whole.
GPU_MEMORY = MemoryLabels("GPU Mean (MiB)", "GPU Max (MiB)", "GPU", "GPU Memory Usage (measured)", None,
                          "GPU memory (MiB)", "GPU memory", "gpu_memory", "")
RSS_MEMORY = MemoryLabels("RSS Avg (MiB)", "RSS Max (MiB)", "RSS",
                          "Process Memory Usage (RSS, measured; not GPU memory)",
                          "Memory: CPU process resident set size (no GPU); not GPU memory",
                          "Process RSS (MiB; CPU run, not GPU memory)", "process RSS (CPU)", "rss_memory",
                          # RSS counts the whole process: at LeNet-5 size almost all of it is the torch
                          # runtime, so it says little about the model's own memory
                          "process RSS on CPU: the whole process, mostly the torch runtime, not the model's "
                          "memory")
MIXED_MEMORY = MemoryLabels("Mem Avg (MiB)", "Mem Max (MiB)", "Mem",
                            "Memory Usage (measured; GPU and RSS mixed)",
                            "Memory: GPU memory for cuda runs, process RSS for cpu runs; "
                            "the two are not comparable",
                            "Memory (MiB; GPU for cuda runs, RSS for cpu runs)", "memory (GPU or RSS)", "memory",
                            "GPU memory for cuda runs; process RSS for cpu runs, mostly the torch runtime, "
                            "not the model's memory")


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


def status_label(kind: Any) -> str:
    """A status, or a kind of run_kinds, in the words of a report's Status column."""
    return STATUS_LABELS.get(kind, f"? {kind}")


def run_kinds(table: pd.DataFrame) -> pd.Series:
    """Per run, what reports count and label it as: its status, or NON_FINITE for a run that went
    non-finite (the reader sets that flag only for a run that did not succeed), whatever its failure
    status: that the method diverged is the finding, not how the job ended. The data keep
    "failed" and the flag (all_results.json), so what counts failures stays right."""
    if "non_finite" not in table:
        return table["status"]
    return table["status"].where(~table["non_finite"].astype(bool), NON_FINITE)


def run_kind(row: Any) -> str:
    """run_kinds for one row of the table."""
    return NON_FINITE if bool(row.get("non_finite", False)) else row["status"]


def non_finite_reason(row: Any) -> Optional[str]:
    """For a run that went non-finite, what did and at which step when its log tail said so (the reader's
    non_finite_reason, escaped there); else None."""
    if run_kind(row) != NON_FINITE:
        return None
    return row.get("non_finite_reason") or None


def runs_status(runs: pd.DataFrame) -> str:
    """The status of one configuration's runs: the label of a single run; with seeds how many
    succeeded (`2/3 ✗`), and how many went non-finite (`2/3 ✗ (1 non-finite)`)."""
    kinds = run_kinds(runs)
    if len(runs) == 1:
        return status_label(kinds.iloc[0])
    good, diverged = int((kinds == "success").sum()), int((kinds == NON_FINITE).sum())
    return (f"{good}/{len(runs)} {'✓' if good == len(runs) else '✗'}"
            + (f" ({diverged} {NON_FINITE})" if diverged else ""))


def efficiency_scores(table: pd.DataFrame) -> pd.Series:
    """Best accuracy (%) per 100 MiB of mean measured memory; NaN where either is missing."""
    return table["best_accuracy_pct"] / (table["memory_mean_mib"] / 100.0)


def status_counts(table: pd.DataFrame) -> list[str]:
    """The run-count lines at the top of every report: `Failed: 3 (1 non-finite, 1 timeout)`."""
    status = table["status"]
    failed = run_kinds(table)[~status.isin(["success", "missing"])]
    others = failed[failed != "failed"].value_counts()  # non-finite runs, timeouts and the like, named apart
    # in STATUS_LABELS' order (any other kind after them), not by count: the line keeps its shape
    kinds = [k for k in STATUS_LABELS if k in others.index] + [k for k in others.index if k not in STATUS_LABELS]
    detail = ", ".join(f"{others[kind]} {kind}" for kind in kinds)
    return [f"Total tests: {len(table)}",
            f"Successful: {int((status == 'success').sum())}",
            f"Failed: {len(failed)}" + (f" ({detail})" if detail else ""),
            f"Missing: {int((status == 'missing').sum())}"]


def short_label(config: str, model: Any) -> str:
    """A configuration's label without its model prefix, for legends and axes."""
    prefix = f"{model}_"
    return config[len(prefix):] if isinstance(model, str) and config.startswith(prefix) else config
