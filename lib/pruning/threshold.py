"""Exact global threshold without sorting (or even holding) all scores.

The k-th smallest of N scores spread over many tensors, found as:
1. score a uniform random sample of about SAMPLE_SIZE positions (scores
   computed only there) and take its quantiles just below and above k/N: a
   bracket [lo, hi] that holds the answer with overwhelming probability;
2. one pass over all scores, chunk by chunk, counting entries <= lo and
   collecting the few in (lo, hi];
3. the exact order statistic among the collected values (torch.kthvalue on
   ~0.5% of N). If the bracket missed (counts say so), widen it and repeat.
The result is the exact k-th smallest, so the sparsity error comes only
from ties, which the mask builder breaks to hit k exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

SAMPLE_SIZE = 1 << 20
# Bracket half-width in standard deviations of the sample quantile's rank.
BRACKET_SIGMAS = 6.0

# chunks() yields the scores of successive chunks of every prunable tensor.
ChunkScores = Callable[[], Iterator[torch.Tensor]]
# sample(n) returns the scores of n positions drawn uniformly over all entries.
SampleScores = Callable[[int], torch.Tensor]


@dataclass(frozen=True)
class Threshold:
    value: float
    count_below: int  # entries strictly below value
    count_equal: int  # entries equal to value (ties)
    passes: int  # full passes over the scores it took
    collected: int  # scores held at once in the last pass (the bracket)


def kth_smallest(chunks: ChunkScores, sample: SampleScores, total: int, k: int,
                 sample_size: int = SAMPLE_SIZE) -> Threshold:
    """The k-th smallest score (1 <= k <= total) with its rank counts."""
    if not 1 <= k <= total:
        raise ValueError(f"k={k} outside [1, {total}]")
    n = min(sample_size, total)
    drawn = sample(n).float()
    sigmas, passes = BRACKET_SIGMAS, 0
    while True:
        lo, hi = _bracket(drawn, k / total, sigmas)
        passes += 1
        below_lo, inside = _count_and_collect(chunks, lo, hi)
        if below_lo < k <= below_lo + inside.numel():
            value = inside.kthvalue(k - below_lo).values.item()
            below = below_lo + int((inside < value).sum())
            equal = int((inside == value).sum())
            return Threshold(value, below, equal, passes, inside.numel())
        sigmas *= 8.0  # the sample misled us (tiny N or heavy ties): widen


def _bracket(drawn: torch.Tensor, q: float, sigmas: float) -> tuple[float, float]:
    n = drawn.numel()
    half_width = sigmas * math.sqrt(max(q * (1 - q), 1.0 / n) / n) + 2.0 / n
    lo_rank, hi_rank = math.floor((q - half_width) * n), math.ceil((q + half_width) * n)
    lo = -math.inf if lo_rank < 1 else drawn.kthvalue(lo_rank).values.item()
    hi = math.inf if hi_rank > n else drawn.kthvalue(hi_rank).values.item()
    return lo, hi


def _count_and_collect(chunks: ChunkScores, lo: float, hi: float) -> tuple[int, torch.Tensor]:
    """(#scores <= lo, the scores in (lo, hi]) in one pass; the count kept on the scores' device and read once
    at the end (on a GPU each read waits for the device)."""
    below, inside = [], []
    for scores in chunks():
        if lo > -math.inf:
            below.append(torch.count_nonzero(scores <= lo))
            selected = scores[(scores > lo) & (scores <= hi)] if hi < math.inf else scores[scores > lo]
        else:
            selected = scores[scores <= hi] if hi < math.inf else scores.reshape(-1)
        inside.append(selected.float().clone())  # chunks reuse scratch memory
    return int(torch.stack(below).sum()) if below else 0, torch.cat(inside) if inside else torch.empty(0)
