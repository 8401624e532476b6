"""Importance scores: name -> Score (higher = keep). Formulas: docs/algorithms.md.

Scores are global: one threshold is chosen over all prunable tensors, so each
score must be comparable across layers (bitter4 is the exception: it prunes
each tensor to its own layer-adaptive target, `Score.layer_adaptive`). A score
function writes into `out` (a float32 chunk of scratch memory) from views of
the same chunk of the weight and of the optimizer's own moments: no copy of
the moments is ever made, and the mask update never holds more than a chunk
of scores (plus at most two chunk-sized temporaries) at a time. Every score
is computed in float32 whatever the dtype of its inputs (each function starts
by copying or reducing into `out`), so eps = 1e-8 survives; the two fp16
upstream forms round like the upstream code but with an eps fp16 can hold.

m and v are Adam's exp_avg and exp_avg_sq, read from optimizer.state; eps is
SCORE_EPS. Unsigned scores are >= 0 and exactly 0 where w == 0, which is how
already-pruned weights sort below everything else. Signed scores (movement,
bitter5, bitter9) can be negative for live weights: the pruner forces their
pruned entries to -inf.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch

SCORE_EPS = 1e-8
# The upstream fp16 scores' eps. Theirs, 1e-8, rounds to 0 in fp16 (smallest
# subnormal 6e-8), so v below fp16's range scored 0 and tied with pruned
# weights (64% of live weights in a GPT-2 run); 1e-5 is held (as 1.0014e-5).
FP16_SCORE_EPS = 1e-5
FP16_MAX = 65504.0


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
    # None: one global threshold. "normalised": bitter4's per-layer targets, 0.7x -> 1.3x in module order,
    # scaled so the global sparsity is the target; "upstream": upstream's min(0.95, s*scale) per layer.
    layer_adaptive: Optional[str] = None


# --- pieces shared by several scores (all in float32, in place) -----------------------------


def _temp(out: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(out)


def _sqrt_abs_m_plus_eps(x: ScoreInputs, out: torch.Tensor) -> torch.Tensor:
    """out = sqrt(|m| + eps)."""
    return out.copy_(x.exp_avg).abs_().add_(SCORE_EPS).sqrt_()


def _m_over_sqrt_v(x: ScoreInputs, out: torch.Tensor) -> torch.Tensor:
    """out = m / (sqrt(v) + eps)."""
    return out.copy_(x.exp_avg_sq).sqrt_().add_(SCORE_EPS).reciprocal_().mul_(x.exp_avg)


# --- the scores --------------------------------------------------------------------------------


def _magnitude(x: ScoreInputs, out: torch.Tensor) -> None:
    out.copy_(x.weight).abs_()


def _movement(x: ScoreInputs, out: torch.Tensor) -> None:
    out.copy_(x.tracked)


def _movement_upstream(x: ScoreInputs, out: torch.Tensor) -> None:
    out.copy_(x.weight).sub_(x.tracked).mul_(x.weight)


def _bitter0(x: ScoreInputs, out: torch.Tensor) -> None:
    # |w*m| * |w| / (sqrt(v) + eps)
    _m_over_sqrt_v(x, out).mul_(x.weight).mul_(x.weight).abs_()


def _bitter1(x: ScoreInputs, out: torch.Tensor) -> None:
    # |w| / (|m| + eps)
    out.copy_(x.exp_avg).abs_().add_(SCORE_EPS).reciprocal_().mul_(x.weight).abs_()


def _bitter2(x: ScoreInputs, out: torch.Tensor) -> None:
    # |w| * sqrt(v) / (|m| + eps); |w|*sqrt(v), not sqrt(w^2 v), which underflows for tiny v
    out.copy_(x.exp_avg_sq).sqrt_().mul_(x.weight).abs_()
    out.div_(_temp(out).copy_(x.exp_avg).abs_().add_(SCORE_EPS))


def _bitter3(x: ScoreInputs, out: torch.Tensor) -> None:
    # |w| * sqrt(|m| + eps)
    _sqrt_abs_m_plus_eps(x, out).mul_(x.weight).abs_()


def _bitter5(x: ScoreInputs, out: torch.Tensor) -> None:
    # -movement + 0.1*|w|, movement = -(sign(w)*m)/(sqrt(v)+eps): sign(w)*m/(sqrt(v)+eps) + 0.1*|w|
    sign = _temp(out).copy_(x.weight).sign_()
    _m_over_sqrt_v(x, out).mul_(sign).addcmul_(x.weight, sign, value=0.1)  # w*sign(w) = |w|


def _bitter6(x: ScoreInputs, out: torch.Tensor) -> None:
    # |w| * sqrt(|m| + eps) * sqrt(m^2 / (v + eps)), the last factor as |m| / sqrt(v + eps) (m^2 can underflow)
    out.copy_(x.exp_avg_sq).add_(SCORE_EPS).rsqrt_().mul_(x.exp_avg).mul_(x.weight).abs_()
    out.mul_(_sqrt_abs_m_plus_eps(x, _temp(out)))


def _bitter7(x: ScoreInputs, out: torch.Tensor) -> None:
    # |w| * (|v| + eps)^(1/4); two square roots cost less than a pow(0.25)
    out.copy_(x.exp_avg_sq).abs_().add_(SCORE_EPS).sqrt_().sqrt_().mul_(x.weight).abs_()


def _bitter8(x: ScoreInputs, out: torch.Tensor) -> None:
    # |w| * sqrt(|m_hat| + eps), m_hat = m / (1 - beta1^t + eps)
    scale = 1.0 / (x.bias_correction1 + SCORE_EPS)
    out.copy_(x.exp_avg).abs_().mul_(scale).add_(SCORE_EPS).sqrt_().mul_(x.weight).abs_()


def _bitter9(x: ScoreInputs, out: torch.Tensor) -> None:
    # |w|*sqrt(|m|+eps) - 0.1*movement = |w|*sqrt(|m|+eps) + 0.1*sign(w)*m/(sqrt(v)+eps)
    sign = _temp(out).copy_(x.weight).sign_()
    _m_over_sqrt_v(x, out).mul_(sign).mul_(0.1)
    out.add_(_sqrt_abs_m_plus_eps(x, sign).mul_(x.weight).abs_())  # sign's memory, free again


def _bitter7_fp16(x: ScoreInputs, out: torch.Tensor) -> None:
    # The upstream code's latest bitter8 (and, under torch.compile, bitter9): bitter7 in half precision,
    # w16 = w.half(), v16 = v.half(), fourth = rsqrt(rsqrt(|v16| + eps16)), score = (|w16| * fourth).float(),
    # with eps16 = 1e-5 (theirs, 1e-8, is 0 in fp16). v above fp16's maximum is clamped to it (not inf).
    fourth_root = torch.clamp(x.exp_avg_sq, max=FP16_MAX).half().abs_().add_(FP16_SCORE_EPS).rsqrt_().rsqrt_()
    out.copy_(fourth_root.mul_(x.weight.half()).abs_())


SCORES: dict[str, Score] = {
    "magnitude": Score(_magnitude, "Han et al. 2015; Zhu and Gupta 2017"),
    "movement": Score(_movement, "Sanh et al. 2020: accumulated -g*w", tracks="movement", signed=True),
    "movement-upstream": Score(_movement_upstream, "upstream AdamWPrune 'movement': w*(w-w0)",
                               tracks="initial", signed=True),
    "bitter0": Score(_bitter0, "seeds, upstream docs and code: hybrid momentum-stability (CNN default)",
                     needs_moments=True),
    "bitter1": Score(_bitter1, "seed 003", needs_moments=True),
    "bitter2": Score(_bitter2, "seed 003", needs_moments=True),
    "bitter3": Score(_bitter3, "seeds, upstream docs and code", needs_moments=True),
    "bitter4": Score(_bitter3, "upstream docs and code (bitter3 + layer-adaptive sparsity), normalised so the "
                     "global sparsity is the target", needs_moments=True, layer_adaptive="normalised"),
    "bitter5": Score(_bitter5, "upstream code and docs' implementation section: movement-to-zero",
                     needs_moments=True, signed=True),
    "bitter6": Score(_bitter6, "upstream docs and code: coherence-weighted", needs_moments=True),
    "bitter7": Score(_bitter7, "seeds, upstream docs: the recommended variant", needs_moments=True),
    "bitter8": Score(_bitter8, "upstream docs (seed 002 without the eps terms)", needs_moments=True),
    "bitter9": Score(_bitter9, "upstream docs: hybrid multi-signal", needs_moments=True, signed=True),
    # The upstream code's forms where they differ, named apart (docs/algorithms.md).
    "bitter1-upstream": Score(_magnitude, "upstream docs and code: plain |w|"),
    "bitter2-upstream": Score(_magnitude, "upstream docs and code: plain |w|"),
    "bitter4-upstream": Score(_bitter3, "upstream code: bitter3 with min(0.95, s*scale) per layer (global "
                              "sparsity below target)", needs_moments=True, layer_adaptive="upstream"),
    "bitter8-upstream": Score(_bitter7_fp16, "upstream code at its latest commit: bitter7 in fp16 (eps 1e-5)",
                              needs_moments=True),
    "bitter9-upstream": Score(_bitter7_fp16, "upstream code at its latest commit: bitter8-upstream under "
                              "torch.compile (same numbers)", needs_moments=True),
}
# AdamWPrune's state scores: the variants a `state` run can use.
STATE_SCORES: tuple[str, ...] = tuple(name for name in SCORES if name.startswith("bitter"))


def score_name(method: str, variant: Optional[str], default_state_score: str) -> str:
    """The score a run uses: its method, or for state pruning its variant (or the default)."""
    if method == "state":
        return variant or default_state_score
    return method
