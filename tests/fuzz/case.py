"""One fuzz case: a seed directory built, damaged, given to one reader, and its Outcome (what was done,
what broke the contract). Everything a case draws comes from random.Random(seed), so a seed repeats it."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from fuzz.as_user import open_to, run_reader_as
from fuzz.contract import check_outputs, run_reader
from fuzz.entry_damage import put_kind
from fuzz.hostile_values import ROOT_NAMES
from fuzz.layouts import SEEDS
from fuzz.mutations import mutate
from fuzz.readers import READERS
from fuzz.tree import tree_digest


@dataclass
class Outcome:
    seed: int
    layout: str
    reader: str
    mutations: list[str]
    problems: list[str] = field(default_factory=list)
    error: Optional[str] = None  # the UserError's message, when the reader stopped with one

    def line(self) -> str:
        return (f"seed {self.seed} {self.layout}/{self.reader}: {'; '.join(self.mutations)}\n    "
                + "\n    ".join(self.problems))


def run_case(seed: int, work: Path, layout: Optional[str] = None, reader: Optional[str] = None,
             mutations: Optional[int] = None, timeout_s: float = 30.0, as_user: Optional[int] = None,
             put: Optional[tuple[str, str]] = None) -> Outcome:
    """Build a seed directory in `work`, damage it, run one reader on it, check the contract.
    `as_user`: a uid to read as (needs root; lets mode-000 damage count)."""
    rng = random.Random(seed)
    layout = layout or rng.choice(sorted(SEEDS))
    reader = reader or rng.choice(sorted(READERS))
    parent = work / "results_root"
    parent.mkdir(parents=True)
    root = SEEDS[layout](parent / (rng.choice(ROOT_NAMES) if rng.random() < 0.2 else "run_dir"))
    if put is not None:  # one chosen damage: (path under the seed directory, KINDS entry)
        done = [f"kind: {put_kind(root, put[0], put[1], rng)}"]
    else:
        done = mutate(root, rng, mutations or rng.choice([1, 1, 1, 2, 3]), as_user is not None)
    outcome = Outcome(seed, layout, reader, done)
    before = tree_digest(parent)
    if as_user is None:
        problems, outcome.error = run_reader(reader, root, work, rng, timeout_s)
    else:
        open_to(work, as_user)
        before = tree_digest(parent)
        problems, outcome.error = run_reader_as(as_user, reader, root, work, rng, timeout_s)
    outcome.problems += problems
    after = tree_digest(parent)
    if after != before:
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        outcome.problems.append(f"input changed: {changed[:5]}")
    outcome.problems += check_outputs(work)
    return outcome
