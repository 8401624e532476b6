"""Where results came from: git commit, package versions, host, the .config.

Owns what a run records about its making (run.json's `git_commit`,
`git_dirty`, `packages`, `host`) and reading that back from a result
directory for all_results.json (lm-evaluation-harness records the same:
config, git hash, versions) and for `make reproduce`, which names what
differs before it reruns. Values read from a directory are untrusted: only
strings of sane length are kept, anything else is left out.
"""
from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from lib import ROOT
from lib.errors import UserError
from lib.jsonio import CONFIG_MAX_BYTES, found, read_json
from lib.names import leaves

# What a run's figures depend on beyond the code; python is recorded beside them.
PACKAGES = ("torch", "numpy", "pandas", "kconfiglib", "tiktoken", "mlxtend", "scipy")
_TEXT_MAX = 200


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> Optional[str]:
    """HEAD of this checkout, None outside git (a copied tree, no git binary)."""
    return _git("rev-parse", "HEAD") or None


def git_dirty() -> Optional[bool]:
    """Whether tracked files differ from HEAD (a rerun of the commit alone would not be the same code)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def package_versions() -> dict[str, Optional[str]]:
    """{"python": "3.12.3", "torch": "2.13.0", ...}; None for a package that is not installed."""
    versions: dict[str, Optional[str]] = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_record(commit: Optional[str] = None) -> dict[str, Any]:
    """The provenance fields of run.json for a run started now on this machine
    (`commit`: HEAD looked up once by the runner for all its runs)."""
    return {"host": platform.node(), "python": sys.version.split()[0], "git_commit": commit or git_commit(),
            "git_dirty": git_dirty(), "packages": package_versions()}


def _text(value: Any) -> Optional[str]:
    """A recorded string we may print: of sane length, printable (no newline, terminal escape, bidirectional
    control or lone surrogate: make reproduce shows the recorded versions and commit on the terminal)."""
    return value if isinstance(value, str) and 0 < len(value) <= _TEXT_MAX and value.isprintable() else None


def recorded(run_json: Any) -> dict[str, Any]:
    """The provenance fields of a run.json read from anywhere, each checked (missing ones None)."""
    data = run_json if isinstance(run_json, dict) else {}
    packages = data.get("packages") if isinstance(data.get("packages"), dict) else {}
    versions = {name: _text(v) for name, v in packages.items() if _text(name) and _text(v)}
    if _text(data.get("python")):
        versions.setdefault("python", data["python"])
    dirty = data.get("git_dirty")
    return {"git_commit": _text(data.get("git_commit")), "git_dirty": dirty if isinstance(dirty, bool) else None,
            "host": _text(data.get("host")), "packages": versions}


def _one_or_all(values: list[Any]) -> Any:
    """The value all runs share, a sorted list when they differ, None when none recorded it."""
    distinct = sorted({v for v in values if v is not None}, key=str)
    return None if not distinct else distinct[0] if len(distinct) == 1 else distinct


def read_config_text(results_dir: Path, warnings: list[str]) -> Optional[str]:
    path = results_dir / "config.txt"
    try:
        if path.is_symlink() and leaves(path, results_dir):
            warnings.append(f"{path}: a symbolic link out of the result directory; not read")
            return None
        if not path.is_file():
            return None
        if path.stat().st_size > CONFIG_MAX_BYTES:
            warnings.append(f"{path}: larger than {CONFIG_MAX_BYTES} bytes; not copied into all_results.json")
            return None
        return path.read_text(errors="replace")
    except OSError as exc:
        warnings.append(f"{path}: unreadable ({exc.strerror})")
        return None


def directory_provenance(results_dir: Path, run_ids: list[str], layout: str, warnings: list[str]) -> dict[str, Any]:
    """config, git commit (or null and why), package versions and host of a directory's runs.

    `run_ids` must already have passed lib/names (they become paths here).
    """
    records = []
    for run_id in run_ids:
        path = results_dir / run_id / "run.json"
        if found(path):
            try:
                records.append(recorded(read_json(path, within=results_dir)))
            except UserError as exc:  # the same line as lib/results' when it read the file too (printed once)
                warnings.append(str(exc))
    commit = _one_or_all([r["git_commit"] for r in records])
    note = None
    if commit is None:
        note = ("upstream AdamWPrune directories record no git commit" if layout == "upstream"
                else "no run.json records one (runs made outside a git checkout, or before it was recorded)")
    names = sorted({name for r in records for name in r["packages"]})
    return {"config": read_config_text(results_dir, warnings), "git_commit": commit, "git_commit_note": note,
            "git_dirty": _one_or_all([r["git_dirty"] for r in records]),
            "versions": {name: _one_or_all([r["packages"].get(name) for r in records]) for name in names},
            "host": _one_or_all([r["host"] for r in records])}
