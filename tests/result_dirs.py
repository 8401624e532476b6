"""Result directories in the real formats (docs/results-format.md and the
upstream layouts), small enough to write in a test. Figures are chosen by the
caller or drawn from a seeded generator, so every test knows what to expect."""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
from pathlib import Path
from typing import Any, Optional


def write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def run_id(model: str, optimizer: str, pruning: str, target: float, variant: Optional[str] = None,
           seed: Optional[int] = None) -> str:
    parts = [model, optimizer] + ([variant] if variant else []) + [pruning]
    parts += [f"{target:g}"] if pruning != "none" else []
    return "_".join(parts) + (f"_s{seed}" if seed is not None else "")


def spec(model: str, optimizer: str, pruning: str, target: float, variant: Optional[str] = None,
         seed: int = 1, tag_seed: bool = False) -> dict:
    return {"run_id": run_id(model, optimizer, pruning, target, variant, seed if tag_seed else None),
            "model": model, "optimizer": optimizer, "pruning": pruning, "variant": variant,
            "target_sparsity_pct": target, "seed": seed, "hyperparams": {"epochs": 3}}


def classifier_metrics(spec: dict, accuracies: list[float], sparsity: float, weights: int = 246_824,
                       state_factor: int = 2) -> dict:
    """metrics.json of a classifier run, in the layout lib/train/harness.py writes."""
    masks = weights // 4 if spec["pruning"] != "none" else 0
    total = 2 * weights + state_factor * weights + masks
    schedule = [{"step": 10 * i, "target_pct": spec["target_sparsity_pct"] * i / 4,
                 "measured_pct": spec["target_sparsity_pct"] * i / 4 - 0.01} for i in range(1, 5)]
    return {"schema_version": 1, "run_id": spec["run_id"], "model": spec["model"], "task": "classification",
            "epochs": [{"epoch": i + 1, "train_loss": 1.0 / (i + 1), "test_accuracy_pct": acc,
                        "sparsity_pct": sparsity} for i, acc in enumerate(accuracies)],
            "best_accuracy_pct": max(accuracies), "best_epoch": accuracies.index(max(accuracies)) + 1,
            "final_accuracy_pct": accuracies[-1],
            "sparsity": {"target_pct": spec["target_sparsity_pct"], "global_pct": sparsity,
                         "per_layer_pct": {"fc1.weight": sparsity}, "prunable_params": weights // 4,
                         "zero_params": int(weights // 4 * sparsity / 100)},
            "pruning_schedule": schedule if spec["pruning"] != "none" else [],
            "memory": {"weights_bytes": weights, "gradients_bytes": weights,
                       "optimizer_state_bytes": state_factor * weights, "mask_bytes": masks,
                       "training_multiplier": total / weights, "inference_multiplier": 1 - sparsity / 100},
            "wall_time_s": 12.5, "train_time_s": 11.0}


def lm_metrics(spec: dict, val_losses: list[float], sparsity: float) -> dict:
    """metrics.json of a GPT-2 run (task language_modeling)."""
    best = min(val_losses)
    return {"schema_version": 1, "run_id": spec["run_id"], "model": spec["model"], "task": "language_modeling",
            "evals": [{"step": 100 * i, "train_loss": loss + 0.1, "val_loss": loss,
                       "val_perplexity": math.exp(loss), "sparsity_pct": sparsity} for i, loss in enumerate(val_losses)],
            "best_val_loss": best, "final_val_loss": val_losses[-1], "best_perplexity": math.exp(best),
            "final_perplexity": math.exp(val_losses[-1]),
            "sparsity": {"target_pct": spec["target_sparsity_pct"], "global_pct": sparsity},
            "memory": {"weights_bytes": 497_759_232, "gradients_bytes": 497_759_232,
                       "optimizer_state_bytes": 995_518_464, "mask_bytes": 124_439_808,
                       "training_multiplier": 4.25, "inference_multiplier": 1 - sparsity / 100},
            "wall_time_s": 3600.0}


def gpu_stats(mean: float, peak: float, device: str = "cuda", samples: int = 50) -> dict:
    """gpu_stats.json whose samples rise to `peak` and whose summary says `mean` and `peak`."""
    points = [{"t_s": 0.1 * i, "memory_mib": peak * min(1.0, (i + 1) / 5)} for i in range(samples)]
    return {"schema_version": 1, "device": device, "source": "nvml" if device == "cuda" else "rss",
            "memory_scope": "process", "interval_s": 0.1, "sample_stride": 1, "samples": points,
            "summary": {"n_samples": samples, "duration_s": 0.1 * (samples - 1), "mean_mib": mean,
                        "peak_mib": peak}}


def write_run(root: Path, spec: dict, status: str, metrics: Optional[dict], stats: Optional[dict],
              log_tail: Optional[list[str]] = None, **result_fields: Any) -> Path:
    """A run folder; `result_fields` are further result.json keys (`non_finite=True`, `exit_code=3`)."""
    run_dir = root / spec["run_id"]
    write(run_dir / "run.json", {"schema_version": 1, "spec": spec})
    if metrics is not None:
        write(run_dir / "metrics.json", metrics)
    if stats is not None:
        write(run_dir / "gpu_stats.json", stats)
    result = {"schema_version": 1, "run_id": spec["run_id"], "status": status, "metrics": {}}
    if log_tail is not None:
        result["log_tail"] = log_tail
    write(run_dir / "result.json", {**result, **result_fields})
    return run_dir


def write_matrix(root: Path, specs: list[dict]) -> None:
    write(root / "matrix.json", {"schema_version": 1, "config_name": "test", "runs": specs})


def seeded_matrix(root: Path, optimizers: tuple[str, ...] = ("sgd", "adamw"), sparsities: tuple[float, ...] = (50, 90),
                  seeds: tuple[int, ...] = (1, 2, 3), model: str = "lenet5", device: str = "cpu",
                  samples: int = 50, epochs: int = 3) -> Path:
    """A successful classifier matrix (dense + magnitude at each sparsity, every seed),
    figures drawn from a generator seeded by the run ID."""
    specs = [spec(model, o, p, t, seed=s, tag_seed=len(seeds) > 1)
             for o in optimizers for p, t in [("none", 0.0)] + [("magnitude", t) for t in sparsities]
             for s in seeds]
    write_matrix(root, specs)
    for s in specs:
        rng = random.Random(s["run_id"])
        top = 98.0 - s["target_sparsity_pct"] / 20 + rng.gauss(0, 0.3)
        curve = [round(top - 10 / (e + 1) + rng.gauss(0, 0.1), 2) for e in range(epochs)]
        sparsity = round(s["target_sparsity_pct"] - rng.random() * 0.02, 3) if s["pruning"] != "none" else 0.0
        mean = round(300 + 20 * rng.random(), 1)
        write_run(root, s, "success", classifier_metrics(s, curve, sparsity),
                  gpu_stats(mean, round(mean + 50, 1), device, samples))
    return root


def upstream_lm_dir(root: Path, resnet_final_accuracy: Any = 70.25) -> Path:
    """Upstream's other layout: all_results.json empty, each run's figures in training_metrics.json (a
    ResNet-50 classifier, its final accuracy as given, and GPT-2 with a gpu_stats summary)."""
    write(root / "all_results.json", [])
    write(root / "resnet50_sgd_magnitude_90" / "training_metrics.json", {
        "test_accuracy": [60.0, 70.5, 70.25], "sparsity": [0.3, 0.8, 0.9001], "epochs": [1, 2, 3],
        "best_accuracy": 70.5, "final_accuracy": resnet_final_accuracy, "final_sparsity": 0.9001,
        "elapsed_time": 99.0})
    write(root / "gpt2_adamwprune_bitter7_state_50" / "training_metrics.json", {
        "config": {"eval_interval": 100, "optimizer": "adamwprune", "target_sparsity": 0.5},
        "val_losses": [5.0, 3.6, 3.7], "best_val_loss": 3.6, "final_val_loss": 3.7,
        "sparsities": [0.0, 0.25, 0.4998], "iterations": [0, 10, 20], "total_time": 3600.0})
    write(root / "gpt2_adamwprune_bitter7_state_50" / "gpu_stats_gpt2_x_20250101_000000_summary.txt",
          "GPU Monitoring Summary\n\nMemory Usage:\n  Average: 25311.5 MiB\n  Maximum: 25344.0 MiB\n")
    return root


def tree_digest(root: Path) -> dict[str, str]:
    """Every entry under `root` with its content hash (or kind): the same digest means byte-identical."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            found[rel] = "dir"
    return found
