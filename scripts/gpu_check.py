#!/usr/bin/env python3
"""`make gpu-check`: the project's GPU figures (JSON + a docs/performance.md section); on a machine
without a GPU, the CPU-only parts and a list of what was skipped. A thin wrapper: the logic lives in
benchmarks/gpu_check.py (beside the bench it runs)."""
from __future__ import annotations

import sys

import _path  # noqa: F401  (the project root on sys.path)

from benchmarks.gpu_check import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
