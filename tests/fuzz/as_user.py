"""Reading as another user, so that mode-000 damage bites (root reads every file): a forked child that
drops to that uid, the modes that let it walk the case's folder, and a warm-up that loads every lazily
imported module first, while the interpreter's own folders are still readable."""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from fuzz.contract import run_reader
from fuzz.layouts import SEEDS, gpt2_checkpoint
from fuzz.readers import READERS


def in_child_as(uid: int, call: Callable[[], Any]) -> Any:
    """call() in a forked child running as user and group `uid`, its JSON-able result sent back through a
    pipe; None if the child died without one. The child leaves without running the parent's cleanup."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.write(write_end, json.dumps(call()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as handle:
        data = handle.read()
    os.waitpid(pid, 0)
    return json.loads(data) if data else None


def run_reader_as(uid: int, reader: str, root: Path, work: Path, rng: random.Random,
                  timeout_s: float) -> tuple[list[str], Optional[str]]:
    """run_reader as `uid` (root reads every file; mode 000 bites only others). The caller has run the
    reader once before, so no module is imported from a folder `uid` cannot read."""
    result = in_child_as(uid, lambda: run_reader(reader, root, work, rng, timeout_s))
    return tuple(result) if result is not None else (["the unprivileged reader died without a word"], None)


def open_to(work: Path, uid: int) -> None:
    """Let `uid` walk the tree and write into `work` (it stays root's; modes only)."""
    work.chmod(0o777)
    for folder, dirs, files in os.walk(work):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o777:
                path.chmod(0o777 if "results_root" not in path.parts else 0o755)
            elif stat.S_ISREG(st.st_mode) and st.st_mode & 0o777:
                path.chmod(0o644)
    parent = work
    while parent != parent.parent:  # the folders above must be passable too (pytest's tmp_path is 0700)
        parent = parent.parent
        if parent.stat().st_uid == os.getuid() and not parent.stat().st_mode & 0o001:
            parent.chmod(parent.stat().st_mode | 0o001)


def warm_up() -> None:
    """Run every reader once on undamaged directories, graphs and Welch's test included, so that
    each module imported lazily is loaded before a reader runs as a user who cannot read the
    interpreter's own folders (as_user)."""
    from scipy.stats import ttest_ind

    from lib.provenance import package_versions
    from lib.report.summary import write_reports
    from lib.results.reader import load_results

    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        for layout in SEEDS:
            with tempfile.TemporaryDirectory(prefix="warm-") as tmp:
                root = SEEDS[layout](Path(tmp) / "results_root" / "run_dir")
                write_reports(load_results(root), Path(tmp) / "graphs", "x", graphs=True)
                for reader in READERS:
                    (Path(tmp) / reader).mkdir()
                    run_reader(reader, root, Path(tmp) / reader, random.Random(0), 60)
        with tempfile.TemporaryDirectory(prefix="warm-") as tmp:  # a model built as from_checkpoint builds it
            import torch

            from gpt2.sample import load_model

            gpt2_checkpoint(Path(tmp) / "best.pt")
            load_model(Path(tmp) / "best.pt", torch.device("cpu"))
        ttest_ind([1.0, 2.0], [1.0, 3.0], equal_var=False)
        package_versions()  # importlib.metadata imports email.parser on its first call
