"""Read a result directory into one table, one row per run.

Owns: recognising a directory's layout (READERS, tried in order: this
framework's own, then the upstream AdamWPrune one of lib/results/upstream),
reading each run of our own layout (result.json, metrics.json, gpu_stats.json)
into the flat row of docs/results-format.md, and the table itself. A missing
or corrupt file becomes empty cells plus a warning, so one bad run never
stops a report. It formats and writes nothing (lib/report does).
"""
from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path
from typing import Callable, Optional

import pandas as pd

from lib.errors import UserError, counted, escaped, shown
from lib.jsonio import check_result_dir, read_json
from lib.models import CLASSIFICATION, LANGUAGE_MODELING, TASKS, task_of
from lib.spec import MAX_SEED
from lib.names import name_problem, row_name_problem
from lib.provenance import directory_provenance
from lib.results.run_files import Row, RunFiles, curve, one_line, thin, to_float
from lib.results.upstream import read_upstream_layout

__all__ = ["LANGUAGE_MODELING", "ROW_FIELDS", "EXTRA_FIELDS", "LM_FIELDS", "READERS", "load_results"]

# The all_results.json row of docs/results-format.md, in its order.
ROW_FIELDS: tuple[str, ...] = (
    "run_id", "model", "optimizer", "pruning", "variant", "seed", "task", "status", "non_finite",
    "target_sparsity_pct", "sparsity_pct", "best_accuracy_pct", "final_accuracy_pct",
    "memory_mean_mib", "memory_peak_mib", "memory_source", "memory_device",
    "training_multiplier", "inference_multiplier", "wall_time_s",
)
# Table-only columns: curves for graphs ({"axis", "points"} or None), the
# measured memory terms in bytes, the memory timeline [[t_s, MiB], ...], the
# log tail for the failed-runs section, what went non-finite and where (the
# trainer's words from the log tail; None when the tail does not say or the run
# did not go non-finite), the warnings raised while reading, and the run's
# resolved hyper-parameters flattened ({"training.epochs": 3, ...}; None where
# the spec records none, as upstream's), which make compare checks.
EXTRA_FIELDS: tuple[str, ...] = ("metric_curve", "sparsity_schedule", "memory_bytes", "memory_timeline",
                                 "log_tail", "non_finite_reason", "warnings", "settings")
# Present only when the table holds language-model runs.
LM_FIELDS: tuple[str, ...] = ("best_perplexity", "final_perplexity", "best_val_loss", "final_val_loss")
NUMERIC_FIELDS: tuple[str, ...] = (
    "target_sparsity_pct", "sparsity_pct", "best_accuracy_pct", "final_accuracy_pct",
    "memory_mean_mib", "memory_peak_mib", "training_multiplier", "inference_multiplier",
    "wall_time_s",
) + LM_FIELDS
# Every term training_multiplier counts (lib/train/harness.memory_account), so the
# bytes reports show add up to the multiplier they print beside them.
MEMORY_TERMS = ("weights_bytes", "gradients_bytes", "optimizer_state_bytes", "mask_bytes", "pruning_state_bytes")

STATUSES = ("success", "failed", "timeout", "interrupted")
MISSING = "missing"
# Of the log tail a failed run recorded (lib/run/task.LOG_TAIL_LINES), the
# last lines that reports show.
REPORT_LOG_LINES = 5
# Where a non-finite run's log tail says what went non-finite: the line the runner adds from the
# trainer's non_finite.json (lib/run/task.non_finite_line), else the trainer's own `error:` line
# (lib/errors.run_cli; "[rank0]: error: ..." where a launcher prefixes it). Only the last
# REASON_LINES lines are searched (the runner keeps 20), each cut to REASON_SCAN characters first,
# so that a log tail from elsewhere costs little.
MARKER_LINE = re.compile(r"^--- stopped non-finite(?: on rank \d+)?: (.+) ---$")
ERROR_LINE = re.compile(r"(?:^|\]: ?)error: (.+)")
REASON_LINES = 50
REASON_SCAN = 2000

# A reader recognises one directory layout: it returns the rows of the runs it
# found (perhaps none), or None when the directory is not in its layout;
# problems go to the warnings list as "path: what".
Reader = Callable[[Path, list[str]], Optional[list[Row]]]


def _status(files: RunFiles, result: dict) -> str:
    if not result:
        return MISSING  # no (valid) result.json: the run never finished
    status = result.get("status")
    if status not in STATUSES:
        files.warn("result.json", f"unknown status {shown(status)}")
        return MISSING
    return status


def _non_finite(files: RunFiles, result: dict, status: str) -> bool:
    """result.json's "non_finite" for a run that did not succeed. Only JSON true counts: a "yes" or
    a 1 from another lab's writer is no such claim (a warning), and a successful run that says it
    went non-finite contradicts itself (a warning; its figures stand)."""
    value = result.get("non_finite")
    if value is not None and not isinstance(value, bool):
        files.warn("result.json", f"non_finite {shown(value)} is not true or false; taken as false")
    elif value is True and status == "success":
        files.warn("result.json", "non_finite is true for a successful run; taken as false")
    return value is True and status not in ("success", MISSING)


def non_finite_reason(tail: list) -> Optional[str]:
    """What went non-finite and at which step, in the trainer's words ("loss became nan at step 13
    (lr 0.1); ..."), from a result.json log tail; None when the tail does not say."""
    lines = [line[:REASON_SCAN] for line in tail[-REASON_LINES:] if isinstance(line, str)]
    for pattern in (MARKER_LINE, ERROR_LINE):
        for line in reversed(lines):
            match = pattern.search(line)
            if match:
                return one_line(match.group(1))
    return None


def _text(value: object) -> Optional[str]:
    """A name cell: the string, or None for anything else (a list, a dict, a number)."""
    return value if isinstance(value, str) else None


def _name_cell(files: RunFiles, data: dict, key: str, name: str) -> Optional[str]:
    """data[key] when it is a string (None when absent), cut to 40 characters with control characters
    escaped (reports print it: "cuda", "nvml"); reports group and look up by it, so a list or an object
    there is a warning and an empty cell, not a crash."""
    value = data.get(key)
    if value is None or isinstance(value, str):
        return None if value is None else one_line(value, 40)
    files.warn(name, f"{key} {shown(value)} is not a string")
    return None


def _finite(value: Optional[float]) -> float:
    return value if value is not None and math.isfinite(value) else math.nan


SETTINGS_MAX = 200  # a spec with more scalar settings than this is not one of ours; the rest is left out


def _settings(hyperparams: object) -> Optional[dict[str, object]]:
    """spec["hyperparams"] flattened to {"group.name": scalar}; lists and odd values shown as text."""
    if not isinstance(hyperparams, dict):
        return None
    flat: dict[str, object] = {}
    for group, values in hyperparams.items():
        items = values.items() if isinstance(values, dict) else [(None, values)]
        for name, value in items:
            if len(flat) >= SETTINGS_MAX:
                return flat
            key = one_line(group if name is None else f"{group}.{name}", 80)
            flat[key] = value if value is None or isinstance(value, (str, bool, int, float)) else shown(value)
    return flat


def _spec_cells(spec: dict) -> Row:
    target = spec.get("target_sparsity_pct")
    seed = spec.get("seed")
    return {
        "run_id": spec["run_id"],
        "model": _text(spec.get("model")),
        "optimizer": _text(spec.get("optimizer")),
        "pruning": _text(spec.get("pruning")),
        "variant": _text(spec.get("variant")),
        "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED else None,
        "target_sparsity_pct": _finite(to_float(target)),
        "settings": _settings(spec.get("hyperparams")),
    }


def _metric_cells(files: RunFiles, metrics: dict, task: str) -> Row:
    """The figures of metrics.json; its history lists are taken out of `metrics` as they are read
    (consumed: a stranger's file may hold millions of records, not to be held beside their points)."""
    def num(*keys: str) -> float:
        return files.number(metrics, keys, "metrics.json")

    def points(key: str, fields: tuple[str, ...]) -> list[list[float]]:
        return files.points(metrics.pop(key, None), fields, "metrics.json", consume=True)

    if task == LANGUAGE_MODELING:
        evals = curve("step", points("evals", ("step", "val_perplexity")))
    else:
        evals = curve("epoch", points("epochs", ("epoch", "test_accuracy_pct")))
    memory = metrics.get("memory") if isinstance(metrics.get("memory"), dict) else {}
    terms = {term: num("memory", term) for term in MEMORY_TERMS if term in memory}
    cells = {
        "best_accuracy_pct": num("best_accuracy_pct"),
        "final_accuracy_pct": num("final_accuracy_pct"),
        "sparsity_pct": num("sparsity", "global_pct"),
        "training_multiplier": num("memory", "training_multiplier"),
        "inference_multiplier": num("memory", "inference_multiplier"),
        "wall_time_s": num("wall_time_s"),
        "metric_curve": evals,
        "sparsity_schedule": curve("step", points("pruning_schedule", ("step", "target_pct", "measured_pct"))),
        "memory_bytes": terms or None,
    }
    cells.update({field: num(field) for field in LM_FIELDS})
    return cells


def _memory_cells(files: RunFiles, gpu_stats: dict) -> Row:
    summary = gpu_stats.get("summary") if isinstance(gpu_stats.get("summary"), dict) else {}
    samples = thin(gpu_stats.get("samples") if isinstance(gpu_stats.get("samples"), list) else [])
    return {
        "memory_mean_mib": files.number(summary, ("mean_mib",), "gpu_stats.json"),
        "memory_peak_mib": files.number(summary, ("peak_mib",), "gpu_stats.json"),
        "memory_device": _name_cell(files, gpu_stats, "device", "gpu_stats.json"),
        "memory_source": _name_cell(files, gpu_stats, "source", "gpu_stats.json"),
        "memory_timeline": files.points(samples, ("t_s", "memory_mib"), "gpu_stats.json") or None,
    }


def read_run(run_dir: Path, spec: dict, warnings: list[str]) -> Row:
    """One table row from a run folder and its spec (from matrix.json or run.json)."""
    files = RunFiles(run_dir, warnings)
    result = files.load("result.json", expected=False)
    status = _status(files, result)
    # Only a successful run must have its metrics; a failed one may stop early.
    done = status == "success"
    metrics = files.load("metrics.json", expected=done)
    gpu_stats = files.load("gpu_stats.json", expected=done)
    row = _spec_cells(spec)
    row["model"] = row["model"] or _text(metrics.get("model"))
    task = metrics.get("task")
    # a run that never wrote metrics still needs a task, so that reports put it with the right
    # kind of runs: the model registry's, classification for a model it lacks
    row["task"] = task if task in TASKS else (task_of(row["model"]) or CLASSIFICATION)
    row["status"] = status
    row["non_finite"] = _non_finite(files, result, status)
    row.update(_metric_cells(files, metrics, row["task"]))
    row.update(_memory_cells(files, gpu_stats))
    tail = result.get("log_tail")
    tail = tail if isinstance(tail, list) else []
    row["log_tail"] = [one_line(line) for line in tail[-REPORT_LOG_LINES:]]
    # searched above the lines shown: under torchrun, its own report follows the worker's error
    row["non_finite_reason"] = non_finite_reason(tail) if row["non_finite"] else None
    row["warnings"] = files.warnings
    return row


def _specs_from_matrix(results_dir: Path, warnings: list[str]) -> Optional[list[dict]]:
    """The run specs of matrix.json; None when it is absent or unusable."""
    path = results_dir / "matrix.json"
    if not path.is_file():
        return None
    try:
        matrix = read_json(path, within=results_dir)
    except UserError as exc:  # its message already names the path
        warnings.append(f"{exc}; reading the run folders instead")
        return None
    runs = matrix.get("runs") if isinstance(matrix, dict) else None
    if not isinstance(runs, list):
        warnings.append(f"{path}: no 'runs' list; reading the run folders instead")
        return None
    specs = [spec for spec in runs if isinstance(spec, dict) and spec.get("run_id") is not None]
    if len(specs) < len(runs):
        warnings.append(f"{path}: {counted(len(runs) - len(specs), 'run')} without a run_id ignored")
    return [spec for spec in specs if _safe_run_id(spec["run_id"], path, warnings)]


def _safe_run_id(run_id: object, where: Path, warnings: list[str]) -> bool:
    """Whether `run_id` may name a folder to read; a warning when it may not."""
    problem = name_problem(run_id, "run_id")
    if problem:
        warnings.append(f"{where}: {problem}; entry skipped")
    return problem is None


def _specs_from_run_folders(results_dir: Path, warnings: list[str]) -> list[dict]:
    """Specs of the folders holding run.json or result.json, when there is no matrix."""
    specs = []
    for run_dir in sorted(p for p in results_dir.iterdir() if p.is_dir()):
        # os.path's checks: a folder we may not look into is no run folder (Path's raise PermissionError)
        if not (os.path.isfile(run_dir / "run.json") or os.path.lexists(run_dir / "result.json")):
            continue
        if not _safe_run_id(run_dir.name, run_dir, warnings):
            continue
        spec = RunFiles(run_dir, warnings).load("run.json", expected=True).get("spec")
        spec = dict(spec) if isinstance(spec, dict) else {}
        spec["run_id"] = run_dir.name  # the folder name is what the runner used
        specs.append(spec)
    return specs


def read_own_layout(results_dir: Path, warnings: list[str]) -> Optional[list[Row]]:
    """Rows of a directory written by this framework (docs/results-format.md);
    [] for a matrix.json listing no readable run, None when not this layout."""
    specs = _specs_from_matrix(results_dir, warnings)
    if specs is None:
        specs = _specs_from_run_folders(results_dir, warnings)
        if not specs:
            return None
    seen: set[str] = set()
    rows = []
    for spec in specs:
        if spec["run_id"] not in seen:
            seen.add(spec["run_id"])
            rows.append(read_run(results_dir / spec["run_id"], spec, warnings))
    return rows


# Layout name -> reader, tried in order; the first that recognises the directory wins.
READERS: dict[str, Reader] = {"own": read_own_layout, "upstream": read_upstream_layout}


def _to_frame(rows: list[Row]) -> pd.DataFrame:
    columns = list(ROW_FIELDS) + list(EXTRA_FIELDS)
    if any(row.get("task") == LANGUAGE_MODELING for row in rows):
        columns += list(LM_FIELDS)
    table = pd.DataFrame(rows, columns=columns)
    for field in NUMERIC_FIELDS:
        if field in table:
            table[field] = table[field].astype(float)
    table["seed"] = table["seed"].astype("Int64")  # integer, but may be unknown
    # Text and list cells hold None, never NaN, when unknown: pandas would
    # give a text column its string dtype (NaN for missing) and a column no
    # reader filled float NaN.
    text = [c for c in table.columns if c not in NUMERIC_FIELDS and c != "seed"]
    table[text] = table[text].astype(object).where(table[text].notna(), None)
    table["log_tail"] = [cell or [] for cell in table["log_tail"]]
    # a flag, never None: upstream's rows, which cannot tell, leave it out
    table["non_finite"] = [cell is not None and bool(cell) for cell in table["non_finite"]]
    table["warnings"] = [cell or [] for cell in table["warnings"]]
    return table


def _safe_rows(rows: list[Row], results_dir: Path, warnings: list[str]) -> list[Row]:
    """The rows whose names may become paths (graph files, run folders); a warning for each other."""
    kept = []
    for row in rows:
        problem = row_name_problem(row)
        if problem:
            warnings.append(f"{results_dir}: run {str(row.get('run_id'))[:60]!r}: {problem}; run skipped")
        else:
            kept.append(row)
    return kept


def print_warnings(warnings: list[str]) -> None:
    """Print each warning once to stderr as `warning: <path>: <what>`, control characters escaped
    (a folder named with a newline or a terminal escape cannot forge lines or drive the terminal)."""
    for message in dict.fromkeys(warnings):
        print(f"warning: {escaped(message)}", file=sys.stderr)


def load_results(results_dir: Path) -> pd.DataFrame:
    """The table of all runs of `results_dir`: ROW_FIELDS + EXTRA_FIELDS (+ LM_FIELDS).

    Unmeasured figures are NaN, unknown text None; runs listed in matrix.json
    without a result have status "missing"; `non_finite` is True only for a run
    that did not succeed and whose result.json says `"non_finite": true`.
    `table.attrs["layout"]` names the reader that recognised the directory
    ("own" or "upstream"); `table.attrs["provenance"]` its config text, git
    commit, package versions and host (lib/provenance). Raises UserError when
    the directory does not exist or no reader recognises it.
    """
    results_dir = Path(results_dir)
    check_result_dir(results_dir, hint="(give a test_matrix_results/<timestamp> folder)")
    warnings: list[str] = []
    for layout, reader in READERS.items():
        rows = reader(results_dir, warnings)
        if rows is not None:
            table = _to_frame(_safe_rows(rows, results_dir, warnings))
            # after _safe_rows: the run IDs it reads run.json under have passed lib/names
            table.attrs["provenance"] = directory_provenance(results_dir, list(table["run_id"]), layout, warnings)
            print_warnings(warnings)
            table.attrs["layout"] = layout
            return table
    print_warnings(warnings)
    raise UserError(f"{results_dir}: not a result directory this version can read (expected matrix.json or "
                    "run folders with result.json, or an upstream all_results.json list or "
                    "<model>_* run folders)")
