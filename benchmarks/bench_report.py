#!/usr/bin/env python3
"""`make report` on a very large metrics.json: wall time and peak memory (max RSS of the report
process and its graph workers), each against a small directory of the same layout.

Two run folders of about 90 MiB (JSON_MAX_BYTES is 128 MiB):
  foreign   a classifier run of 1.35 million epochs, written compactly: the shape of the 93 MiB
            metrics.json from another lab that cost 18 s and 1.3 GiB;
  gpt2-600k what our trainer writes for GPT-2 at nanoGPT's 600,000 steps with LOG_EVERY=1 (a train_log
            record every step, an evaluation every 100 steps, a mask update every 50), indented as
            lib/jsonio writes it: the largest real file we know of;
and the baseline, the same GPT-2 layout at 1,000 steps.

Usage: python benchmarks/bench_report.py [--repeats 3] [--checkout DIR]
(--checkout: the scripts/report.py of another checkout, e.g. an older commit unpacked with
`git archive COMMIT | tar -x -C DIR`, run with this interpreter). Results: docs/performance.md.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib.jsonio import write_json_atomic  # noqa: E402

# max RSS of the largest process `make report` started (itself or a graph worker), read in a fresh
# process so that earlier measurements do not count
MEASURE = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def spec(run_id: str, model: str, optimizer: str, pruning: str, target: float, variant: str | None = None) -> dict:
    return {"run_id": run_id, "model": model, "optimizer": optimizer, "pruning": pruning, "variant": variant,
            "target_sparsity_pct": target, "seed": 1, "hyperparams": {"training": {"epochs": 1}}}


def write_dir(root: Path, run: dict, metrics: dict, compact: bool) -> int:
    """A one-run result directory of our layout; returns metrics.json's size in bytes."""
    run_dir = root / run["run_id"]
    run_dir.mkdir(parents=True)
    (root / "matrix.json").write_text(json.dumps({"schema_version": 1, "runs": [run]}))
    (run_dir / "run.json").write_text(json.dumps({"schema_version": 1, "spec": run}))
    samples = [{"t_s": 0.1 * i, "memory_mib": 300.0 + i % 50} for i in range(1000)]
    (run_dir / "gpu_stats.json").write_text(json.dumps({
        "schema_version": 1, "device": "cuda", "source": "nvml", "samples": samples,
        "summary": {"n_samples": 1000, "mean_mib": 320.0, "peak_mib": 349.0}}))
    if compact:
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    else:
        write_json_atomic(run_dir / "metrics.json", metrics)
    (run_dir / "result.json").write_text(json.dumps({"schema_version": 1, "run_id": run["run_id"],
                                                     "status": "success", "metrics": {}}))
    return (run_dir / "metrics.json").stat().st_size


def foreign(root: Path, epochs: int = 1_350_000) -> int:
    run = spec("lenet5_sgd_none", "lenet5", "sgd", "none", 0.0)
    rng = random.Random(1)
    history = [{"epoch": i + 1, "train_loss": round(rng.random(), 4), "test_accuracy_pct": round(90 + rng.random(), 3)}
               for i in range(epochs)]
    return write_dir(root, run, {"schema_version": 1, "run_id": run["run_id"], "model": "lenet5",
                                 "task": "classification", "epochs": history, "best_accuracy_pct": 91.0,
                                 "final_accuracy_pct": 90.5, "sparsity": {"global_pct": 0.0}, "wall_time_s": 1.0},
                     compact=True)


def gpt2(root: Path, steps: int, eval_every: int = 100, mask_every: int = 50) -> int:
    run = spec("gpt2_adamwprune_bitter7_state_50", "gpt2", "adamwprune", "state", 50.0, "bitter7")
    rng = random.Random(1)
    evals = [{"step": i, "train_loss": 3 + rng.random(), "val_loss": 3 + rng.random(),
              "val_perplexity": math.exp(3 + rng.random()), "sparsity_pct": 50 * rng.random(),
              "lr": 6e-4 * rng.random(), "elapsed_s": i * 0.31234567, "samples_seen": i * 480,
              "tokens_per_s": 150000 + rng.random(), "achieved_tflops": 120 * rng.random(),
              "mfu_pct": 40 * rng.random(), "at_target": i > steps // 2} for i in range(0, steps + 1, eval_every)]
    train_log = [{"step": i, "train_loss": 3 + rng.random(), "lr": 6e-4 * rng.random(), "elapsed_s": i * 0.31234567}
                 for i in range(1, steps + 1)]
    schedule = [{"step": i, "target_pct": 50 * i / steps, "measured_pct": 50 * i / steps, "threshold": rng.random(),
                 "passes": 1} for i in range(0, steps, mask_every)]
    return write_dir(root, run, {"schema_version": 1, "run_id": run["run_id"], "model": "gpt2",
                                 "task": "language_modeling", "evals": evals, "train_log": train_log,
                                 "pruning_schedule": schedule, "best_val_loss": 3.0, "final_val_loss": 3.1,
                                 "best_perplexity": math.exp(3.0), "final_perplexity": math.exp(3.1),
                                 "sparsity": {"target_pct": 50.0, "global_pct": 50.0}, "wall_time_s": 1.0},
                     compact=False)


def report(checkout: Path, results: Path, out: Path) -> tuple[float, float]:
    """Wall seconds and peak MiB of one `scripts/report.py results --out out`."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, str(checkout / "scripts" / "report.py"),
                           str(results), "--out", str(out)], capture_output=True, text=True, check=True)
    return time.perf_counter() - start, int(done.stdout.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="reports per directory; the fastest counts")
    parser.add_argument("--checkout", type=Path, default=ROOT, help="whose scripts/report.py to measure")
    args = parser.parse_args()
    print(f"{platform.node()}: Python {platform.python_version()}, {args.checkout}")
    with tempfile.TemporaryDirectory() as tmp:
        cases = {"small": lambda d: gpt2(d, 1000), "gpt2-600k": lambda d: gpt2(d, 600_000), "foreign": foreign}
        figures: dict[str, tuple[int, float, float]] = {}
        for name, write in cases.items():
            size = write(Path(tmp) / name)
            runs = [report(args.checkout, Path(tmp) / name, Path(tmp) / f"out-{name}-{i}") for i in range(args.repeats)]
            figures[name] = (size, min(s for s, _ in runs), max(m for _, m in runs))
        base_s, base_mib = figures["small"][1:]
        print(f"{'directory':<10} {'metrics.json':>13} {'wall':>8} {'x small':>8} {'peak RSS':>10} {'x small':>8}")
        for name, (size, seconds, mib) in figures.items():
            print(f"{name:<10} {size / 2**20:>9.1f} MiB {seconds:>6.1f} s {seconds / base_s:>7.1f}x "
                  f"{mib:>6.0f} MiB {mib / base_mib:>7.1f}x")


if __name__ == "__main__":
    main()
