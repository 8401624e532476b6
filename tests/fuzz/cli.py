"""The driver: fuzz cases one seed after another for a bounded time (or count), printing each case that
breaks the contract with the seed that repeats it, then a summary line. Run as tests/hostile_fuzz.py."""
from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Optional

from fuzz.as_user import warm_up
from fuzz.case import run_case
from fuzz.entry_damage import KINDS, SKIP_KINDS
from fuzz.layouts import SEEDS
from fuzz.readers import CLI_READERS, READERS
from fuzz.tree import cleanup


def main(argv: Optional[list[str]] = None) -> int:
    """Exit status 1 when some case broke the contract, else 0."""
    parser = argparse.ArgumentParser(description="fuzz the readers of result directories for a bounded time")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=0, help="first case seed")
    parser.add_argument("--cases", type=int, default=None, help="stop after this many cases")
    parser.add_argument("--readers", default=",".join(READERS), help=f"of {','.join({**READERS, **CLI_READERS})}")
    parser.add_argument("--layouts", default=",".join(SEEDS))
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--skip-kinds", default="", help=f"leave out these of {','.join(KINDS)}")
    parser.add_argument("--as-user", type=int, default=None,
                        help="read as this uid (run as root): adds mode-000 damage")
    args = parser.parse_args(argv)
    SKIP_KINDS.update(filter(None, args.skip_kinds.split(",")))
    if args.as_user is not None:
        warm_up()
    readers, layouts = args.readers.split(","), args.layouts.split(",")
    deadline = time.monotonic() + args.seconds
    seed, failures, counts = args.seed, 0, {}
    while time.monotonic() < deadline and (args.cases is None or seed - args.seed < args.cases):
        rng = random.Random(seed)
        with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
            outcome = run_case(seed, Path(tmp), rng.choice(layouts), rng.choice(readers), timeout_s=args.timeout,
                               as_user=args.as_user)
            cleanup(Path(tmp))
        counts[outcome.reader] = counts.get(outcome.reader, 0) + 1
        if outcome.problems:
            failures += 1
            print(outcome.line(), flush=True)
        seed += 1
    print(f"{seed - args.seed} cases ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}), "
          f"{failures} broke the contract", flush=True)
    return 1 if failures else 0
