"""Reading a JSON file of a result directory, addressing a place in it by its key path, and writing it
back as a careless writer would: the editing the JSON damages share."""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from fuzz.tree import files


def json_files(root: Path) -> list[Path]:
    """The JSON files under `root` small enough to edit in memory."""
    return files(root, lambda p: p.suffix == ".json" and p.stat().st_size < 1 << 20)


def load(path: Path) -> Any:
    """The file's JSON value, or None when it is not JSON (or nested too deep to parse)."""
    try:
        return json.loads(path.read_bytes())
    except (ValueError, RecursionError):
        return None


def locations(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a JSON value (capped, so large sample lists do not dominate)."""
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found += locations(value, prefix + (key,))
    elif isinstance(data, list):
        for i, value in enumerate(data[:6]):
            found += locations(value, prefix + (i,))
    return found


def set_at(data: Any, where: tuple, value: Any) -> Any:
    """`data` with the value at key path `where` replaced (the whole value when `where` is empty)."""
    if not where:
        return value
    data[where[0]] = set_at(data[where[0]], where[1:], value)
    return data


def dump(path: Path, data: Any, rng: random.Random) -> None:
    # NaN and Infinity as Python writes them: literals JSON lacks but many writers emit
    text = json.dumps(data, allow_nan=True, ensure_ascii=rng.random() < 0.5)
    path.write_text(text, errors="surrogatepass")
