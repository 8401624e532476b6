#!/usr/bin/env python3
"""`make ci`: run every defconfigs/ci-* matrix end to end; fail if any run fails."""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import _path  # noqa: F401
from kconfig import DEFCONFIGS, normalise
from lib.errors import UserError, counted, run_cli


def main() -> None:
    names = sorted(p.name for p in DEFCONFIGS.glob("ci-*"))
    if not names:
        raise UserError("no ci-* defconfigs in defconfigs/")
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            print(f"=== {name} ===", flush=True)
            config = Path(tmp) / f"{name}.config"
            normalise(DEFCONFIGS / name, config, name=name)
            script = Path(__file__).with_name("matrix.py")
            if subprocess.run([sys.executable, str(script), "run", "--config", str(config)]).returncode:
                failed.append(name)
    if failed:
        print(f"error: ci matrices with failures: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)
    print(f"ci: {counted(len(names), 'matrix', 'matrices')} passed")


if __name__ == "__main__":
    run_cli(main)
