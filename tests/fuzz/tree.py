"""Walking a result tree without following its links: the files and folders damages pick from, the
digest that shows the input untouched, and removing a tree whose entries may be mode 000."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
from pathlib import Path
from typing import Callable


def files(root: Path, predicate: Callable[[Path], bool] = lambda p: True) -> list[Path]:
    """Regular files under `root` (no links) for which predicate holds, in a fixed order."""
    out = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink() and predicate(path):
                out.append(path)
    return out


def dirs(root: Path) -> list[Path]:
    """Folders under `root` (no links to one), sorted."""
    return sorted(Path(folder) / d for folder, subdirs, _ in os.walk(root) for d in subdirs
                  if not (Path(folder) / d).is_symlink())


def tree_digest(root: Path) -> dict[str, str]:
    """Every entry under `root` (links not followed, FIFOs and devices never opened) with its kind,
    mode and, for a regular file, size and content hash; equal digests mean an untouched tree."""
    found = {}
    for folder, subdirs, names in os.walk(root):
        for name in sorted(subdirs + names):
            path = Path(folder) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                found[rel] = "link:" + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                found[rel] = f"{st.st_mode:o}:{st.st_size}:{_file_hash(path, st.st_size)}"
            else:
                found[rel] = f"{stat.S_IFMT(st.st_mode):o}:{st.st_mode & 0o7777:o}"
    return found


def _file_hash(path: Path, size: int) -> str:
    if size > 64 << 20:  # the sparse huge files: their size says enough, reading them here would be slow
        return "huge"
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except PermissionError:  # a mode-000 file when not root: its mode is in the digest
        return "unreadable"
    return digest.hexdigest()


def cleanup(work: Path) -> None:
    """Remove `work`, mode-000 entries included (for a reader that is not root)."""
    for folder, subdirs, names in os.walk(work):
        for name in subdirs + names:
            path = Path(folder) / name
            if not path.is_symlink():
                with contextlib.suppress(OSError):
                    path.chmod(0o700)
    shutil.rmtree(work, ignore_errors=True)
