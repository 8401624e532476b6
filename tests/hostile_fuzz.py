"""The fuzzer of result directories from elsewhere, from the command line; the fuzzer itself is the
package tests/fuzz/ (its docstring says what it damages and the contract every reader keeps).

tests/test_hostile_fuzz.py runs a fixed set of seeds; for a longer search:

    .venv/bin/python tests/hostile_fuzz.py --seconds 600 [--seed N] [--readers report,continue]

which prints every case that breaks the contract with the seed that repeats it.
"""
import sys

from fuzz.cli import main  # tests/ is on sys.path: it is this script's folder

if __name__ == "__main__":
    sys.exit(main())
