#!/usr/bin/env python3
"""Compare two result directories (ours or upstream's): `python scripts/compare.py A B [--out OUT]`.
Writes compare.md, compare.txt and graphs/compare_deltas.png|svg; A and B are only read.
A thin wrapper: the logic lives in lib/report/compare.py and lib/report/compare_render.py."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import _path  # noqa: F401
from lib.report.compare import compare_tables
from lib.report.compare_render import out_dir_for, setting_lines, settings_warning, write_compare
from lib.errors import UserError, escaped, run_cli
from lib.results.reader import load_results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # defaults from the environment: make hands A, B and OUT over literally (see the Makefile)
    parser.add_argument("a", type=Path, nargs="?", default=os.environ.get("A") or None,
                        help="the baseline result directory (default: $A)")
    parser.add_argument("b", type=Path, nargs="?", default=os.environ.get("B") or None,
                        help="the result directory compared with it (default: $B)")
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT") or None,
                        help="output folder (default: a new compare_<time> folder here; never inside A or B)")
    args = parser.parse_args(argv)
    if args.a is None or args.b is None:
        raise UserError("give both result directories: make compare A=dir B=dir [OUT=dir]")
    tables = [load_results(path) for path in (args.a, args.b)]
    same = os.path.realpath(args.a)
    if same == os.path.realpath(args.b):  # allowed (a check of the outputs), but rarely what was meant
        print(f"note: A and B are the same directory ({escaped(same)}): every delta is zero", file=sys.stderr)
    comparison = compare_tables(*tables, str(args.a), str(args.b))
    if comparison.settings:  # also in compare.txt/md; on stderr so that it is seen at the terminal
        print(f"warning: {settings_warning(comparison)}", file=sys.stderr)
        for line in setting_lines(comparison):
            print(f"warning:   {line}", file=sys.stderr)
    out = out_dir_for(args.out, [args.a, args.b], Path.cwd())
    paths = write_compare(comparison, out)
    sys.stdout.write((out / "compare.txt").read_text())
    for path in paths:
        print(path)


if __name__ == "__main__":
    run_cli(main)
