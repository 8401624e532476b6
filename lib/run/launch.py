"""The command that starts a run's trainer, and the data step before a matrix.

The runner and every executor go through here. The model registry
(lib/models.py) names each model's trainer module, `<model>/train.py` with a
`main()` (run as `python -m <model>.train --run-dir D`) and a
`prepare_data(spec) -> str` called once per model and data setting before a matrix.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Callable, Iterable

from lib.errors import escaped
from lib.models import model_entry
from lib.spec import RunSpec


def trainer_command(spec: RunSpec, run_dir: Path, python: str = sys.executable) -> list[str]:
    """The argument list that trains one run (never a shell string)."""
    trainer = model_entry(spec.model).trainer  # a UserError for a model this version does not have
    # -u: unbuffered, so output.log shows progress live and nothing is lost on a kill.
    launcher = [python, "-u"]
    gpus = spec.gpus  # more than one: DDP through torchrun
    if gpus > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    return launcher + ["-m", trainer, "--run-dir", str(run_dir), "--no-download"]


def prepare_data(runs: Iterable[RunSpec], out: Callable[[str], None] = print) -> None:
    """Fetch or locate each model's data once, before any run starts. The line each trainer returns is
    escaped: it names the data folder, which `make continue` and `make reproduce` take from a matrix.json
    or run.json that may come from another lab."""
    seen: set[str] = set()
    for spec in runs:
        key = repr((spec.model, dict(spec.model_params), spec.training.data_dir))
        if key not in seen:
            seen.add(key)
            out(escaped(importlib.import_module(model_entry(spec.model).trainer).prepare_data(spec)))
