"""Training checkpoints: `last.pt` to resume an interrupted run, `best.pt` to keep.

last.pt lives in `<results>/.resume/<run>/` (beside the run folder, which
`make continue` sets aside); best.pt stays there too until the run finishes,
then moves to `<run>/checkpoints/`. Both are written to a temporary file and
renamed, so a kill mid-write leaves the previous checkpoint intact. A
checkpoint holds everything the next step depends on: weights, optimizer
state, pruning masks and history, the loop's counters and the RNG states
(dropout draws from torch's global generator).
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lib.errors import UserError

CHECKPOINT_DIR = "checkpoints"
LAST, BEST = "last.pt", "best.pt"
FORMAT_VERSION = 1


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save({"format_version": FORMAT_VERSION, **state}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any] | None:
    """The checkpoint at `path`, or None when there is none."""
    if not path.is_file():
        return None
    try:
        # Our own file, holding RNG states and Python containers: not weights-only.
        state = torch.load(path, map_location=device, weights_only=False)
    except (RuntimeError, EOFError, OSError) as exc:
        raise UserError(f"{path}: unreadable checkpoint ({exc}); delete it to start the run afresh") from exc
    if state.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format {state.get('format_version')} is not {FORMAT_VERSION}; "
                        f"delete it to start the run afresh")
    return state


RUN_ID = re.compile(r"[A-Za-z0-9_.-]+")


def valid_run_id(name: str) -> bool:
    """A run folder name safe to join to a path: letters, digits, _ - . and not . or .."""
    return bool(RUN_ID.fullmatch(name)) and name not in (".", "..")


def load_weights(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint of weights and plain values (best.pt, last.pt, nanoGPT's ckpt.pt),
    read with weights_only=True: loading never runs code from the file."""
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: unreadable checkpoint ({first_line})") from exc


def runs_with_checkpoints(results: Path) -> list[str]:
    """Run folders of a result directory that hold a best.pt (invalid names skipped)."""
    return sorted(d.name for d in results.iterdir()
                  if valid_run_id(d.name) and (checkpoint_dir(d) / BEST).is_file())


def run_checkpoint(results: Path, run: str) -> Path:
    """The checkpoint of run `run` in result directory `results`: its best.pt, or for a
    run still in progress the best.pt or last.pt beside it in .resume/."""
    if not results.is_dir():
        raise UserError(f"RESULTS={results}: no such result directory")
    if not valid_run_id(run):
        raise UserError(f"RUN={run!r} is not a run id (letters, digits, _ - . only; see {results})")
    candidates = [checkpoint_dir(results / run) / BEST, results / ".resume" / run / BEST,
                  results / ".resume" / run / LAST]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        have = ", ".join(runs_with_checkpoints(results)) or "none"
        raise UserError(f"{results / run}: no checkpoint (best.pt is kept with CONFIG_SAVE_CHECKPOINT=y); "
                        f"runs with one here: {have}")
    return found
