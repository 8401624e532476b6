"""The undamaged result directories the fuzzer starts from, one builder per layout (SEEDS).

Each builder writes a fresh copy under the path it is given; it never damages anything."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from result_dirs import gpu_stats, lm_metrics, spec, upstream_lm_dir, write, write_matrix, write_run

from fuzz import ROOT

LEGACY = ROOT / "tests/fixtures/legacy/test_matrix_results_20250903_180836"
OWN = ROOT / "tests/fixtures/own/20261130_225800"

TINY_GPT = {"block_size": 16, "vocab_size": 300, "n_layer": 1, "n_head": 2, "n_embd": 8, "dropout": 0.0,
            "bias": True}


def gpt2_checkpoint(path: Path) -> None:
    """A checkpoint of a tiny GPT-2 (TINY_GPT), as our trainer saves one, at `path`."""
    import torch

    from gpt2.model import GPT, GPTConfig

    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_args": TINY_GPT, "model": GPT(GPTConfig(**TINY_GPT)).state_dict(), "iter_num": 3}, path)


def seed_legacy(root: Path) -> Path:
    shutil.copytree(LEGACY, root, symlinks=True)
    return root


def seed_own(root: Path) -> Path:
    shutil.copytree(OWN, root, symlinks=True)
    return root


def seed_own_lm(root: Path) -> Path:
    """Our layout: a GPT-2 run with a checkpoint (for `make sample`) and a failed one, two seeds."""
    specs = [spec("gpt2", "adamw", "none", 0, seed=s, tag_seed=True) for s in (1, 2)]
    specs.append(spec("gpt2", "adamwprune", "state", 50, variant="bitter7"))
    write_matrix(root, specs)
    write_run(root, specs[0], "success", lm_metrics(specs[0], [4.0, 3.5, 3.4], 0.0), gpu_stats(900, 1000))
    write_run(root, specs[1], "success", lm_metrics(specs[1], [4.1, 3.6, 3.5], 0.0), gpu_stats(910, 1010))
    write_run(root, specs[2], "failed", None, None, ["Traceback (most recent call last):", "boom"])
    shutil.copy(OWN / "config.txt", root / "config.txt")
    gpt2_checkpoint(root / specs[0]["run_id"] / "checkpoints" / "best.pt")
    return root


def seed_upstream_lm(root: Path) -> Path:
    """Upstream's other layout: an empty all_results.json, figures in training_metrics.json."""
    upstream_lm_dir(root)
    write(root / "resnet50_sgd_magnitude_90" / "gpu_stats_resnet50_x_20250101_000000.json",
          [{"memory_used": 100.0 + i, "elapsed_seconds": float(i), "gpu_type": "nvidia"} for i in range(5)])
    return root


SEEDS: dict[str, Callable[[Path], Path]] = {
    "legacy": seed_legacy, "own": seed_own, "own_lm": seed_own_lm, "upstream_lm": seed_upstream_lm}
