"""Folders that commands write into (report, compare, reproduce): never inside an input.

Inputs (result directories from elsewhere) stay byte-identical, so an output
folder inside one is refused with one line rather than created.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Optional, Sequence

from lib.errors import UserError


def stamped_name(parent: Path, prefix: str) -> Path:
    """parent/<prefix><time>[_N], the first that does not exist yet."""
    stamp = f"{prefix}{datetime.now().strftime('%Y%m%d_%H%M%S')}"
    return next(parent / f"{stamp}{'' if n == 1 else f'_{n}'}" for n in range(1, 1000)
                if not (parent / f"{stamp}{'' if n == 1 else f'_{n}'}").exists())


def inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def make_output_dir(out: Path, inputs: Sequence[Path], *, must_be_empty: bool = False,
                    hint: Optional[str] = None) -> Path:
    """Create `out` (UserError when it lies inside an input, is a file, or is a non-empty folder
    where `must_be_empty`); return it."""
    hint = hint or "give OUT=dir elsewhere"
    for folder in inputs:
        if inside(out, folder):
            raise UserError(f"{out}: inside {folder}, which is never written into; {hint}")
    if out.exists() and (not out.is_dir() or (must_be_empty and any(out.iterdir()))):
        raise UserError(f"{out}: exists and is not {'an empty folder' if must_be_empty else 'a folder'}; "
                        "give a new OUT=dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out}: cannot create ({exc.strerror})") from None
    return out


def check_report_out(out: Path, results_dir: Path, own_layout: bool) -> None:
    """`make report`'s OUT: never inside the directory it reads (its files would be overwritten:
    an upstream all_results.json by ours), except our own directory itself, where reports belong."""
    if own_layout and out.resolve() == results_dir.resolve():
        return
    if inside(out, results_dir):
        raise UserError(f"{out}: inside {results_dir}, which is only read"
                        f"{'' if own_layout else ' (an upstream directory)'}; give OUT=dir elsewhere")
