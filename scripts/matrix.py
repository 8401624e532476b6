#!/usr/bin/env python3
"""Matrix commands behind `make`, `make continue` and `make test-matrix-dry-run`."""
from __future__ import annotations

import argparse
import dataclasses
import filecmp
import os
import re
import signal
import sys
from pathlib import Path
from typing import Mapping

import _path  # noqa: F401
from kconfig import defconfig_path, normalise
from lib.config import ROOT, RunnerSettings, Settings, default_settings, defconfig_name, load_settings
from lib.errors import counted, escaped, run_cli
from lib.matrix import RunSpec, expand
from lib.report.summary import write_reports
from lib.results.reader import load_results
from lib.run.plan import plan_lines
from lib.run.runner import (EXECUTORS, check_devices, check_executor, check_runnable, config_changes,
                            continue_settings, create_results_dir, failure_lines, load_matrix, newest_matrix_dir,
                            placement_note, run_matrix, tracker_note)
from lib.trackers.backends import check_trackers
from lib.run.launch import prepare_data

DEFAULT_DEFCONFIG = "lenet5-quick"


def is_empty_config(config: Path) -> bool:
    """True when the file sets nothing: no `CONFIG_...` line and no `# CONFIG_... is not set`."""
    try:
        lines = config.read_text(errors="replace").splitlines()
    except OSError:
        return False  # load_settings reports it, naming the file
    return not any(re.match(r"\s*(CONFIG_\w+=|# CONFIG_\w+ is not set)", line) for line in lines)


def ensure_config(config: Path) -> None:
    if config.is_file() and is_empty_config(config):
        print(f"warning: {config} sets nothing; treating it as no {config.name}", file=sys.stderr)
        config.unlink()
    if not config.exists():
        print(f"No {config.name} found: loading the embedded default `{DEFAULT_DEFCONFIG}` "
              f"(pick another with `make defconfig-NAME` or `make menuconfig`).")
        normalise(defconfig_path(DEFAULT_DEFCONFIG), config, name=DEFAULT_DEFCONFIG)


def _settings(config: Path, executor: str | None) -> Settings:
    """The configuration's settings, on `executor` (make's EXECUTOR=) where one is given."""
    settings = load_settings(config)
    if executor is None:
        return settings
    return dataclasses.replace(settings, runner=dataclasses.replace(settings.runner, executor=executor))


def dry_run(config: Path, executor: str | None = None) -> None:
    settings = _settings(config, executor)
    runs = expand(settings)
    print(f"Test matrix from {config.name}: models {', '.join(settings.models)}; "
          f"optimizers {', '.join(settings.optimizers)}; pruning {', '.join(settings.pruning_methods)}; "
          f"seeds {' '.join(map(str, settings.seeds))}")
    for line in plan_lines(settings.runner, runs, results_root(config)):
        print(line)
    print(f"Total: {counted(len(runs), 'run')} (nothing was run)")


# Paths are printed escaped: `make continue` finishes directories from anywhere, named with a newline,
# an ESC sequence or U+202E as their lab pleased.
def report(results_dir: Path) -> None:
    for path in write_reports(load_results(results_dir), results_dir, results_dir.name):
        print(f"wrote {escaped(str(path))}")


def finish(results_dir: Path, runs: list[RunSpec], counts: dict[str, int]) -> None:
    report(results_dir)
    print(f"\nResults: {escaped(str(results_dir))}\nSummary: {escaped(str(results_dir / 'summary_report.txt'))}")
    if counts["failed"]:
        for line in failure_lines(results_dir, runs):
            print(f"error: {line}", file=sys.stderr)
        sys.exit(1)


def run(config: Path, executor: str | None = None) -> None:
    ensure_config(config)
    settings = _settings(config, executor)
    runs = expand(settings)
    check_runnable(runs)
    if settings.runner.executor == "local":
        check_devices(runs)
    check_trackers(settings.runner.tracking, os.environ)  # a missing login stops here, before any run
    prepare_data(runs)  # before the result directory: missing data leaves no empty one behind
    results_dir = create_results_dir(results_root(config), config, defconfig_name(config), runs)
    run_then_report(results_dir, runs, settings.runner, data_ready=True)


def live_bar_fits() -> bool:
    """A live bar for a terminal that says how wide it is; else one line per start and finish
    (a pipe, a CI log, or a terminal of size 0x0, where tqdm would draw nothing at all)."""
    if not sys.stdout.isatty():
        return False
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns > 0
    except OSError:
        return False


def run_then_report(results_dir: Path, runs: list[RunSpec], settings: RunnerSettings,
                    data_ready: bool = False) -> None:
    try:
        counts = run_matrix(results_dir, runs, settings, bar=live_bar_fits(), data_ready=data_ready)
        finish(results_dir, runs, counts)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished runs are kept; resume with `make continue RESULTS={escaped(str(results_dir))}`",
              file=sys.stderr)
        sys.exit(130)


def results_root(config: Path) -> Path:
    settings = load_settings(config, warn=lambda _: None) if config.exists() else default_settings()
    root = Path(settings.runner.results_root)
    return root if root.is_absolute() else ROOT / root


def continue_matrix(results: str | None, config: Path, executor: str | None = None) -> None:
    if results:
        results_dir = Path(results)
    else:
        results_dir = newest_matrix_dir(results_root(config))
        print(f"continuing {escaped(str(results_dir))}, the newest matrix directory (RESULTS=dir for another)")
    runs = load_matrix(results_dir)
    recorded = results_dir / "config.txt"
    recorded_runner = load_settings(recorded, warn=lambda _: None).runner  # first: it may be absent or damaged
    if config.exists() and not filecmp.cmp(config, recorded, shallow=False):
        changes = config_changes(config, recorded)
        print(f"note: {config.name} differs from {escaped(str(recorded))} ({'; '.join(changes) or 'comments only'}); "
              f"continuing the matrix, timeout and retries recorded in {escaped(results_dir.name)}; "
              f"executor, slots and experiment trackers from {config.name}")
    here = load_settings(config, warn=lambda _: None).runner if config.exists() else None
    settings = continue_settings(recorded_runner, here, executor)
    notes = [tracker_note(recorded_runner.tracking, settings.tracking, recorded, config.name if here else None),
             None if here else placement_note(recorded_runner, settings, recorded)]
    for note in filter(None, notes):
        print(note)
    check_trackers(settings.tracking, os.environ)
    run_then_report(results_dir, runs, settings)


def _sigterm_as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # same clean stop as Ctrl-C: children killed, directory resumable


def parse_args(argv: list[str] | None = None, env: Mapping[str, str] = os.environ) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["run", "continue", "dry-run"])
    parser.add_argument("--config", default=str(ROOT / ".config"))
    # defaults from the environment: make hands RESULTS and EXECUTOR over literally (see the Makefile)
    parser.add_argument("--results", default=env.get("RESULTS") or None,
                        help="result directory for `continue` (default: $RESULTS, else the newest)")
    parser.add_argument("--executor", choices=EXECUTORS, default=env.get("EXECUTOR") or None,
                        help="run here or on Slurm, whatever the configuration says (default: $EXECUTOR; "
                             "else the configuration's, for `continue` the recorded one)")
    args = parser.parse_args(argv)
    # argparse checks `choices` only for a value typed on the command line, never for a default:
    # EXECUTOR=slrum from the environment would otherwise run locally without a word
    if args.executor is not None:
        check_executor(args.executor, "EXECUTOR")
    return args


def main() -> None:
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines reach CI logs and pipes as they happen
    args = parse_args()
    config = Path(args.config)
    if args.command == "run":
        run(config, args.executor)
    elif args.command == "continue":
        continue_matrix(args.results, config, args.executor)
    else:
        ensure_config(config)
        dry_run(config, args.executor)


if __name__ == "__main__":
    run_cli(main)
