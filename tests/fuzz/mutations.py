"""The damages by name, each with the weight it is drawn with, and the draw of one case's damages."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

from fuzz.content_damage import m_bytes, m_json_drop, m_json_text, m_json_value
from fuzz.entry_damage import m_kind, m_mode, m_names, m_remove

MUTATIONS: dict[str, Callable[[Path, random.Random], str]] = {
    "json_value": m_json_value, "json_drop": m_json_drop, "json_text": m_json_text, "bytes": m_bytes,
    "kind": m_kind, "names": m_names, "remove": m_remove, "mode": m_mode}
WEIGHTS = {"json_value": 5, "json_drop": 2, "json_text": 3, "bytes": 3, "kind": 4, "names": 2, "remove": 1,
           "mode": 1}


def mutate(root: Path, rng: random.Random, count: int, allow_mode: bool = False) -> list[str]:
    """`count` random damages; mode 000 only when allowed (the reader runs as another user)."""
    names = [n for n in MUTATIONS if allow_mode or n != "mode"]
    chosen = rng.choices(names, weights=[WEIGHTS[n] for n in names], k=count)
    done = []
    for name in chosen:
        done.append(f"{name}: {MUTATIONS[name](root, rng)}")
    return done
