"""Pruning: score -> threshold -> bool mask -> apply.

`scores` and `schedules` are registries keyed by the names Kconfig uses;
`masks.GradualPruner` drives them during training (one global threshold, or
one per tensor for the layer-adaptive bitter4 scores: `masks.layer_fractions`);
`threshold` finds an exact threshold without sorting all scores.
"""
from lib.pruning.masks import GradualPruner, layer_fractions, measure_sparsity, prunable_parameters
from lib.pruning.schedules import SCHEDULES
from lib.pruning.scores import SCORES, STATE_SCORES

__all__ = ["GradualPruner", "SCHEDULES", "SCORES", "STATE_SCORES", "layer_fractions", "measure_sparsity",
           "prunable_parameters"]
