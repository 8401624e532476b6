"""Which module trains which model, the command that starts it, and its data step.

The runner and every executor go through here; a trainer module is
`<model>/train.py` with a `main()` (run as `python -m <model>.train --run-dir D`)
and a `prepare_data(spec) -> str` called once per model and data setting before a matrix.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Callable, Iterable

from lib.errors import UserError
from lib.spec import RunSpec

TRAINERS = {"lenet5": "lenet5.train", "resnet18": "resnet18.train", "resnet50": "resnet50.train",
            "gpt2": "gpt2.train"}


def gpus_per_run(spec: RunSpec) -> int:
    """GPUs a run asks for (more than one means DDP through torchrun)."""
    return spec.gpus


def trainer_command(spec: RunSpec, run_dir: Path, python: str = sys.executable) -> list[str]:
    """The argument list that trains one run (never a shell string)."""
    if spec.model not in TRAINERS:
        raise UserError(f"model {spec.model!r} has no trainer in this version (have: {', '.join(TRAINERS)})")
    # -u: unbuffered, so output.log shows progress live and nothing is lost on a kill.
    launcher = [python, "-u"]
    gpus = gpus_per_run(spec)
    if gpus > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    return launcher + ["-m", TRAINERS[spec.model], "--run-dir", str(run_dir), "--no-download"]


def prepare_data(runs: Iterable[RunSpec], out: Callable[[str], None] = print) -> None:
    """Fetch or locate each model's data once, before any run starts."""
    seen: set[str] = set()
    for spec in runs:
        key = repr((spec.model, dict(spec.model_params), spec.training.data_dir))
        if key not in seen:
            seen.add(key)
            out(importlib.import_module(TRAINERS[spec.model]).prepare_data(spec))
