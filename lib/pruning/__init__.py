"""Pruning: scores -> global threshold -> bool masks -> apply.

`scores` and `schedules` are registries keyed by the names Kconfig uses;
`masks.GradualPruner` drives them during training.
"""
from lib.pruning.masks import GradualPruner, measure_sparsity, prunable_parameters
from lib.pruning.schedules import SCHEDULES
from lib.pruning.scores import SCORES

__all__ = ["GradualPruner", "SCHEDULES", "SCORES", "measure_sparsity", "prunable_parameters"]
