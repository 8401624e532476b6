"""Shared fixtures: the project root on sys.path and small config helpers."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def write_config(tmp_path: Path, defconfig: str, **overrides: str) -> Path:
    """Normalise defconfigs/<defconfig> plus CONFIG_ overrides into tmp_path/.config."""
    lines = (ROOT / "defconfigs" / defconfig).read_text().splitlines()
    lines += [f"CONFIG_{name}={value}" for name, value in overrides.items()]
    config = tmp_path / ".config"
    config.write_text("\n".join(lines) + "\n")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "kconfig.py"), "--config", str(config), "olddefconfig"],
                   check=True, capture_output=True, cwd=ROOT)
    return config


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=ROOT)


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
