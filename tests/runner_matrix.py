"""Shared by the runner tests: the 12-run ci-runner matrix, one uninterrupted
reference run of it per test session, and process listings."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, write_config
from fixtures.summary_rows import rows as summary_rows

MATRIX = ROOT / "scripts" / "matrix.py"
RUNS = 12


def runner_config(tmp: Path, **overrides: str) -> Path:
    """defconfigs/ci-runner with results and data under `tmp`."""
    overrides.setdefault("RESULTS_ROOT", f'"{tmp / "results"}"')
    overrides.setdefault("DATA_DIR", f'"{tmp.parent / "mnist-data"}"')
    return write_config(tmp, "ci-runner", **overrides)


def results_dir_of(config: Path) -> Path:
    root = config.parent / "results"
    (found,) = [p for p in root.iterdir() if (p / "matrix.json").is_file()]
    return found


def start_matrix(*args: str | Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(MATRIX), *map(str, args)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def reference_run(tmp_path_factory) -> tuple[Path, str]:
    """One uninterrupted ci-runner matrix per session (results dir, output), built by the first test that asks."""
    tmp = tmp_path_factory.getbasetemp() / "reference_run"
    if not (tmp / "output.txt").is_file():
        tmp.mkdir(exist_ok=True)
        config = runner_config(tmp)
        proc = subprocess.run([sys.executable, str(MATRIX), "run", "--config", str(config)], cwd=ROOT,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        (tmp / "output.txt").write_text(proc.stdout)
    return results_dir_of(tmp / ".config"), (tmp / "output.txt").read_text()


def comparable_rows(results_dir: Path) -> dict[str, dict]:
    """Summary rows by run ID without the measured memory, which differs between any two runs."""
    table = summary_rows((results_dir / "summary_report.txt").read_text())
    return {row["id"]: {name: value for name, value in row["columns"].items()
                        if not re.search(r"RSS|GPU|Mem", name)} for row in table}


def statuses(results_dir: Path) -> dict[str, str]:
    """run ID -> status of every result.json; each must parse (a truncated file fails here)."""
    found = {}
    for path in results_dir.glob("*/result.json"):
        found[path.parent.name] = json.loads(path.read_text())["status"]
    for path in results_dir.glob("*/metrics.json"):
        json.loads(path.read_text())
    return found


def trainers_of(root: Path) -> list[int]:
    """Training processes (cmdline with --run-dir under `root`) still alive."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] != psutil.STATUS_ZOMBIE and "--run-dir" in cmdline \
                and any(str(root) in part for part in cmdline):
            found.append(proc.pid)
    return found


def log_copiers_of(root: Path) -> list[int]:
    """output.log copiers (lib/run/output_log.py) still alive with an output.log under `root` open."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE or "lib.run.output_log" not in (proc.info["cmdline"] or []):
            continue
        try:
            if any(str(root) in f.path for f in proc.open_files()):
                found.append(proc.pid)
        except psutil.Error:  # gone meanwhile
            pass
    return found


def wait_for(predicate, timeout_s: float, every_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return bool(predicate())
