"""Training checkpoints: `last.pt` to resume an interrupted run, `best.pt` to keep.

last.pt lives in `<results>/.resume/<run>/` (beside the run folder, which
`make continue` sets aside); best.pt stays there too until the run finishes,
then moves to `<run>/checkpoints/`. Both are written to a temporary file and
renamed, so a kill mid-write leaves the previous checkpoint intact. A
checkpoint holds everything the next step depends on: weights, optimizer
state, pruning masks and history, the loop's counters and the RNG states
(dropout draws from torch's global generator).

Result directories travel between labs, so a checkpoint is data, never code:
it holds only tensors and plain Python values (the numpy RNG state is stored
as lists), and loads with torch.load(weights_only=True), which refuses any
other object instead of running it. A checkpoint that does not load is set
aside (`last.pt.rejected-<time>`) with one warning, and the run starts afresh.
"""
from __future__ import annotations

import os
import pickle
import random
import sys
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lib.errors import UserError
from lib.jsonio import check_result_dir, found
from lib.names import check_name, is_safe_name, resume_dir

LAST, BEST = "last.pt", "best.pt"
FORMAT_VERSION = 2  # 2: numpy RNG state as plain lists (loads weights-only)


def checkpoint_dir(run_dir: Path) -> Path:
    """Where a finished run keeps best.pt (the one place lib names it)."""
    return run_dir / "checkpoints"


def rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state(legacy=False)
    # the key as a list: an ndarray would need numpy's unpickler, which weights_only refuses
    numpy_state["state"] = {**numpy_state["state"], "key": numpy_state["state"]["key"].tolist()}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
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


def set_aside(path: Path, why: str) -> None:
    """Keep a checkpoint that will not be used beside it, renamed, with one warning line."""
    aside = path.with_name(f"{path.name}.rejected-{datetime.now().strftime('%Y%m%d_%H%M%S_%f')}")
    try:
        path.rename(aside)
        kept = f"kept as {aside.name}"
    except OSError as exc:
        kept = f"could not be set aside ({exc.strerror})"
    print(f"warning: {path}: {why}; {kept}; starting the run afresh", file=sys.stderr, flush=True)


REFUSED = "holds objects other than tensors and plain values (refused, not run)"


class UnreadableCheckpoint(Exception):
    """A file torch.load(weights_only=True) does not read; the message says why, in one line."""


def _read_weights_only(path: Path, device: torch.device | str) -> Any:
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol notice would precede our one error line
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            # weights_only: tensors and plain containers only, so a crafted file cannot run code
            return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:  # torch's message suggests weights_only=False: never for a stranger's file
        raise UnreadableCheckpoint(REFUSED) from None
    except Exception as exc:  # noqa: BLE001 - whatever a damaged or hostile file raises
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UnreadableCheckpoint(f"{type(exc).__name__}: {first_line}" if first_line
                                   else type(exc).__name__) from None


def load_checkpoint(path: Path, device: torch.device, required: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """The checkpoint at `path`, or None when there is none or it does not load
    (then it is set aside with a warning). `required`: keys it must hold."""
    if not path.is_file():
        return None
    try:
        state = _read_weights_only(path, device)
    except UnreadableCheckpoint as exc:
        set_aside(path, str(exc) if str(exc) == REFUSED else f"not a loadable checkpoint ({exc})")
        return None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        version = state.get("format_version") if isinstance(state, dict) else None
        set_aside(path, f"checkpoint format {version!r} is not {FORMAT_VERSION}")
        return None
    missing = [key for key in required if key not in state]
    if missing:
        set_aside(path, f"checkpoint lacks {', '.join(missing)}")
        return None
    return state


def load_weights(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint of weights and plain values (best.pt, last.pt, nanoGPT's ckpt.pt),
    read with weights_only=True: loading never runs code from the file."""
    if not found(path):  # anything else there (unreadable, a directory): torch.load says what
        raise UserError(f"{path}: no such checkpoint")
    try:
        return _read_weights_only(path, device)
    except UnreadableCheckpoint as exc:
        detail = f": {exc}" if str(exc) == REFUSED else f" ({exc})"
        raise UserError(f"{path}: unreadable checkpoint{detail}") from None


def runs_with_checkpoints(results: Path) -> list[str]:
    """Run folders of a result directory that hold a best.pt (invalid names skipped)."""
    return sorted(d.name for d in results.iterdir()  # os.path.isfile: False in a folder we may not read
                  if is_safe_name(d.name) and os.path.isfile(checkpoint_dir(d) / BEST))


def run_checkpoint(results: Path, run: str) -> Path:
    """The checkpoint of run `run` in result directory `results`: its best.pt, or for a
    run still in progress the best.pt or last.pt beside it in .resume/."""
    check_result_dir(results, "RESULTS=")
    check_name(run, "RUN", str(results))
    candidates = [checkpoint_dir(results / run) / BEST, resume_dir(results / run) / BEST,
                  resume_dir(results / run) / LAST]
    chosen = next((path for path in candidates if found(path)), None)
    if chosen is None:
        have = ", ".join(runs_with_checkpoints(results)) or "none"
        raise UserError(f"{results / run}: no checkpoint (best.pt is kept with CONFIG_SAVE_CHECKPOINT=y); "
                        f"runs with one here: {have}")
    return chosen
