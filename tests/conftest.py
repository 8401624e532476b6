"""Shared fixtures: the project root on sys.path, small config helpers, a copy of the repository to run make in."""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@functools.lru_cache(maxsize=None)
def script_module(name: str) -> types.ModuleType:
    """scripts/<name>.py as a module named `<name>_cli`, to call its functions in-process.

    Scripts are run as files, so their `import _path` (and matrix.py's `import kconfig`) need scripts/ on
    sys.path: there only while one loads (scripts/ holds report.py, matrix.py... which must not shadow
    anything later)."""
    spec = importlib.util.spec_from_file_location(f"{name}_cli", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return module


def kconfig_cli() -> types.ModuleType:
    """scripts/kconfig.py (`make olddefconfig`, `make defconfig-NAME`) as a module."""
    return script_module("kconfig")


def write_config(tmp_path: Path, defconfig: str, **overrides: str) -> Path:
    """Normalise defconfigs/<defconfig> plus CONFIG_ overrides into tmp_path/.config: what `make olddefconfig`
    does (scripts/kconfig.py's normalise), in-process; its output is dropped, a bad value raises UserError.
    Its command line is tested in tests/test_config.py."""
    lines = (ROOT / "defconfigs" / defconfig).read_text().splitlines()
    lines += [f"CONFIG_{name}={value}" for name, value in overrides.items()]
    config = tmp_path / ".config"
    config.write_text("\n".join(lines) + "\n")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        kconfig_cli().normalise(config, config)
    return config


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=ROOT)


def copy_repository(target: Path) -> Path:
    """The repository's files (tracked, and new ones git does not ignore) copied to `target`, with .venv a
    link to this one's. `make` and scripts/ write the repository's own .config, defconfig, data/ and
    test_matrix_results/, so a test that changes them runs make in a copy. Modification times are kept:
    .venv/.installed stays newer than requirements.txt, so make installs nothing."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("copying the repository needs git (not a git checkout, or no git)")
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():  # --cached also lists files deleted in the working tree
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    (target / ".venv").symlink_to(ROOT / ".venv")
    return target


def git_ignores(relative: str) -> bool:
    """Whether the checkout's .gitignore keeps `relative` (a path a command writes here) out of `git status`."""
    try:
        return subprocess.run(["git", "check-ignore", "-q", "--no-index", relative], cwd=ROOT).returncode == 0
    except OSError:
        pytest.skip("needs git")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of the repository (copy_repository) under tmp_path, to run make in."""
    return copy_repository(tmp_path / "repo")


def _makefile_user_vars() -> frozenset[str]:
    """The Makefile's USER_VARS (RESULTS, OUT, TRACKER...): make reads them from the environment too."""
    line = next(line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith("USER_VARS :="))
    return frozenset(line.split(":=", 1)[1].split())


# What an enclosing make (`make test`) exports: without them the test's make is a top-level one,
# as a user's is (its messages say `make:`, not `make[1]:`; no -j or variables leak in).
_OUTER_MAKE = frozenset({"MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES", "MAKE_TERMOUT", "MAKE_TERMERR"})


def make(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`make -s ARGS` in `cwd`, as a user types it (variables as NAME=value arguments). The Makefile's
    user variables and an enclosing make's settings are left out of the environment, so neither a
    developer's exported RESULTS or TRACKER nor `make test` changes what a test runs."""
    env = {k: v for k, v in os.environ.items() if k not in _makefile_user_vars() | _OUTER_MAKE}
    return subprocess.run(["make", "-s", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def own_lines(stderr: str) -> list[str]:
    """stderr without the `make: *** [Makefile:N: target] Error 2` line make adds when a recipe fails."""
    return [line for line in stderr.splitlines() if not re.match(r"make(\[\d+\])?: \*\*\* \[", line)]


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr


@pytest.fixture
def isolated_config(tmp_path: Path):
    """A factory for a .config whose results and data live under tmp_path."""
    def make(defconfig: str, **overrides: str) -> Path:
        overrides.setdefault("RESULTS_ROOT", f'"{tmp_path / "results"}"')
        overrides.setdefault("DATA_DIR", f'"{tmp_path / "data"}"')
        return write_config(tmp_path, defconfig, **overrides)
    return make


@pytest.fixture
def one_thread():
    """Tiny tensors: one torch thread is fastest and makes float sums reproducible."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def interpreted():
    """lib.optim.triton_masked_adamw with its kernels built for the interpreter (the variable is read at @jit),
    for the Triton tests (test_triton_step.py, test_triton_spam.py); skipped where Triton is not installed."""
    pytest.importorskip("triton", reason="triton is not installed (optional: pip install triton)")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITON_INTERPRET", "1")
        module = importlib.reload(importlib.import_module("lib.optim.triton_masked_adamw"))
        yield module
    importlib.reload(module)  # as compiled for the device again


@pytest.fixture
def reports(results: Path) -> Path:
    """The module's `results` directory with its reports written into it, as `make` writes them (no graphs)."""
    from lib.report.summary import write_reports
    from lib.results.reader import load_results

    write_reports(load_results(results), results, str(results), graphs=False)
    return results
