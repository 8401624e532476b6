"""One runner per result directory.

`make` and `make continue` on the same directory would train the same runs
into the same folders. The runner holds an advisory lock (fcntl.flock) on
`<results>/.lock` while it runs; the kernel releases it when the holder
exits or is killed, so a stale lock never blocks anyone. A second runner
stops at once with one line naming the holder's pid.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from lib.errors import UserError

LOCK_NAME = ".lock"


@contextlib.contextmanager
def locked(results_dir: Path) -> Iterator[None]:
    """Hold the directory's lock for the block, or raise UserError naming the holder."""
    path = Path(results_dir) / LOCK_NAME
    try:
        # O_NOFOLLOW: a link planted in the directory is not followed to some other file
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise UserError(f"{path}: cannot open the lock file ({exc.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(f"{results_dir} is being run by process {holder}; wait for it to finish "
                            f"or stop it, then `make continue`") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock; the file stays (removing it would race a new holder)
