"""`make reproduce`: rerun one run from what its folder records, then set the metrics side by side.

Owns reading a run back (run.json's spec, seed, git commit, package versions
and CPU threads), naming what differs on this machine before anything runs,
the new result directory (config.txt copied, a one-run matrix.json; never
inside the original) and the verdict: on CPU with the same commit and
versions the figures must be bit-identical (the loop is deterministic there:
seeded weights, per-step data generators); on a GPU within TOLERANCE, since
cuDNN and atomics reorder float sums. Memory and time are shown, never judged.
The run itself goes through lib/run/runner like any other.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

from lib.config import default_runner
from lib.errors import UserError, counted, escaped
from lib.jsonio import (CONFIG_MAX_BYTES, SCHEMA_VERSION, check_result_dir, found, read_json, read_regular,
                        write_bytes_atomic, write_json_atomic)
from lib.matrix import spec_from_entry
from lib.names import check_name, is_safe_name, leaves
from lib.provenance import git_commit, git_dirty, package_versions, recorded
from lib.report.out_dirs import make_output_dir, stamped_name
from lib.results.reader import load_results
from lib.run.runner import run_matrix
from lib.run.slots import THREAD_VARS
from lib.spec import RunSpec

# Figures that must match, with the GPU tolerance: (field, digits shown, absolute, relative).
JUDGED: tuple[tuple[str, int, float, float], ...] = (
    ("best_accuracy_pct", 4, 0.5, 0.0), ("final_accuracy_pct", 4, 0.5, 0.0),
    ("best_val_loss", 5, 0.0, 0.01), ("final_val_loss", 5, 0.0, 0.01),
    ("best_perplexity", 4, 0.0, 0.01), ("final_perplexity", 4, 0.0, 0.01),
    ("sparsity_pct", 4, 0.5, 0.0),
)
SHOWN = (("memory_mean_mib", 1), ("memory_peak_mib", 1), ("wall_time_s", 1))  # differ between any two runs
TOLERANCE = "GPU: accuracy and sparsity within 0.5 points, loss and perplexity within 1%; CPU: bit-identical"


@dataclass(frozen=True)
class RecordedRun:
    spec: RunSpec
    provenance: dict[str, Any]  # lib.provenance.recorded
    threads: Optional[int]  # OMP threads the run had (None: torch's default)
    device: Optional[str]  # where it trained (metrics.json environment), None if unknown


def _rerunnable(results_dir: Path, shown: int = 10) -> str:
    """The run folders of `results_dir` with a run.json (invalid names skipped), the first `shown` named."""
    runs = sorted(d.name for d in results_dir.iterdir()  # os.path.isfile: False in a folder we may not read
                  if is_safe_name(d.name) and os.path.isfile(d / "run.json"))
    more = f" and {len(runs) - shown} more" if len(runs) > shown else ""
    return (", ".join(runs[:shown]) + more) or "none"


def read_recorded_run(results_dir: Path, run_id: str) -> RecordedRun:
    """The run's spec and provenance from `results_dir/run_id/run.json`, each value checked."""
    check_name(run_id, "RUN", "make reproduce")
    check_result_dir(results_dir, "RESULTS=")
    run_dir = results_dir / run_id
    if not found(run_dir / "run.json"):  # anything else there (unreadable, a directory): read_json says what
        raise UserError(f"{run_dir}: no run.json (give RESULTS=<our result directory> RUN=<run id>; "
                        f"upstream directories record no spec to rerun); runs here: {_rerunnable(results_dir)}")
    data = read_json(run_dir / "run.json", within=results_dir)
    if not isinstance(data, dict):
        raise UserError(f"{run_dir / 'run.json'}: not a JSON object")
    spec = spec_from_entry(data.get("spec"), f"{run_dir / 'run.json'}: spec")
    if spec.run_id != run_id:
        raise UserError(f"{run_dir / 'run.json'}: its spec is run {spec.run_id!r}, not {run_id!r}")
    placement = data.get("placement") if isinstance(data.get("placement"), dict) else {}
    threads = placement.get("threads")
    threads = threads if isinstance(threads, int) and not isinstance(threads, bool) and 0 < threads <= 4096 else None
    device = None
    try:
        environment = read_json(run_dir / "metrics.json", within=results_dir).get("environment")
        device = environment.get("device") if isinstance(environment, dict) else None
    except (UserError, AttributeError):
        pass
    return RecordedRun(spec, recorded(data), threads, device if isinstance(device, str) else None)


def differences(run: RecordedRun) -> list[str]:
    """What differs between the run's record and this machine, one line each."""
    lines = []
    was, now = run.provenance["git_commit"], git_commit()
    if was is None:
        lines.append("git commit: not recorded by the run")
    elif was != now:
        lines.append(f"git commit: recorded {was}, this checkout {now or 'is not a git checkout'}")
    if run.provenance["git_dirty"]:
        lines.append("git: the run's checkout had uncommitted changes, not recorded")
    if git_dirty():
        lines.append("git: this checkout has uncommitted changes")
    recorded_versions, here = run.provenance["packages"], package_versions()
    if not recorded_versions:
        lines.append("package versions: not recorded by the run")
    for name, version in recorded_versions.items():
        if name in here and here[name] != version:
            lines.append(f"{name}: recorded {version}, here {here[name] or 'not installed'}")
    return lines


def new_directory(out: Optional[Path], results_root: Path, original: Path) -> Path:
    """`out` (new or empty) or a new results_root/reproduce_<time>[_N]; never inside the original."""
    return make_output_dir(out or stamped_name(results_root, "reproduce_"), [original], must_be_empty=True)


def recorded_config(results_dir: Path, say: Callable[[str], None]) -> Optional[bytes]:
    """The original's config.txt, to copy into the new directory; None when it has none, and None with
    a note when it is a link out of the directory (never copy a file a planted link points at), not
    a regular file, larger than any .config, or unreadable: the run's spec is in run.json regardless."""
    config = results_dir / "config.txt"
    if not os.path.lexists(config):
        return None
    if leaves(config, results_dir):
        say(f"note: {escaped(str(config))}: a symbolic link out of the result directory; the rerun gets no config.txt")
        return None
    try:
        return read_regular(config, CONFIG_MAX_BYTES)
    except UserError as exc:
        say(f"note: {escaped(str(exc))}; the rerun gets no config.txt")
        return None


def prepare(results_dir: Path, run: RecordedRun, new_dir: Path, config: Optional[bytes]) -> None:
    """config.txt (the original's bytes, when it has one: recorded_config) and a matrix.json of the one run."""
    if config is not None:
        write_bytes_atomic(new_dir / "config.txt", config)
    write_json_atomic(new_dir / "matrix.json", {
        "schema_version": SCHEMA_VERSION, "created_at": datetime.now().isoformat(timespec="seconds"),
        "config_name": None, "reproduces": str(results_dir / run.spec.run_id), "runs": [run.spec.to_json()]})


def _row(results_dir: Path, run_id: str) -> dict[str, Any]:
    table = load_results(results_dir)
    rows = table[table["run_id"] == run_id].to_dict("records")
    return rows[0] if rows else {}


def _close(a: float, b: float, absolute: float, relative: float) -> bool:
    return abs(a - b) <= max(absolute, relative * abs(a))


def side_by_side(original: dict, rerun: dict, on_gpu: bool) -> tuple[list[str], bool]:
    """Lines `metric  original  rerun  verdict`, and whether every judged figure matched."""
    def value(row: dict, field: str) -> Optional[float]:
        v = row.get(field)
        return float(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else None

    lines, same = [f"{'metric':<20} {'original':>18} {'rerun':>18}  verdict"], True
    for field, digits, absolute, relative in JUDGED:
        a, b = value(original, field), value(rerun, field)
        if a is None and b is None:
            continue
        if a is None or b is None:
            verdict, same = "measured on one side only", False
        elif a == b:
            verdict = "identical"
        elif on_gpu and _close(a, b, absolute, relative):
            verdict = f"within GPU tolerance ({b - a:+.{digits}g})"
        else:
            verdict, same = f"differs by {b - a:+.{digits}g}", False
        lines.append(f"{field:<20} {_shown(a, digits):>18} {_shown(b, digits):>18}  {verdict}")
    curves = [(row.get("metric_curve") or {}).get("points") for row in (original, rerun)]
    if curves[0] or curves[1]:
        match = curves[0] == curves[1]
        same = same and (match or on_gpu)
        lines.append(f"{'evaluation curve':<20} {len(curves[0] or []):>12} evals {len(curves[1] or []):>12} evals  "
                     f"{'identical' if match else 'differs'}")
    for field, digits in SHOWN:
        a, b = value(original, field), value(rerun, field)
        lines.append(f"{field:<20} {_shown(a, digits):>18} {_shown(b, digits):>18}  (not expected to match)")
    return lines, same


def _shown(value: Optional[float], digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"


def reproduce(results_dir: Path, run_id: str, out: Optional[Path], results_root: Path,
              say: Callable[[str], None] = print) -> bool:
    """Rerun `run_id` of `results_dir` into a new directory; True when its figures match.

    Every path and name it prints goes through escaped: the directory, its folder names and the
    device its metrics.json records may come from another lab (a newline, an ESC sequence, U+202E)."""
    run = read_recorded_run(results_dir, run_id)
    changes = differences(run)
    device = escaped(run.device[:40]) if run.device else "unknown"  # metrics.json's: anyone's text
    say(f"reproducing {escaped(str(results_dir / run_id))} (seed {run.spec.seed}, device {device})")
    for line in changes:
        say(f"note: {line}")
    if not changes:
        say("same git commit and package versions as recorded")
    config = recorded_config(results_dir, say)  # read before the new directory exists: a refusal leaves none
    new_dir = new_directory(out, results_root, results_dir)
    prepare(results_dir, run, new_dir, config)
    if run.threads:  # the recorded thread count: float sums on CPU depend on it
        os.environ.update({name: str(run.threads) for name in THREAD_VARS})
    counts = run_matrix(new_dir, [run.spec], dataclasses.replace(default_runner(), parallel_jobs=1), out=say)
    rerun = _row(new_dir, run_id)
    on_gpu = (run.device or "").startswith("cuda") or rerun.get("memory_device") == "cuda"
    lines, same = side_by_side(_row(results_dir, run_id), rerun, on_gpu)
    say("")
    say(f"{run_id}: original {escaped(str(results_dir))}, rerun {escaped(str(new_dir))}")
    for line in lines:
        say(line)
    matched = same and counts.get("failed", 0) == 0
    say(("identical" if not on_gpu else f"within tolerance ({TOLERANCE})") if matched
        else "NOT reproduced" + (f" ({counted(len(changes), 'difference')} named above)" if changes else ""))
    return matched
