#!/usr/bin/env python3
"""Rerun one run from what its folder records and print the metrics side by side:
`python scripts/reproduce.py RESULTS_DIR RUN_ID [--out OUT_DIR]`. Exit code 0 when the
figures match (bit-identical on CPU), 1 when they do not, 2 on a user error.
A thin wrapper: the logic lives in lib/reproduce.py."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import _path  # noqa: F401
from lib.config import ROOT
from lib.errors import UserError, run_cli
from lib.reproduce import reproduce


def main(argv: list[str] | None = None) -> None:
    sys.stdout.reconfigure(line_buffering=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # defaults from the environment: make hands RESULTS, RUN and OUT over literally (see the Makefile)
    parser.add_argument("results_dir", type=Path, nargs="?", default=os.environ.get("RESULTS") or None,
                        help="our result directory holding the run (default: $RESULTS)")
    parser.add_argument("run_id", nargs="?", default=os.environ.get("RUN") or None, help="the run (default: $RUN)")
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT") or None,
                        help="new directory for the rerun (default: test_matrix_results/reproduce_<time>)")
    args = parser.parse_args(argv)
    if args.results_dir is None or args.run_id is None:
        raise UserError("give the directory and the run: make reproduce RESULTS=dir RUN=id [OUT=dir]")
    if not reproduce(args.results_dir, args.run_id, args.out, ROOT / "test_matrix_results"):
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
