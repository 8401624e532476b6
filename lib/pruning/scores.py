"""Importance scores: name -> Score (higher = keep). Formulas: docs/algorithms.md.

Scores are global: one threshold is chosen over all prunable tensors, so each
score must be comparable across layers. A score function writes into `out`
(a chunk of scratch memory) from views of the same chunk of the weight and
of the optimizer's own moments: no copy of the moments is ever made, and the
mask update never holds more than a chunk of scores at a time.

m and v are Adam's exp_avg and exp_avg_sq, read from optimizer.state; eps is
SCORE_EPS. Every score but movement's is >= 0 and exactly 0 where w == 0,
which is how already-pruned weights sort below everything else.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch

SCORE_EPS = 1e-8


@dataclass(frozen=True)
class ScoreInputs:
    """Aligned views of one tensor (or chunk): the weight and what its score reads."""

    weight: torch.Tensor
    exp_avg: Optional[torch.Tensor] = None
    exp_avg_sq: Optional[torch.Tensor] = None
    tracked: Optional[torch.Tensor] = None  # movement accumulator or initial weights
    bias_correction1: float = 1.0  # 1 - beta1^t, for bitter8's m_hat

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "ScoreInputs":
        return replace(self, **{name: fn(getattr(self, name)) for name in ("weight", "exp_avg", "exp_avg_sq",
                                                                            "tracked")
                                if getattr(self, name) is not None})

    def chunk(self, start: int, end: int) -> "ScoreInputs":
        """Views of flat positions [start, end): no copies."""
        return self._map(lambda t: t.view(-1)[start:end])

    def take(self, index: torch.Tensor) -> "ScoreInputs":
        """Gathered copies at flat positions `index` (for the threshold sample)."""
        return self._map(lambda t: t.view(-1)[index])


ScoreFn = Callable[[ScoreInputs, torch.Tensor], None]


@dataclass(frozen=True)
class Score:
    """A scoring rule and what it needs from training."""

    fn: ScoreFn
    source: str
    needs_moments: bool = False
    tracks: Optional[str] = None  # "movement": accumulate -g*w each step; "initial": keep w0
    signed: bool = False  # may be negative or nonzero at w == 0 (pruned entries need forcing)


def _magnitude(x: ScoreInputs, out: torch.Tensor) -> None:
    torch.abs(x.weight, out=out)


def _movement(x: ScoreInputs, out: torch.Tensor) -> None:
    out.copy_(x.tracked)


def _movement_upstream(x: ScoreInputs, out: torch.Tensor) -> None:
    torch.sub(x.weight, x.tracked, out=out)
    out.mul_(x.weight)


def _bitter0(x: ScoreInputs, out: torch.Tensor) -> None:
    # |w*m| * |w| / (sqrt(v) + eps)
    torch.sqrt(x.exp_avg_sq, out=out)
    out.add_(SCORE_EPS).reciprocal_().mul_(x.exp_avg).mul_(x.weight).mul_(x.weight).abs_()


def _bitter1(x: ScoreInputs, out: torch.Tensor) -> None:
    # |w| / (|m| + eps)
    torch.abs(x.exp_avg, out=out)
    out.add_(SCORE_EPS).reciprocal_().mul_(x.weight).abs_()


def _bitter2(x: ScoreInputs, out: torch.Tensor) -> None:
    # |w| * sqrt(v) / (|m| + eps) = sqrt(w^2 v) / (|m| + eps)
    torch.mul(x.weight, x.weight, out=out)
    out.mul_(x.exp_avg_sq).sqrt_().div_(x.exp_avg.abs().add_(SCORE_EPS))


def _bitter3(x: ScoreInputs, out: torch.Tensor) -> None:
    # |w| * sqrt(|m| + eps)
    torch.abs(x.exp_avg, out=out)
    out.add_(SCORE_EPS).sqrt_().mul_(x.weight).abs_()


def _bitter7(x: ScoreInputs, out: torch.Tensor) -> None:
    # |w| * (|v| + eps)^(1/4); two square roots cost less than a pow(0.25)
    torch.add(x.exp_avg_sq, SCORE_EPS, out=out)
    out.sqrt_().sqrt_().mul_(x.weight).abs_()


def _bitter8(x: ScoreInputs, out: torch.Tensor) -> None:
    # |w| * sqrt(|m_hat|), m_hat = m / (1 - beta1^t)
    torch.abs(x.exp_avg, out=out)
    out.mul_(1.0 / x.bias_correction1).sqrt_().mul_(x.weight).abs_()


def _bitter7_fp16(x: ScoreInputs, out: torch.Tensor) -> None:
    # bitter7 in half precision, the fourth root as rsqrt(rsqrt(.)) (upstream
    # bitter9 and its latest bitter8): v below fp16's 6e-8 flushes to 0 there.
    fourth_root = torch.rsqrt(torch.rsqrt(x.exp_avg_sq.half() + SCORE_EPS))
    out.copy_(fourth_root.mul_(x.weight.half()).abs_())


SCORES: dict[str, Score] = {
    "magnitude": Score(_magnitude, "Han et al. 2015; Zhu and Gupta 2017"),
    "movement": Score(_movement, "Sanh et al. 2020: accumulated -g*w", tracks="movement", signed=True),
    "movement-upstream": Score(_movement_upstream, "upstream AdamWPrune 'movement': w*(w-w0)",
                               tracks="initial", signed=True),
    "bitter0": Score(_bitter0, "seeds: hybrid momentum-stability (CNN default)", needs_moments=True),
    "bitter1": Score(_bitter1, "seed 003", needs_moments=True),
    "bitter2": Score(_bitter2, "seed 003", needs_moments=True),
    "bitter3": Score(_bitter3, "seeds", needs_moments=True),
    "bitter7": Score(_bitter7, "seeds: the recommended variant", needs_moments=True),
    "bitter8": Score(_bitter8, "seed 002", needs_moments=True),
    "bitter9": Score(_bitter7_fp16, "seeds: bitter7 in fp16", needs_moments=True),
    # The upstream code at its latest commit, named apart (docs/algorithms.md).
    "bitter1-upstream": Score(_magnitude, "upstream code: plain |w|"),
    "bitter2-upstream": Score(_magnitude, "upstream code: plain |w|"),
    "bitter8-upstream": Score(_bitter7_fp16, "upstream code: bitter7 in fp16", needs_moments=True),
}
# AdamWPrune's state scores: the variants a `state` run can use.
STATE_SCORES: tuple[str, ...] = tuple(name for name in SCORES if name.startswith("bitter"))


def score_name(method: str, variant: Optional[str], default_state_score: str) -> str:
    """The score a run uses: its method, or for state pruning its variant (or the default)."""
    if method == "state":
        return variant or default_state_score
    return method
