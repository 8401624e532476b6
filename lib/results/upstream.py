"""Read result directories of the upstream AdamWPrune project into table rows.

Owns the upstream layouts (tests/fixtures/legacy/README.md):

- all_results.json: a list of runs with every figure, or an empty list, in
  which case each `<run_id>/training_metrics.json` holds them. Where both
  exist, the all_results.json entry wins (it is what upstream reported) and
  training_metrics.json fills its gaps.
- Classifiers: best_accuracy, final_accuracy (percent), test_accuracy and
  sparsity per epoch. Language models (GPT-2): best_val_loss, final_val_loss,
  val_losses, sparsities; perplexity is exp(loss) unless given. Upstream
  sparsities are fractions; rows carry percent, like ours.
- Memory: `gpu_stats_<run>_<time>.json`, a list of samples of the whole
  device's used memory (MiB) once a second; or, when that file was too large
  to publish, only its `_summary.txt`, which on AMD GPUs gives memory in
  percent of the device: without the device size that is no MiB figure, so
  those cells stay empty and a warning says why.

Upstream's own summary_report.txt is never read (its GPT-2 rows are wrong).
Nothing here writes: reading an upstream directory leaves it untouched.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Optional

from lib.errors import UserError
from lib.jsonio import read_json
from lib.models import CLASSIFICATION, LANGUAGE_MODELING, model_names, task_of
from lib.names import is_safe_name, name_problem
from lib.results.run_files import Row, RunFiles, curve, one_line, parse_run_id, thin, to_float

ALL_RESULTS = "all_results.json"
METRICS = "training_metrics.json"
SUMMARY_MAX_BYTES = 1 << 20  # upstream's gpu_stats summaries are under a kilobyte
# The "Memory Usage:" block of a gpu_stats summary: Average and Max(imum) with a unit.
_SUMMARY_MEMORY = re.compile(r"Memory Usage:\s*\n\s*Average:\s*(\d+(?:\.\d+)?)\s*(%|MiB|MB)?\s*\n"
                             r"\s*Max(?:imum)?:\s*(\d+(?:\.\d+)?)\s*(%|MiB|MB)?")


def _all_results(results_dir: Path, warnings: list[str]) -> Optional[list]:
    """The entries of an upstream all_results.json; None when absent or not upstream's (a list)."""
    path = results_dir / ALL_RESULTS
    if not path.is_file():
        return None
    try:
        data = read_json(path, within=results_dir)
    except UserError as exc:  # its message names the path
        warnings.append(f"{exc}; reading the run folders instead")
        return []
    if not isinstance(data, list):
        return None  # ours is an object with "runs"; not this layout
    return [entry for entry in data if isinstance(entry, dict)]


def _entry_id(entry: dict) -> Optional[str]:
    if isinstance(entry.get("test_id"), str):
        return entry["test_id"]
    model, optimizer = entry.get("model"), entry.get("optimizer")
    pruning = entry.get("pruning_method") or entry.get("pruning")
    if not all(isinstance(v, str) for v in (model, optimizer, pruning)):
        return None
    target = to_float(entry.get("target_sparsity"))
    if pruning == "none" or target is None or not math.isfinite(target):
        return f"{model}_{optimizer}_{pruning}"
    return f"{model}_{optimizer}_{pruning}_{round(100 * target):d}"


def _is_run_folder(path: Path) -> bool:
    return path.is_dir() and path.name.split("_")[0] in model_names() and is_safe_name(path.name)


def _text(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None


class _Figures:
    """Figures of one upstream run: its all_results.json entry over its training_metrics.json."""

    def __init__(self, files: RunFiles, entry: dict, metrics: dict) -> None:
        self.files, self.entry, self.metrics = files, entry, metrics

    def get(self, key: str) -> Any:
        return self.entry[key] if key in self.entry else self.metrics.get(key)

    def _source(self, key: str) -> tuple[str, str]:
        """The file a value came from and how to name it there, for warnings."""
        if key in self.entry:
            return str(self.files.run_dir.parent / ALL_RESULTS), f"{self.files.run_dir.name}: {key}"
        return METRICS, key

    def number(self, key: str) -> float:
        return self.files.as_float(self.get(key), *self._source(key))

    def series(self, key: str) -> list[float]:
        values = self.get(key)
        if not isinstance(values, list):
            return []
        path, name = self._source(key)
        return [self.files.as_float(v, path, f"{name}[{i}]") for i, v in enumerate(values)]


def _last(values: list[float]) -> float:
    return values[-1] if values else math.nan


def _pct(fraction: float) -> float:
    return 100.0 * fraction  # upstream stores sparsity as a fraction


def _classifier_cells(fig: _Figures) -> Row:
    accuracy = fig.series("test_accuracy")
    epochs = fig.series("epochs") if len(fig.series("epochs")) == len(accuracy) else []
    epochs = epochs or list(range(1, len(accuracy) + 1))
    sparsity = fig.series("sparsity")
    best, final = fig.number("best_accuracy"), fig.number("final_accuracy")
    final_sparsity = fig.number("final_sparsity")
    return {
        "best_accuracy_pct": best if not math.isnan(best) else max(accuracy, default=math.nan),
        "final_accuracy_pct": final if not math.isnan(final) else _last(accuracy),
        "sparsity_pct": _pct(final_sparsity if not math.isnan(final_sparsity) else _last(sparsity)),
        "metric_curve": curve("epoch", [[x, y] for x, y in zip(epochs, accuracy)]),
        "sparsity_schedule": curve("epoch", [[x, math.nan, _pct(s)] for x, s in zip(epochs, sparsity)]),
    }


def _lm_cells(fig: _Figures) -> Row:
    losses = fig.series("val_losses")
    best, final = fig.number("best_val_loss"), fig.number("final_val_loss")
    best = best if not math.isnan(best) else min(losses, default=math.nan)
    final = final if not math.isnan(final) else _last(losses)
    config = fig.get("config") if isinstance(fig.get("config"), dict) else {}
    interval = config.get("eval_interval")
    # Upstream evaluates every eval_interval iterations from iteration 0.
    axis, xs = (("step", [i * interval for i in range(len(losses))]) if _count(interval)
                else ("eval", list(range(1, len(losses) + 1))))
    sparsities, iterations = fig.series("sparsities"), fig.series("iterations")
    steps = iterations if len(iterations) == len(sparsities) else list(range(len(sparsities)))
    best_ppl, final_ppl = fig.number("best_perplexity"), fig.number("final_perplexity")
    return {
        "best_val_loss": best, "final_val_loss": final,
        "best_perplexity": best_ppl if not math.isnan(best_ppl) else _exp(best),
        "final_perplexity": final_ppl if not math.isnan(final_ppl) else _exp(final),
        "sparsity_pct": _pct(_last(sparsities)),
        "metric_curve": curve(axis, [[x, _exp(loss)] for x, loss in zip(xs, losses)]),
        "sparsity_schedule": curve("step" if iterations else "eval",
                                   [[x, math.nan, _pct(s)] for x, s in zip(steps, sparsities)]),
    }


def _count(value: Any) -> bool:
    """A plausible positive count (an interval in steps), not a bool or a 1000-digit integer."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 10**12


def _exp(loss: float) -> float:
    return math.inf if loss > 700 else math.exp(loss)  # NaN stays NaN


def _memory_cells(files: RunFiles, run_dir: Path, expected: bool) -> Row:
    stats = sorted(p.name for p in run_dir.glob("gpu_stats_*.json")) if run_dir.is_dir() else []
    if stats:
        return _memory_from_samples(files, stats[-1])  # the latest, when a run was restarted
    summaries = sorted(p.name for p in run_dir.glob("gpu_stats_*_summary.txt")) if run_dir.is_dir() else []
    if summaries:
        return _memory_from_summary(files, summaries[-1])
    if expected:
        files.warn("gpu_stats_*", "no gpu_stats json or summary; memory not measured")
    return {}


def _memory_from_samples(files: RunFiles, name: str) -> Row:
    samples = [s for s in files.load(name, expected=True, kind=list) if isinstance(s, dict)]
    points = []
    for sample in samples:
        mib = to_float(sample.get("memory_used"))
        if mib is None:
            # AMD readings may carry only a percentage; convert where the device size is known.
            pct, total = to_float(sample.get("memory_percent")), to_float(sample.get("memory_total"))
            mib = pct * total / 100 if pct is not None and total is not None else None
        t = to_float(sample.get("elapsed_seconds"))
        if mib is not None and math.isfinite(mib):
            points.append([t if t is not None and math.isfinite(t) else math.nan, mib])
    if not points:
        files.warn(name, "no memory samples")
        return {}
    gpu_type = one_line(_text(samples[0].get("gpu_type")) or "gpu", 40)  # printed in reports
    mib = [p[1] for p in points]
    # Upstream dropped samples under 100 MiB as idle; we keep every sample (see docs/results-format.md).
    return {"memory_mean_mib": sum(mib) / len(mib), "memory_peak_mib": max(mib), "memory_device": "cuda",
            "memory_source": f"upstream-{gpu_type}", "memory_timeline": thin(points)}


def _memory_from_summary(files: RunFiles, name: str) -> Row:
    text = files.text(name, SUMMARY_MAX_BYTES)
    if text is None:
        return {}
    found = _SUMMARY_MEMORY.search(text)
    if not found:
        files.warn(name, "no 'Memory Usage' block; memory not measured")
        return {}
    mean, mean_unit, peak, peak_unit = found.groups()
    cells: Row = {"memory_device": "cuda", "memory_source": "upstream-summary"}
    if "%" in (mean_unit, peak_unit):
        files.warn(name, f"memory given only in percent of the device (mean {mean}%, peak {peak}%) "
                         "and the device size is not recorded; MiB not available")
        return cells
    return {**cells, "memory_mean_mib": float(mean), "memory_peak_mib": float(peak)}


def _status(entry: dict, has_figures: bool) -> str:
    if entry.get("success") is False:
        return "failed"
    return "success" if has_figures or entry.get("success") is True else "missing"


def read_run(run_dir: Path, run_id: str, entry: dict, warnings: list[str]) -> Row:
    """One table row of an upstream run from its all_results.json entry and its folder."""
    files = RunFiles(run_dir, warnings)
    metrics = files.load(METRICS, expected=False) if run_dir.is_dir() else {}
    fig = _Figures(files, entry, metrics)
    row = {"run_id": run_id, **parse_run_id(run_id)}
    config = metrics.get("config") if isinstance(metrics.get("config"), dict) else {}
    for cell, keys in (("model", ("model", "model_name")), ("optimizer", ("optimizer", "optimizer")),
                       ("pruning", ("pruning_method", "pruning_method"))):
        row[cell] = row[cell] or _text(entry.get(keys[0])) or _text(config.get(keys[1]))
    target = fig.get("target_sparsity") if fig.get("target_sparsity") is not None else config.get("target_sparsity")
    target = to_float(target)
    if math.isnan(row["target_sparsity_pct"]) and target is not None and math.isfinite(target):
        row["target_sparsity_pct"] = _pct(target)
    lm = (task_of(row["model"]) == LANGUAGE_MODELING or fig.get("val_losses") is not None
          or fig.get("best_val_loss") is not None)
    row["task"] = LANGUAGE_MODELING if lm else CLASSIFICATION
    row.update(_lm_cells(fig) if lm else _classifier_cells(fig))
    has_figures = not math.isnan(row["best_perplexity" if lm else "best_accuracy_pct"])
    row["status"] = _status(entry, has_figures)
    wall = fig.number("elapsed_time")
    row["wall_time_s"] = wall if not math.isnan(wall) else fig.number("total_time")
    row.update(_memory_cells(files, run_dir, expected=row["status"] == "success"))
    error = entry.get("error")
    row["log_tail"] = [one_line(error)] if error else []
    row["warnings"] = files.warnings
    return row


def read_upstream_layout(results_dir: Path, warnings: list[str]) -> Optional[list[Row]]:
    """Rows of an upstream AdamWPrune result directory; None when it is not one."""
    entries = _all_results(results_dir, warnings)
    folders = sorted(p.name for p in results_dir.iterdir() if _is_run_folder(p))
    if entries is None and not folders:
        return None
    by_id: dict[str, dict] = {}
    for entry in entries or []:
        run_id = _entry_id(entry)
        problem = "without test_id or model/optimizer" if run_id is None else name_problem(run_id, "test_id")
        if problem:
            warnings.append(f"{results_dir / ALL_RESULTS}: an entry {problem} ignored")
        else:
            by_id.setdefault(run_id, entry)
    run_ids = list(dict.fromkeys([*by_id, *folders]))
    return [read_run(results_dir / run_id, run_id, by_id.get(run_id, {}), warnings) for run_id in run_ids]
