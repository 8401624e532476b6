#!/usr/bin/env python3
"""The runner's cost, each figure against a baseline measured in the same invocation.

(a) wall time of a whole matrix (`scripts/matrix.py run`, reports included)
    with PARALLEL_JOBS=1 and with PARALLEL_JOBS=2, and their ratio;
(b) the runner's own wall time per run: `run_matrix` on a one-run matrix
    whose "trainer" sleeps 2 s, against the same command started directly
    (so only the runner's work differs: run folder, shim, sampler, result.json);
(c) real runs (each of the defconfig's runs through `run_matrix`, and its
    trainer command started directly on the same run.json, back to back in
    alternating order): wall time, and CPU seconds of every process involved
    (the runner's own, the trainer's, the sampler's), which other load on the
    machine does not inflate.

Usage: python benchmarks/bench_runner.py [--defconfig ci-quick] [--repeats 2] [--only a|b|c]
Results of past runs: docs/performance.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from kconfig import normalise  # noqa: E402
from lib.run import runner  # noqa: E402
from lib.config import load_settings  # noqa: E402
from lib.matrix import expand  # noqa: E402
from lib.run.task import prepare_run_dir  # noqa: E402
from lib.run.runner import create_results_dir, run_matrix  # noqa: E402
from lib.run.launch import prepare_data, trainer_command  # noqa: E402

SLEEPER = [sys.executable, "-c", "import time; time.sleep(2)"]


def write_config(tmp: Path, defconfig: str, jobs: int) -> Path:
    source = tmp / f"{defconfig}-{jobs}.defconfig"
    source.write_text((ROOT / "defconfigs" / defconfig).read_text()
                      + f'\nCONFIG_PARALLEL_JOBS={jobs}\nCONFIG_RESULTS_ROOT="{tmp / f"results-{jobs}"}"\n'
                      + f'CONFIG_DATA_DIR="{tmp / "data"}"\n')
    config = tmp / f"{defconfig}-{jobs}.config"
    normalise(source, config)
    return config


def matrix_wall_s(config: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "scripts" / "matrix.py"), "run", "--config", str(config)],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _direct(command: list[str], run_dir: Path) -> tuple[float, float]:
    """(wall s, CPU s) of `command` run to its end, output to run_dir/output.log."""
    with open(run_dir / "output.log", "w") as log:
        cpu, start = _cpu_s(resource.RUSAGE_CHILDREN), time.perf_counter()
        subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
        return time.perf_counter() - start, _cpu_s(resource.RUSAGE_CHILDREN) - cpu


def _through_runner(spec, results_dir: Path, settings) -> tuple[float, float]:
    """(wall s, CPU s of the runner itself and every child) of a one-run matrix."""
    cpu = _cpu_s(resource.RUSAGE_CHILDREN) + _cpu_s(resource.RUSAGE_SELF)
    start = time.perf_counter()
    run_matrix(results_dir, [spec], settings.runner, out=lambda line: None)
    return time.perf_counter() - start, _cpu_s(resource.RUSAGE_CHILDREN) + _cpu_s(resource.RUSAGE_SELF) - cpu


def pairs(config: Path, tmp: Path, repeats: int, sleeper: bool) -> list[tuple[str, float, float, float, float]]:
    """(run ID, runner wall, runner CPU, direct wall, direct CPU) per run, `repeats` times, back to back
    in alternating order so that load from elsewhere hits both alike."""
    settings = load_settings(config, warn=lambda _: None)
    runs = expand(settings)[:1] if sleeper else expand(settings)
    prepare_data(runs, lambda line: None)
    runner.prepare_data = lambda runs, out: None  # once per matrix, not a per-run cost: done above
    command = (lambda spec, run_dir: list(SLEEPER)) if sleeper else trainer_command
    runner.trainer_command = command
    rows = []
    for repeat in range(repeats * (10 if sleeper else 1)):
        for number, spec in enumerate(runs):
            results_dir = create_results_dir(tmp / "overhead", config, None, [spec])
            direct_dir = tmp / "direct" / results_dir.name / spec.run_id
            prepare_run_dir(direct_dir, spec, command(spec, direct_dir))  # the run.json the trainer reads
            if (repeat + number) % 2:
                through = _through_runner(spec, results_dir, settings)
                direct = _direct(command(spec, direct_dir), direct_dir)
            else:
                direct = _direct(command(spec, direct_dir), direct_dir)
                through = _through_runner(spec, results_dir, settings)
            rows.append((spec.run_id, *through, *direct))
    runner.trainer_command = trainer_command
    return rows


def summarise(label: str, rows: list[tuple[str, float, float, float, float]]) -> None:
    wall = [r[1] - r[3] for r in rows]
    cpu = [r[2] - r[4] for r in rows]
    print(f"{label} ({len(rows)} pairs): wall runner median {statistics.median(r[1] for r in rows):.2f} s, "
          f"direct {statistics.median(r[3] for r in rows):.2f} s, overhead median {statistics.median(wall):+.2f} s "
          f"(min {min(wall):+.2f}, max {max(wall):+.2f}); CPU overhead median {statistics.median(cpu):+.2f} s "
          f"(min {min(cpu):+.2f}, max {max(cpu):+.2f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--defconfig", default="ci-quick")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", choices=["a", "b", "c"], default=None)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; "
          f"defconfig {args.defconfig}; load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        configs = {jobs: write_config(tmp, args.defconfig, jobs) for jobs in (1, 2)}
        if args.only in (None, "a"):
            for repeat in range(1, args.repeats + 1):
                one, two = matrix_wall_s(configs[1]), matrix_wall_s(configs[2])
                print(f"(a) [{repeat}] matrix wall time: PARALLEL_JOBS=1 {one:.1f} s, PARALLEL_JOBS=2 {two:.1f} s, "
                      f"ratio {one / two:.2f}x", flush=True)
        if args.only in (None, "b"):
            summarise("(b) runner around a 2 s sleeper", pairs(configs[1], tmp, args.repeats, sleeper=True))
        if args.only in (None, "c"):
            rows = pairs(configs[1], tmp, args.repeats, sleeper=False)
            for run_id, r_wall, r_cpu, d_wall, d_cpu in rows:
                print(f"    {run_id}: runner {r_wall:.2f} s wall / {r_cpu:.2f} s CPU, "
                      f"direct {d_wall:.2f} s wall / {d_cpu:.2f} s CPU")
            summarise("(c) real runs", rows)
        print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
