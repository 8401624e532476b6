"""Pruning: score -> global threshold -> bool mask -> apply.

`scores` and `schedules` are registries keyed by the names Kconfig uses;
`masks.GradualPruner` drives them during training; `threshold` finds the
exact global threshold without sorting all scores.
"""
from lib.pruning.masks import GradualPruner, measure_sparsity, prunable_parameters
from lib.pruning.schedules import SCHEDULES
from lib.pruning.scores import SCORES, STATE_SCORES

__all__ = ["GradualPruner", "SCHEDULES", "SCORES", "STATE_SCORES", "measure_sparsity", "prunable_parameters"]
