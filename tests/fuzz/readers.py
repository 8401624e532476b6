"""The readers a damaged directory is given to, each as users reach it: in-process (READERS: what `make
report`, `make compare`, `make continue`, `make reproduce`, `make sample` and the dry run's estimate read)
and as the commands themselves in a subprocess (CLI_READERS). Each takes the damaged directory, a
scratch folder for what it writes, and the case's generator; checking what they did is contract.py's."""
from __future__ import annotations

import os
import random
import re
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from fuzz import ROOT
from fuzz.layouts import OWN, SEEDS

CLEAN_CONFIG = OWN / "config.txt"


def read_report(root: Path, work: Path, rng: random.Random) -> None:
    from lib.report.summary import write_reports
    from lib.results.reader import load_results

    write_reports(load_results(root), work / "report", str(root), graphs=rng.random() < 0.15)


def read_compare(root: Path, work: Path, rng: random.Random) -> None:
    from lib.report.compare import compare_tables
    from lib.report.compare_render import write_compare
    from lib.results.reader import load_results

    other = SEEDS[rng.choice(list(SEEDS))](work / "clean")
    tables = [load_results(root), load_results(other)]
    if rng.random() < 0.5:
        tables.reverse()
    write_compare(compare_tables(*tables, "a", "b"), work / "compare")


def read_continue(root: Path, work: Path, rng: random.Random) -> None:
    """What `make continue` reads before it runs anything (scripts/matrix.py continue_matrix)."""
    from lib.config import load_settings
    from lib.names import RESUME_DIR, SUPERSEDED_DIR, check_no_links
    from lib.run.runner import config_changes, failure_lines, load_matrix, pending

    runs = load_matrix(root)
    load_settings(root / "config.txt", warn=lambda _: None)
    config_changes(CLEAN_CONFIG, root / "config.txt")
    check_no_links(root, [RESUME_DIR, SUPERSEDED_DIR, *(s.run_id for s in runs)])
    pending(root, runs)
    failure_lines(root, runs)


def _entries(root: Path) -> list[str]:
    """Names a user could give as RUN= (the folder's entries; "x" when there are none or it is unreadable)."""
    try:
        return sorted(p.name for p in root.iterdir()) or ["x"]
    except OSError:
        return ["x"]


def _pick_run(root: Path, rng: random.Random) -> str:
    """A RUN= a user of `make sample` could give: a GPT-2 run's folder when there is one."""
    names = _entries(root)
    return rng.choice([n for n in names if n.startswith("gpt2")] or names)


def read_reproduce(root: Path, work: Path, rng: random.Random) -> None:
    """What `make reproduce` reads and copies before the rerun (lib/reproduce.py), for one run."""
    from lib.reproduce import _row, differences, prepare, read_recorded_run, recorded_config

    run_id = rng.choice(_entries(root))
    run = read_recorded_run(root, run_id)
    differences(run)
    new_dir = work / "reproduce"
    new_dir.mkdir()
    prepare(root, run, new_dir, recorded_config(root, print))
    _row(root, run_id)


def read_sample(root: Path, work: Path, rng: random.Random) -> None:
    """`make sample RESULTS=root RUN=id` up to the model (sampling itself reads nothing more)."""
    import torch

    from gpt2.sample import check_gpt2_run, load_model
    from lib.names import check_name
    from lib.train.checkpoint import run_checkpoint

    run_id = _pick_run(root, rng)
    check_name(run_id, "RUN", str(root))
    check_gpt2_run(root / run_id)
    load_model(run_checkpoint(root, run_id), torch.device("cpu"))


def read_dry_run(root: Path, work: Path, rng: random.Random) -> None:
    """The dry run's time estimate reads result.json and run.json of every directory under the results root."""
    from lib.run.plan import find_past_runs

    find_past_runs(root.parent, {"lenet5", "resnet18", "resnet50", "gpt2"})


READERS: dict[str, Callable[[Path, Path, random.Random], None]] = {
    "report": read_report, "compare": read_compare, "continue": read_continue, "reproduce": read_reproduce,
    "sample": read_sample, "dry_run": read_dry_run}


def _script(*args: Any, env: Optional[dict] = None) -> None:
    """Run scripts/<args> as users do; AssertionError unless it ends in a report (0) or one `error:`
    line (2), with only warning/note/error lines on stderr and no traceback."""
    import subprocess

    proc = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env={**os.environ, **(env or {})})
    lines = proc.stderr.splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode in (0, 2), f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert all(re.match(r"(warning|note|error|checkpoint): ", line) for line in lines), proc.stderr[-2000:]
    assert sum(line.startswith("error: ") for line in lines) == (proc.returncode == 2), proc.stderr[-2000:]


def cli_report(root: Path, work: Path, rng: random.Random) -> None:
    _script(ROOT / "scripts" / "report.py", root, "--out", work / "report")


def cli_compare(root: Path, work: Path, rng: random.Random) -> None:
    other = SEEDS[rng.choice(list(SEEDS))](work / "clean")
    _script(ROOT / "scripts" / "compare.py", *([root, other] if rng.random() < 0.5 else [other, root]),
            "--out", work / "compare")


def cli_sample(root: Path, work: Path, rng: random.Random) -> None:
    run_id = _pick_run(root, rng)
    _script(ROOT / "scripts" / "sample.py", env={"RESULTS": str(root), "RUN": run_id, "MAX_NEW_TOKENS": "2",
                                                 "PROMPT": "!", "DEVICE": "cpu", "CKPT": ""})


# The commands themselves, in a subprocess each (seconds a case, so the driver runs them only when
# --readers names them).
CLI_READERS: dict[str, Callable[[Path, Path, random.Random], None]] = {
    "cli_report": cli_report, "cli_compare": cli_compare, "cli_sample": cli_sample}
