"""Atomic JSON files: every result file is written to a temporary file in the
same folder, flushed, then renamed over the target, so a reader never sees a
half-written file and a crash leaves either the old file or the new one.

A write that fails (a full disk: ENOSPC) removes its temporary file and
raises WriteError, one line naming the path; the target keeps its old
content. JSON has no NaN or infinity, so non-finite numbers are written as
null. Reading treats the file as untrusted input (read_json, read_regular):
only regular files, never more than a size limit."""
from __future__ import annotations

import json
import math
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, Optional

from lib.errors import UserError, WriteError
from lib.names import leaves

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


# Above the largest result file of ours (GPT-2 at nanoGPT's 600,000 steps with LOG_EVERY=1: an 88 MiB
# metrics.json, a train_log record per step; upstream's largest, a gpu_stats json of one sample a
# second, is about 0.3 MB an hour); a larger file is refused before it is read, since parsing costs
# several times a file's size in memory (benchmarks/bench_report.py).
JSON_MAX_BYTES = 128 << 20
CONFIG_MAX_BYTES = 1 << 20  # a .config (config.txt) is a few kilobytes; a larger file is not one


def found(path: str | os.PathLike) -> bool:
    """Whether anything is at `path`, a dangling symbolic link included. Python 3.11's Path.exists
    raises PermissionError inside a folder the user may not read; here that counts as found, so
    that the read which follows names the file and says it is unreadable."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


def check_readable_dir(path: str | os.PathLike) -> None:
    """UserError naming the directory when its entries cannot be listed or looked at (no permission)."""
    try:
        os.scandir(path).close()  # needs read permission
        os.stat(os.path.join(path, "."))  # needs search permission, as every file inside does
    except OSError as exc:
        raise UserError(f"{path}: unreadable ({exc.strerror or exc})") from None


def check_result_dir(path: str | os.PathLike, label: str = "", hint: str = "") -> None:
    """UserError unless `path` is a directory whose entries can be read: "no such result directory",
    "a file, not a result directory" (a mistyped RESULTS= naming a file), or unreadable. `label` comes
    before the path (`RESULTS=`), `hint` after the message."""
    where = f"{label}{path}"
    try:
        kind = "dir" if os.path.isdir(path) else "file" if os.path.lexists(path) else None
    except OSError:  # unreachable: check_readable_dir names it
        kind = "dir"
    if kind != "dir":
        what = "a file, not a result directory" if kind == "file" else "no such result directory"
        raise UserError(f"{where}: {what}" + (f" {hint}" if hint else ""))
    check_readable_dir(path)


def _mib(size: int) -> str:
    return f"{size / 2**20:g} MiB"


def read_regular(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; anything else is a UserError naming it.

    Opened without blocking and checked on the open descriptor, so a FIFO (whose read would wait
    forever), a device (/dev/zero never ends) or a directory in a file's place is refused, and
    at most max_bytes + 1 bytes are ever read, whatever the file claims its size is."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as exc:  # no permission, a loop of symbolic links, a name too long
        raise UserError(f"{path}: unreadable ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"{path}: not a regular file")
        if info.st_size > max_bytes:
            raise UserError(f"{path}: {info.st_size:,} bytes, more than the {_mib(max_bytes)} a result file "
                            "may have; not read")
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise UserError(f"{path}: unreadable ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:  # it grew since, or its size is not what it holds
        raise UserError(f"{path}: more than the {_mib(max_bytes)} a result file may have; not read")
    return data


# A "\\udXXX" escape may stand for a lone surrogate, which JSON allows and no UTF-8 text can hold.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATES = re.compile(r"[\ud800-\udfff]")


def _without_surrogates(value: Any) -> Any:
    """Parsed JSON with each lone surrogate in its strings and keys replaced by U+FFFD: a stranger's
    "\\ud800" otherwise reaches a report, whose UTF-8 encoding (or pandas') raises on it. A loop,
    not recursion: json.loads took as deep a nesting as the interpreter's recursion limit allows."""
    def fix(text: str) -> str:
        return _SURROGATES.sub("\ufffd", text)

    top = [value]
    todo: list[tuple[Any, Any]] = [(top, 0)]
    while todo:
        container, key = todo.pop()
        item = container[key]
        if isinstance(item, str):
            container[key] = fix(item)
        elif isinstance(item, list):
            todo += [(item, i) for i in range(len(item))]
        elif isinstance(item, dict):
            container[key] = item = {fix(k): v for k, v in item.items()}
            todo += [(item, k) for k in item]
    return top[0]


def read_json(path: str | os.PathLike, max_bytes: int = JSON_MAX_BYTES, within: Optional[Path] = None) -> Any:
    """Read a JSON file; a missing, unreadable, oversized or corrupt file is a UserError naming it.

    Result files may come from anyone, so everything json.loads can raise on
    bad input is caught: deep nesting (RecursionError), numbers of thousands
    of digits (ValueError since Python 3.11), and read_regular refuses a
    directory, FIFO or device in the file's place and a file over max_bytes.
    `within`: the result directory the file belongs to; a symbolic link out of
    it is refused unread (lib/names.leaves)."""
    path = Path(path)
    if within is not None and leaves(path, within):
        raise UserError(f"{path}: a symbolic link out of the result directory; not read")
    data = read_regular(path, max_bytes)
    surrogates = _SURROGATE_ESCAPE.search(data) is not None
    try:
        text = data.decode("utf-8")
        del data  # parsing takes several times the file's size: not the bytes too (a 90 MiB file: 90 MiB less)
        value = json.loads(text)
        return _without_surrogates(value) if surrogates else value
    except RecursionError:
        raise UserError(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer too long to convert
        raise UserError(f"{path}: not valid JSON ({str(exc)[:200]})") from None
