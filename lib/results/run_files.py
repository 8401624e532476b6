"""Lenient reading of one run folder, shared by the result-directory readers.

Owns: loading a run's JSON files so that a missing or corrupt file becomes a
warning ("path: what") and empty cells instead of an error, turning values
into floats, thinning long sample lists for graphs, and taking a run ID
apart (`lenet5_adamwprune_bitter7_state_50_s2`). It decides nothing about a
directory's layout: lib/results and lib/results/upstream do.
"""
from __future__ import annotations

import contextlib
import gc
import math
import re
from pathlib import Path
from typing import Any, Iterator, Optional

from lib.errors import UserError, escaped, shown
from lib.jsonio import found, read_json, read_regular
from lib.models import model_names
from lib.names import leaves
from lib.spec import MAX_SEED, PRUNING_METHODS

# Graphs draw a memory timeline per run; a few hundred points per line is
# what a figure can show, and keeps a 60-run table small.
TIMELINE_POINTS = 400
LOG_LINE_CHARS = 500  # a log line (or an upstream error shown as one) longer than this is cut in reports
FLOAT_LIMIT = 1e308  # an integer within it converts to a float without overflow

Row = dict[str, Any]


class RunFiles:
    """The files of one run folder, read leniently: problems become warnings."""

    def __init__(self, run_dir: Path, warnings: list[str]) -> None:
        self.run_dir = run_dir
        self.global_warnings = warnings
        self.warnings: list[str] = []  # this run's, for the row

    def warn(self, path: Path | str, what: str) -> None:
        self._add(f"{self.run_dir / path}: {what}")

    def _add(self, message: str) -> None:
        self.warnings.append(message)
        self.global_warnings.append(message)

    def _leaves(self, name: str) -> bool:
        """True (and a warning) when the file is a symbolic link out of the result directory."""
        if leaves(self.run_dir / name, self.run_dir.parent):
            self.warn(name, "a symbolic link out of the result directory; not read")
            return True
        return False

    def load(self, name: str, expected: bool, kind: type = dict) -> Any:
        """The file's JSON value of type `kind`, or an empty one when absent
        (a warning if `expected`), corrupt or of another type (a warning)."""
        path = self.run_dir / name
        if not found(path):
            if expected:
                self.warn(name, "file not found")
            return kind()
        if self._leaves(name):
            return kind()
        try:
            data = read_json(path)
        except UserError as exc:  # its message already names the path
            self._add(str(exc))
            return kind()
        if not isinstance(data, kind):
            self.warn(name, f"not a JSON {'object' if kind is dict else 'list'}")
            return kind()
        return data

    def text(self, name: str, max_bytes: int) -> Optional[str]:
        """The file's text (bytes that are not UTF-8 replaced); None and a warning when it is a link
        out of the result directory, not a regular file, larger than max_bytes or unreadable."""
        if self._leaves(name):
            return None
        try:
            return read_regular(self.run_dir / name, max_bytes).decode("utf-8", errors="replace")
        except UserError as exc:  # its message already names the path
            self._add(str(exc))
            return None

    def number(self, data: Any, keys: tuple[str, ...], name: str) -> float:
        """data[k0][k1]... as a float; NaN when absent, NaN and a warning when not a number."""
        value: Any = data
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return self.as_float(value, name, ".".join(keys))

    def as_float(self, value: Any, name: str, what: str) -> float:
        """`value` as a finite float; NaN when absent, NaN and a warning when not a finite number."""
        if value is None:
            return math.nan
        number = to_float(value)
        if number is None or not math.isfinite(number):
            self.warn(name, f"{what} is not a {'number' if number is None else 'finite number'} ({shown(value)})")
            return math.nan
        return number

    def points(self, records: Any, keys: tuple[str, ...], name: str, consume: bool = False) -> list[list[float]]:
        """[[r[k0], r[k1], ...] for r in records] as floats; records that are not objects are skipped.
        A finite float or a float-sized integer is taken as it is; anything else goes through as_float
        (NaN, a warning when it is no finite number). Curves may hold millions of records: the cyclic
        garbage collector, which a million new lists would start again and again over every object of
        the parsed file, is held off meanwhile (rows of floats hold no cycles). `consume`: the caller
        hands the list over; each record is dropped from it once converted, so that a million parsed
        records and their points are not held at once."""
        with _collector_off():
            return self._points(records, keys, name, consume)

    def _points(self, records: Any, keys: tuple[str, ...], name: str, consume: bool) -> list[list[float]]:
        rows = []
        for index, record in enumerate(records if isinstance(records, list) else []):
            if consume:
                records[index] = None
            if not isinstance(record, dict):
                continue
            row = []
            for key in keys:
                value = record.get(key)
                kind = type(value)
                if kind is float and value - value == 0.0:  # finite: inf - inf and NaN - NaN are NaN
                    row.append(value)
                elif kind is int and -FLOAT_LIMIT < value < FLOAT_LIMIT:
                    row.append(float(value))
                else:
                    row.append(self.as_float(value, name, key))
            rows.append(row)
        return rows


@contextlib.contextmanager
def _collector_off() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def to_float(value: Any) -> Optional[float]:
    """A JSON number as a float (NaN and infinities kept); None for anything else,
    booleans and integers too large for a float included."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def one_line(value: Any, limit: int = LOG_LINE_CHARS) -> str:
    """str(value) cut to `limit` characters, control characters (newlines, terminal escapes) shown
    as \\xNN: a log line from a result file must not forge lines of summary_report.txt."""
    return escaped(str(value)[:limit])


def thin(items: list, limit: int = TIMELINE_POINTS) -> list:
    """Every k-th item so that at most `limit` remain, the last one always kept."""
    if len(items) <= limit:
        return items
    step = math.ceil(len(items) / limit)
    kept = items[::step]
    return kept if kept[-1] is items[-1] else kept + [items[-1]]


def curve(axis: str, points: list[list[float]]) -> Optional[dict]:
    """A curve cell: {"axis": "epoch" | "step" | "eval", "points": [[x, y...], ...]}, None when empty."""
    return {"axis": axis, "points": points} if points else None


def parse_run_id(run_id: str) -> Row:
    """Model, optimizer, variant, pruning, target sparsity (%) and seed from a run ID.

    `model_optimizer[_variant]_pruning[_sparsity][_s<seed>]`; parts that do not
    fit the shape are None (an upstream `_0` after `none` is its sparsity)."""
    parts = run_id.split("_")
    cells: Row = {"model": parts[0] if parts[0] in model_names() else None, "optimizer": None, "variant": None,
                  "pruning": None, "target_sparsity_pct": math.nan, "seed": None}
    if len(parts) > 2 and re.fullmatch(r"s\d{1,10}", parts[-1]) and int(parts[-1][1:]) <= MAX_SEED:
        cells["seed"] = int(parts.pop()[1:])
    if len(parts) > 2 and re.fullmatch(r"\d+(\.\d+)?", parts[-1]):
        cells["target_sparsity_pct"] = float(parts.pop())
    if len(parts) >= 3 and parts[-1] in PRUNING_METHODS:
        cells["pruning"] = parts.pop()
        cells["optimizer"] = parts[1]
        cells["variant"] = "_".join(parts[2:]) or None
    if cells["pruning"] == "none":
        cells["target_sparsity_pct"] = 0.0
    return cells
