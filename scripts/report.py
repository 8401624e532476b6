#!/usr/bin/env python3
"""Regenerate all_results.json, summary_report.txt, report.md, report.html and
graphs/ from a saved result directory: `python scripts/report.py RESULTS_DIR [--out OUT_DIR]`.
A thin wrapper: the logic lives in lib/results/reader.py and lib/report/summary.py."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import _path  # noqa: F401  (the project root on sys.path)
from lib import ROOT  # noqa: E402
from lib.errors import UserError, escaped, run_cli  # noqa: E402
from lib.report.out_dirs import check_report_out  # noqa: E402
from lib.report.summary import default_out_dir, write_reports  # noqa: E402
from lib.results.reader import load_results  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # defaults from the environment: make hands RESULTS and OUT over literally (see the Makefile)
    parser.add_argument("results_dir", type=Path, nargs="?", default=os.environ.get("RESULTS") or None,
                        help="a test_matrix_results/<timestamp> folder, ours or upstream's (default: $RESULTS)")
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT") or None,
                        help="where to write the reports (default: RESULTS_DIR for our own directories; "
                             "test_matrix_results/<name>-report for upstream ones, which are never written into)")
    args = parser.parse_args(argv)
    if args.results_dir is None:
        raise UserError("give the result directory: make report RESULTS=dir [OUT=dir]")
    table = load_results(args.results_dir)
    out = args.out or default_out_dir(args.results_dir, table.attrs["layout"], ROOT / "test_matrix_results")
    check_report_out(out, args.results_dir, table.attrs["layout"] == "own")
    if args.out is None and out != args.results_dir:
        print(f"note: {escaped(str(args.results_dir))} is an upstream directory and is left untouched; "
              f"writing its reports into {escaped(str(out))} (choose with OUT=dir)", file=sys.stderr)
    for path in write_reports(table, out, str(args.results_dir)):
        print(escaped(str(path)))  # our own directory's reports go into it, named as its lab named it


if __name__ == "__main__":
    run_cli(main)
