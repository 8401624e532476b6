"""The one check for names that come from files and become paths.

Result directories and matrices travel between labs, and every name read from
them (run ID, test ID, model, optimizer, pruning method, variant) ends up in a
path: a run folder, a checkpoint folder, a graph file. A name is safe when it
is 1 to MAX_LEN letters, digits, `_`, `-` or `.`, starting with a letter,
digit or `_`: no path separator, never `.` or `..`, never a hidden name that
could collide with `.resume/` or `.superseded/`, never an option-like `-x`.
Readers skip an entry with an unsafe name (with a warning); `make continue`
stops with one `error:` line. Nothing else in lib decides what a safe name is.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Optional

from lib.errors import UserError, shown

MAX_LEN = 128
# The hidden folders of a result directory, beside its run folders: the last.pt of runs
# in progress, and run folders set aside by a rerun. A safe name never collides with them.
RESUME_DIR, SUPERSEDED_DIR = ".resume", ".superseded"


def resume_dir(run_dir: Path) -> Path:
    """Where a run's last.pt lives: beside the run folder, so that `make continue`,
    which sets an unfinished run folder aside, leaves it for the rerun."""
    return run_dir.parent / RESUME_DIR / run_dir.name
_SAFE = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{MAX_LEN - 1}}}")
RULE = f"1-{MAX_LEN} letters, digits, '_', '-' or '.', not starting with '.' or '-'"
# The names a run carries; variant alone may be absent (None).
NAME_FIELDS = ("run_id", "model", "optimizer", "pruning", "variant")


def is_safe_name(value: Any) -> bool:
    """True when `value` is a str that may be used as one path component."""
    return isinstance(value, str) and _SAFE.fullmatch(value) is not None


def name_problem(value: Any, what: str, optional: bool = False) -> Optional[str]:
    """Why `value` cannot be the `what` of a run (None when it can)."""
    if optional and value is None:
        return None
    if is_safe_name(value):
        return None
    return f"{what} {shown(value)} is not a safe name ({RULE})"


def check_name(value: Any, what: str, where: str, optional: bool = False) -> Optional[str]:
    """`value` itself, or a UserError naming `where` (a file, an entry)."""
    problem = name_problem(value, what, optional)
    if problem:
        raise UserError(f"{where}: {problem}")
    return value


def row_name_problem(row: dict[str, Any]) -> Optional[str]:
    """The first unsafe name among a row's NAME_FIELDS (absent ones other than run_id pass)."""
    for field in NAME_FIELDS:
        problem = name_problem(row.get(field), field, optional=field != "run_id")
        if problem:
            return problem
    return None


def check_no_links(folder: Path, names: Iterable[str]) -> None:
    """Refuse to write through a symbolic link planted in a result directory
    (`graphs`, `.resume`, a run folder): it would put files outside it."""
    for name in names:
        if (folder / name).is_symlink():
            raise UserError(f"{folder / name}: a symbolic link; result directories hold none, "
                            f"so nothing is written through it (remove it or give another directory)")


def leaves(path: Path, folder: Path) -> bool:
    """Whether `path` resolves outside `folder` (through a symbolic link, or a loop of them):
    a link planted in a result directory must not make a report read, and copy into its
    output, a file of the machine it runs on (a config.txt linked to ~/.ssh/id_rsa)."""
    try:
        return not path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):  # a loop of links
        return True
