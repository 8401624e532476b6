#!/usr/bin/env python3
"""Generate text from a GPT-2 run's checkpoint: `make sample RESULTS=dir RUN=id [PROMPT=...]
[NUM_SAMPLES=1] [MAX_NEW_TOKENS=500] [TEMPERATURE=0.8] [TOP_K=200] [SEED=1337] [DEVICE=auto]`,
or CKPT=path for any checkpoint file (nanoGPT's ckpt.pt too).

Settings come from environment variables (the Makefile exports them), so a
PROMPT with spaces, quotes or $ arrives exactly as typed. A thin wrapper:
the logic lives in gpt2/sample.py and lib/train/checkpoint.py.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Callable, TypeVar

import _path  # noqa: F401  (the project root on sys.path)

from lib.train.checkpoint import run_checkpoint  # noqa: E402
from lib.errors import UserError, escaped, run_cli  # noqa: E402
from lib.names import check_name  # noqa: E402

T = TypeVar("T")


def _setting(env: dict[str, str], name: str, parse: Callable[[str], T], default: T, ok: Callable[[T], bool],
             allowed: str) -> T:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise UserError(f"{name}={raw!r} is not valid; allowed: {allowed}")
    return value


def settings_from_env(env: dict[str, str]):
    """SampleSettings from NAME=value variables; a bad value stops with one line."""
    from gpt2.sample import SampleSettings

    d = SampleSettings()
    return SampleSettings(
        prompt=env.get("PROMPT") or d.prompt,  # unset and empty alike: make exports every variable
        num_samples=_setting(env, "NUM_SAMPLES", int, d.num_samples, lambda v: v >= 1, "an integer >= 1"),
        max_new_tokens=_setting(env, "MAX_NEW_TOKENS", int, d.max_new_tokens, lambda v: v >= 1, "an integer >= 1"),
        temperature=_setting(env, "TEMPERATURE", float, d.temperature, lambda v: 0 < v < float("inf"),
                             "a number > 0"),
        top_k=_setting(env, "TOP_K", int, d.top_k, lambda v: v >= 0, "an integer >= 0 (0: no top-k)"),
        seed=_setting(env, "SEED", int, d.seed, lambda v: v >= 0, "an integer >= 0"))


def checkpoint_path(env: dict[str, str]) -> Path:
    if env.get("CKPT"):
        return Path(env["CKPT"])
    results, run = env.get("RESULTS", ""), env.get("RUN", "")
    if not results or not run:
        raise UserError("give the run: make sample RESULTS=<result dir> RUN=<run id> [PROMPT=...] "
                        "(or CKPT=<checkpoint file>)")
    from gpt2.sample import check_gpt2_run

    check_name(run, "RUN", results)  # before the name becomes a path
    check_gpt2_run(Path(results) / run)
    return run_checkpoint(Path(results), run)


def main(env: dict[str, str] | None = None) -> None:
    env = dict(os.environ) if env is None else env
    settings = settings_from_env(env)
    path = checkpoint_path(env)
    from gpt2.sample import checkpoint_step, load_model, sample_texts
    from lib.train.harness import resolve_device

    requested = env.get("DEVICE", "").strip() or "auto"
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", requested):
        raise UserError(f"DEVICE={requested!r} is not valid; allowed: auto, cpu, cuda, cuda:N or mps")
    device, note = resolve_device(requested)
    if note:
        print(f"note: {note}", file=sys.stderr)
    model, info = load_model(path, device)
    # escaped: the path names a result directory and run from anywhere; the text is what a stranger's
    # weights make of the prompt, and a checkpoint can be made to write ESC sequences (lines and tabs stay)
    print(f"checkpoint: {escaped(str(path))} (step {checkpoint_step(info)}, "
          f"{model.get_num_params(non_embedding=False):,} parameters)", file=sys.stderr)  # as the trainer counts
    for i, text in enumerate(sample_texts(model, settings, device)):
        if i:
            print("---------------")
        print(escaped(text, keep="\n\t"))


if __name__ == "__main__":
    run_cli(main)
