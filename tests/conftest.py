"""Shared fixtures: the project root on sys.path and small config helpers."""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@functools.lru_cache(maxsize=1)
def kconfig_cli() -> types.ModuleType:
    """scripts/kconfig.py (`make olddefconfig`, `make defconfig-NAME`) as a module, to call in-process.

    It is run as a file, so its `import _path` needs scripts/ on sys.path: there only while it loads
    (scripts/ holds report.py, matrix.py... which must not shadow anything later)."""
    spec = importlib.util.spec_from_file_location("kconfig_cli", ROOT / "scripts" / "kconfig.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return module


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
