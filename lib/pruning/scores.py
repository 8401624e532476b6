"""Importance scores: name -> fn(weight, optimizer_state) -> tensor (higher = keep).

Scores are global: one threshold is chosen over all prunable tensors, so each
score must be comparable across layers. Movement and the AdamWPrune state
scores (bitter*) register here as well.
"""
from __future__ import annotations

from typing import Callable

import torch

ScoreFn = Callable[[torch.Tensor, dict], torch.Tensor]


def magnitude(weight: torch.Tensor, state: dict) -> torch.Tensor:
    """|w| (Han et al. 2015; Zhu and Gupta 2017)."""
    return weight.detach().abs()


SCORES: dict[str, ScoreFn] = {"magnitude": magnitude}
