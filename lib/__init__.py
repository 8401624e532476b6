"""The framework: configuration, matrix, runner, training, pruning, reports.

Packages by concern, imports one way (docs/architecture.md; tests/test_layers.py
checks it): config -> matrix -> run -> train -> results -> report, each free to
use the lower building blocks (spec, errors, jsonio, names, lifeline, optim,
pruning, data, nn, gpu_monitor, trackers). lib never imports a model folder.
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the project root (Kconfig, Makefile, model folders)
