"""Damages to what files hold: a hostile value at a JSON key, a key removed, JSON text no writer would
make, and raw byte damage. Each takes the result directory and the case's generator and says what it did."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any, Optional

from fuzz.hostile_values import HOSTILE_VALUES
from fuzz.json_edit import dump, json_files, load, locations, set_at
from fuzz.tree import files


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


def _parsed_json_file(root: Path, rng: random.Random) -> Optional[tuple[Path, Any]]:
    """A JSON file under `root` that parses, drawn at random, with its value; None when there is none."""
    paths = [p for p in json_files(root) if load(p) is not None]
    if not paths:
        return None
    path = rng.choice(paths)
    return path, load(path)


def m_json_value(root: Path, rng: random.Random) -> str:
    picked = _parsed_json_file(root, rng)
    if picked is None:
        return m_bytes(root, rng)
    path, data = picked
    where = rng.choice(locations(data))
    value = rng.choice(HOSTILE_VALUES)
    dump(path, set_at(data, where, value), rng)
    return f"{path.relative_to(root)} at {list(where)} = {_short(value)}"


def m_json_drop(root: Path, rng: random.Random) -> str:
    picked = _parsed_json_file(root, rng)
    if picked is None:
        return m_bytes(root, rng)
    path, data = picked
    where = [w for w in locations(data) if w]
    if not where:
        return m_bytes(root, rng)
    at = rng.choice(where)
    parent = data
    for key in at[:-1]:
        parent = parent[key]
    del parent[at[-1]]
    dump(path, data, rng)
    return f"{path.relative_to(root)}: {list(at)} removed"


def m_json_text(root: Path, rng: random.Random) -> str:
    """Changes a JSON writer would not make: literals, duplicate keys, huge numbers, nesting."""
    paths = json_files(root)
    if not paths:
        return m_bytes(root, rng)
    path = rng.choice(paths)
    text = path.read_text(errors="replace")
    kind = rng.choice(["literal", "duplicate", "digits", "nest", "nest_object", "bom", "trailing"])
    if kind == "literal":
        numbers = list(re.finditer(r"(?<![\w.\"])-?\d+(\.\d+)?([eE][-+]?\d+)?", text))
        if numbers:
            m = rng.choice(numbers)
            text = text[:m.start()] + rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "-0", "1E400"]) \
                + text[m.end():]
    elif kind == "duplicate":
        keys = list(re.finditer(r'"(\w+)":\s*', text))
        if keys:
            m = rng.choice(keys)
            text = text[:m.start()] + f'"{m.group(1)}": {json.dumps(rng.choice(HOSTILE_VALUES[:20]))}, ' \
                + text[m.start():]
    elif kind == "digits":
        numbers = list(re.finditer(r"(?<![\w.\"])\d+", text))
        if numbers:
            m = rng.choice(numbers)
            text = text[:m.start()] + "9" * rng.choice([400, 4300, 5000, 100_000]) + text[m.end():]
    elif kind == "nest":
        text = "[" * 200_000 + "]" * 200_000
    elif kind == "nest_object":
        text = '{"a":' * 50_000 + "1" + "}" * 50_000
    elif kind == "bom":
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
        return f"{path.relative_to(root)}: BOM"
    else:
        text = text + rng.choice(["garbage", "}", "\x00", "\n{}"])
    path.write_text(text, errors="surrogatepass")
    return f"{path.relative_to(root)}: {kind}"


def m_bytes(root: Path, rng: random.Random) -> str:
    paths = files(root, lambda p: p.stat().st_size < 1 << 22)
    if not paths:
        return "nothing"
    path = rng.choice(paths)
    data = bytearray(path.read_bytes())
    kind = rng.choice(["truncate", "flip", "utf8", "empty", "nul", "crlf"])
    if kind == "truncate" and data:
        del data[rng.randrange(len(data)):]
    elif kind == "flip" and data:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == "utf8":
        at = rng.randrange(len(data) + 1)
        data[at:at] = rng.choice([b"\xff\xfe", b"\xed\xa0\x80", b"\xc3", b"\xf4\x90\x80\x80", b"\x80"])
    elif kind == "empty":
        data = bytearray()
    elif kind == "nul":
        data = bytearray(b"\x00" * max(len(data), 1))
    else:
        data = bytearray(bytes(data).replace(b"\n", b"\r\n"))
    path.write_bytes(bytes(data))
    return f"{path.relative_to(root)}: {kind}"
