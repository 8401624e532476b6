"""Atomic JSON files: every result file is written to a temporary file in the
same folder, flushed, then renamed over the target, so a reader never sees a
half-written file and a crash leaves either the old file or the new one.

A write that fails (a full disk: ENOSPC) removes its temporary file and
raises WriteError, one line naming the path; the target keeps its old
content. JSON has no NaN or infinity, so non-finite numbers are written as
null. Reading treats the file as untrusted input (read_json)."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from lib.errors import UserError, WriteError

SCHEMA_VERSION = 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to `path` through a temp file in the same folder, fsync, rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise WriteError(exc.errno, f"{path}: cannot write ({exc.strerror or exc})") from None
    try:
        # mkstemp creates 0600; results are shared, so use the usual mode.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise WriteError(exc.errno, f"{path}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text to `path` atomically (see write_bytes_atomic)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def finite(data: Any) -> Any:
    """`data` with every non-finite float (NaN, infinity) replaced by None."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(value) for value in data]
    return data


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON to `path` atomically (see write_text_atomic);
    NaN and infinities become null."""
    write_text_atomic(path, json.dumps(finite(data), indent=2, allow_nan=False, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing, unreadable or corrupt file is a UserError naming it.

    Result files may come from anyone, so everything json.load can raise on
    bad input is caught: deep nesting (RecursionError), numbers of thousands
    of digits (ValueError since Python 3.11), a directory in the file's place."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a directory, or a FIFO whose open() would block forever
        raise UserError(f"{path}: not a regular file")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as exc:
        raise UserError(f"{path}: unreadable ({exc.strerror or exc})") from None
    except RecursionError:
        raise UserError(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer too long to convert
        raise UserError(f"{path}: not valid JSON ({str(exc)[:200]})") from None
