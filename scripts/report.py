#!/usr/bin/env python3
"""Regenerate all_results.json, summary_report.txt and report.md from a saved
result directory: `python scripts/report.py RESULTS_DIR [--out OUT_DIR]`.
A thin wrapper: the logic lives in lib/results.py and lib/report.py."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Scripts run as files, so the project root is not on sys.path by itself.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.errors import run_cli  # noqa: E402
from lib.report import write_reports  # noqa: E402
from lib.results import load_results  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path, help="a test_matrix_results/<timestamp> folder")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the reports (default: RESULTS_DIR)")
    args = parser.parse_args(argv)
    table = load_results(args.results_dir)
    for path in write_reports(table, args.out or args.results_dir, str(args.results_dir)):
        print(path)


if __name__ == "__main__":
    run_cli(main)
