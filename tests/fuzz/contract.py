"""The contract every reader keeps, checked: no exception but a one-line UserError, no hang (a timer),
memory growing by less than MAX_RSS_GROWTH, only warning/note lines on stderr, no control characters on
the terminal, and nothing written that holds a private file's content or raw control characters.
That the input stays byte-identical is checked by case.py, around the reader."""
from __future__ import annotations

import contextlib
import io
import json
import random
import re
import signal
import traceback
from pathlib import Path
from typing import Optional

from fuzz.readers import CLI_READERS, READERS
from fuzz.tree import files

MAX_RSS_GROWTH = 400 << 20  # a reader whose memory grows more than this read something whole it should not


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def _status_bytes(field: str) -> int:
    """A size from /proc/self/status (VmRSS: the memory now, VmHWM: its peak), in bytes; 0 if absent."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+): the peak then says what this case used."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def run_reader(reader: str, root: Path, work: Path, rng: random.Random,
               timeout_s: float) -> tuple[list[str], Optional[str]]:
    """Run one reader under a timer: (problems, the UserError's message or None)."""
    from lib.errors import UserError, escaped

    problems: list[str] = []
    error = None
    stderr, stdout = io.StringIO(), io.StringIO()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    measured = _reset_peak()
    start_rss = _status_bytes("VmRSS")
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            {**READERS, **CLI_READERS}[reader](root, work, rng)
    except Hang:
        problems.append(f"hang: still reading after {timeout_s} s")
    except UserError as exc:
        error = str(exc)
        if re.search(r"[\n\r\x1b]", escaped(error)):  # as run_cli prints it
            problems.append(f"error of more than one line: {error[:300]!r}")
    except Exception:  # noqa: BLE001 - every other exception breaks the contract; show it
        problems.append(traceback.format_exc(limit=-8))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    grown = _status_bytes("VmHWM") - start_rss if measured else 0
    if grown > MAX_RSS_GROWTH:
        problems.append(f"memory grew by {grown >> 20} MiB: something was read whole")
    for line in stderr.getvalue().splitlines():
        if not re.match(r"(warning|note): ", line):
            problems.append(f"stderr line that is not a warning: {line[:200]!r}")
    for name, text in (("stderr", stderr.getvalue()), ("stdout", stdout.getvalue())):
        for line in text.splitlines():
            if re.search(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", line):
                problems.append(f"control character on {name}: {line[:200]!r}")
    return problems, error


def check_outputs(work: Path) -> list[str]:
    """What was written must not carry the private file's content or raw control characters."""
    problems = []
    for path in files(work, lambda p: p.suffix in (".txt", ".md", ".html", ".json")
                      and "results_root" not in p.parts and "clean" not in p.parts):
        text = path.read_text(errors="replace")
        if "PRIVATE" in text:
            problems.append(f"{path.name}: holds content of a file outside the result directory")
        if path.suffix in (".txt", ".md") and path.name != "config.txt" \
                and re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", text):
            problems.append(f"{path.name}: a raw control character")
        if path.suffix == ".json" and path.name in ("all_results.json", "matrix.json"):
            try:
                json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
            except ValueError as exc:
                problems.append(f"{path.name}: not strict JSON ({str(exc)[:80]})")
    return problems
