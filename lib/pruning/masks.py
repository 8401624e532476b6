"""Gradual global pruning: score -> global threshold -> keep mask -> apply.

Prunable: the weights of every Linear and Conv2d layer (biases and
normalisation parameters stay dense). With tied GPT-2 embeddings the shared
matrix is lm_head's weight and so is pruned once, as one tensor.
Layer-adaptive scores (bitter4) give each tensor its own target instead and
prune it by its own threshold (`layer_fractions`).

A score that is NaN or infinite anywhere stops the update with NonFiniteError
before any mask changes: a NaN compares false with everything, so it would
otherwise be pruned on top of k, and past N-k of them the threshold itself is
NaN and every weight goes.

How pruned weights stay exactly zero at the cost of one pass per step: when
the masks change, the weight and every same-shape optimizer state tensor
(Adam's moments, AMSGrad's maximum, SGD's momentum) are zeroed where pruned;
before every optimizer step the gradient is zeroed there. Adam, AdamW, SGD
and SPAM then leave those entries at zero (m and v stay 0, the update is
0/(0+eps), decay of 0 is 0). An optimizer with set_masks() (AdamWPrune on
AdamW: lib/optim/fused_masked_adamw.py; on AdamWSPAM:
lib/optim/fused_masked_spam.py) is handed the masks instead and zeroes those
entries inside its own step, which saves that pass where it has a one-pass
step (and says when it has none). Tests check it after training.

Masks are stored as bools (one byte per weight) or bits (eight per byte,
lib/pruning/bitmask.py), as `mask_storage` says; the update writes them
chunk by chunk either way.
"""
from __future__ import annotations

import math
from itertools import accumulate
from typing import Iterator, Optional, Sequence

import torch
from torch import nn

from lib.errors import NonFiniteError, UserError
from lib.pruning import bitmask
from lib.pruning.mask_ops import zero_pruned_
from lib.pruning.schedules import SCHEDULES, Ramp, target_fraction
from lib.pruning.scores import SCORES, ScoreInputs
from lib.pruning.threshold import SAMPLE_SIZE, Threshold, kth_smallest

# Upstream's layer-adaptive sparsity (bitter4): tensor i of L in module order gets
# scale 0.7 + 0.6*i/max(L-1, 1) (0.7x the base sparsity first, 1.3x last), capped at 0.95.
LAYER_SCALE_FIRST, LAYER_SCALE_SPAN, LAYER_CAP = 0.7, 0.6, 0.95


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name -> weight of every Linear and Conv2d layer, in module order, each tensor once."""
    params: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            params[f"{name}.weight"] = module.weight
    return params


@torch.no_grad()
def measure_sparsity(params: dict[str, torch.Tensor]) -> tuple[float, dict[str, float], int, int]:
    """(global %, per-tensor %, zero count, total count) of exactly-zero entries."""
    per_layer, zeros, total = {}, 0, 0
    for name, tensor in params.items():
        z = tensor.numel() - int(torch.count_nonzero(tensor))
        per_layer[name] = 100.0 * z / tensor.numel()
        zeros, total = zeros + z, total + tensor.numel()
    return (100.0 * zeros / total if total else 0.0), per_layer, zeros, total


def layer_scales(count: int) -> list[float]:
    """0.7 -> 1.3 over `count` tensors in module order (upstream bitter4's shape)."""
    return [LAYER_SCALE_FIRST + LAYER_SCALE_SPAN * (i / max(count - 1, 1)) for i in range(count)]  # as upstream


def layer_fractions(fraction: float, sizes: Sequence[int], mode: str) -> list[float]:
    """Per-tensor target sparsities (fractions) of a layer-adaptive score at global target `fraction`.

    "upstream": min(0.95, fraction*scale_i), upstream's form, whose global sparsity
    sum n_i*min(0.95, fraction*scale_i)/N is not the target. "normalised": min(cap, b*scale_i)
    with cap = max(0.95, fraction) and the base b found by bisection so that
    sum n_i*min(cap, b*scale_i) = fraction*N: the same 0.7 -> 1.3 shape at the target.
    """
    scales = layer_scales(len(sizes))
    if mode == "upstream":
        return [min(LAYER_CAP, fraction * scale) for scale in scales]
    if mode != "normalised":
        raise ValueError(f"unknown layer-adaptive mode {mode!r}")
    cap, goal = max(LAYER_CAP, fraction), fraction * sum(sizes)

    def pruned(base: float) -> float:
        return sum(n * min(cap, base * scale) for n, scale in zip(sizes, scales))

    low, high = 0.0, cap / min(scales)  # pruned(high) = cap*N >= goal
    for _ in range(100):  # float64 bisection: the bracket is below one ulp long before 100 halvings
        middle = 0.5 * (low + high)
        if pruned(middle) < goal:
            low = middle
        else:
            high = middle
    return [min(cap, high * scale) for scale in scales]


def _default_chunk(device: torch.device) -> int:
    # Small enough to stay in CPU cache through the in-place score passes;
    # large enough that kernel launches do not dominate on a GPU.
    return (1 << 24) if device.type == "cuda" else (1 << 18)


class FiniteCheck:
    """Whether every score added is finite, kept on the scores' device: one read at the end instead of one
    per chunk (on a GPU each read waits for the device). Each chunk's sum is finite when its scores are,
    unless it overflows (scores near 1e33), which the exact check that follows tells apart; the sums are
    added up in float64, which they cannot overflow."""

    def __init__(self) -> None:
        self.total: Optional[torch.Tensor] = None

    def add(self, scores: torch.Tensor) -> None:
        chunk = scores.sum()  # in the scores' dtype: sum(dtype=float64) would copy the chunk to float64 first
        if self.total is None:
            self.total = chunk.double()
        else:
            self.total.add_(chunk)

    def finite(self) -> bool:
        return self.total is None or bool(torch.isfinite(self.total))


def _read_counts(steps: list) -> list[float]:
    """Step counts (0-dim tensors, or numbers as AdamWSPAM keeps them) as floats, the tensors on each device
    read in one go."""
    values: list[float] = [float(t) if not torch.is_tensor(t) else 0.0 for t in steps]
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(steps):
        if torch.is_tensor(t):
            by_device.setdefault(t.device, []).append(i)
    for indices in by_device.values():
        for i, value in zip(indices, torch.stack([steps[i].double() for i in indices]).tolist()):
            values[i] = value
    return values


class GradualPruner:
    """Global pruning from warm-up to ramp end, masks updated every `frequency` steps.

    The training loop calls before_optimizer_step() after backward (and any
    gradient accumulation) and after_optimizer_step(step) after each step.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, score: str, final_sparsity: float, *,
                 warmup_steps: int, ramp_end_step: int, frequency: int, schedule: str = "cubic", seed: int = 0,
                 chunk_size: Optional[int] = None, sample_size: int = SAMPLE_SIZE, mask_storage: str = "bool") -> None:
        if score not in SCORES:
            raise UserError(f"pruning score {score!r} is unknown (have: {', '.join(SCORES)})")
        if schedule not in SCHEDULES:
            raise UserError(f"sparsity schedule {schedule!r} is unknown (have: {', '.join(SCHEDULES)})")
        if not 0.0 <= final_sparsity < 1.0:
            raise UserError(f"target sparsity {final_sparsity} is outside [0, 1)")
        if mask_storage not in bitmask.STORAGES:
            raise UserError(f"mask storage {mask_storage!r} is unknown (have: {', '.join(bitmask.STORAGES)})")
        self.optimizer, self.score_name, self.score = optimizer, score, SCORES[score]
        self.final_sparsity, self.schedule = final_sparsity, schedule
        self.warmup_steps, self.ramp_end_step, self.frequency = warmup_steps, ramp_end_step, max(1, frequency)
        self.params = prunable_parameters(model)
        self.total = sum(p.numel() for p in self.params.values())
        device = next(iter(self.params.values())).device
        # A multiple of 8, so that every chunk of a bit mask starts on a byte.
        self.chunk_size = -(-(chunk_size or _default_chunk(device)) // 8) * 8
        self.mask_storage = mask_storage
        self.sample_size = sample_size
        self.generator = torch.Generator().manual_seed(seed)
        self.masks: dict[str, torch.Tensor] = {}  # name -> keep mask (bitmask.py: bool, True = keep, or bits)
        self.tracked = self._tracked_tensors()
        self.history: list[dict] = []
        self.ramp: Optional[Ramp] = None  # how the run planned warm-up and ramp end (lib/train/harness.py), for metrics
        self.last_update_scratch_bytes = 0
        self._step = 0  # of the mask update in progress, for error messages
        self._corrections: Optional[dict[str, float]] = None  # bias corrections read once per mask update

    def _tracked_tensors(self) -> dict[str, torch.Tensor]:
        if self.score.tracks == "initial":
            return {name: p.detach().clone() for name, p in self.params.items()}
        if self.score.tracks == "movement":
            return {name: torch.zeros_like(p) for name, p in self.params.items()}
        return {}

    # -- per step ---------------------------------------------------------

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        """Zero pruned gradients (or hand the masks to an optimizer that applies them); track movement (-g*w)."""
        takes_masks = getattr(self.optimizer, "set_masks", None)
        if takes_masks is not None:
            # Its step zeroes pruned w, m, v itself; the gradients stay as backward left them,
            # which changes nothing below: -g*w is 0 where w is 0.
            takes_masks({self.params[name]: mask for name, mask in self.masks.items()})
        else:
            self.zero_pruned_gradients()
        if self.score.tracks == "movement":
            for name, param in self.params.items():
                if param.grad is not None:
                    self.tracked[name].addcmul_(param.grad, param, value=-1.0)

    @torch.no_grad()
    def zero_pruned_gradients(self) -> None:
        """Zero the gradients of pruned weights (before a global gradient-norm clip: only live weights count)."""
        zero_pruned_((self.params[name].grad, mask) for name, mask in self.masks.items()
                     if self.params[name].grad is not None)

    def final_global_pct(self) -> float:
        """The global sparsity (%) the schedule ends at: the target, except for upstream's
        unnormalised bitter4, whose per-layer targets add up to less."""
        if self.score.layer_adaptive != "upstream":
            return 100.0 * self.final_sparsity
        sizes = [p.numel() for p in self.params.values()]
        fractions = layer_fractions(self.final_sparsity, sizes, "upstream")
        return 100.0 * sum(round(f * n) for f, n in zip(fractions, sizes)) / self.total

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        """Update the masks when `step` is a pruning step of the schedule."""
        if self._due(step):
            self.update_masks(target_fraction(self.schedule, step, self.warmup_steps, self.ramp_end_step,
                                              self.final_sparsity), step)

    def _due(self, step: int) -> bool:
        if step < self.warmup_steps or (self.history and step > self.ramp_end_step):
            return False
        return step >= self.ramp_end_step or (step - self.warmup_steps) % self.frequency == 0

    # -- mask update ------------------------------------------------------

    @torch.no_grad()
    def update_masks(self, fraction: float, step: int = 0) -> None:
        """Prune exactly round(fraction * N) entries by global score (per tensor for layer-adaptive
        scores), then zero them everywhere. Non-finite scores raise NonFiniteError, masks untouched."""
        self._step = step
        self._corrections = self._bias_corrections()
        try:
            self._update_masks(fraction, step)
        finally:
            self._corrections = None

    def _update_masks(self, fraction: float, step: int) -> None:
        if self.score.layer_adaptive:
            layer_counts = self._layer_counts(fraction)
            groups = [((name,), count) for name, count in layer_counts.items() if count > 0]
        else:
            layer_counts = None
            k = int(round(fraction * self.total))
            groups = [(tuple(self.params), k)] if k > 0 else []
        if not groups:
            return
        # Every threshold is found (every score checked) before any mask changes.
        found: list[tuple[tuple[str, ...], int, Threshold]] = []
        for names, k in groups:
            size = sum(self.params[name].numel() for name in names)
            # Per-tensor thresholds share the sample in proportion to size (the sample scores as much in all
            # as one global threshold's); a smaller sample only widens the bracket: the result stays exact.
            sample = max(self.sample_size * size // self.total, min(self.sample_size, 4096))
            found.append((names, k, kth_smallest(lambda names=names: self._score_values(names),
                                                 lambda n, names=names: self._sample_scores(n, names),
                                                 size, k, sample)))
        if not self.masks:
            self.masks = {name: bitmask.full(p, self.mask_storage) for name, p in self.params.items()}
            if not hasattr(self.optimizer, "set_masks") and not self.history:
                print(f"note: {type(self.optimizer).__name__}: pruned gradients are zeroed in a separate pass before "
                      "each step (fused into the step only for AdamWPrune on AdamW without AMSGrad, or on "
                      "AdamWSPAM on CUDA)")
        # Bit masks are packed from one chunk of bools, reused: never a whole tensor's.
        scratch = (torch.empty(min(self.chunk_size, self.total), dtype=torch.bool,
                               device=next(iter(self.params.values())).device)
                   if self.mask_storage == "bits" else None)
        for names, k, threshold in found:
            # Masks are rewritten in place, chunk by chunk, right after each chunk is scored.
            for name, start, end, scores in self._score_chunks(names):
                mask = self.masks[name]
                keep = scratch[:end - start] if scratch is not None else mask.view(-1)[start:end]
                bitmask.write(mask, start, torch.gt(scores, threshold.value, out=keep))
            excess = threshold.count_below + threshold.count_equal - k
            if excess > 0:  # ties at the threshold: keep `excess` of them
                self._keep_ties(threshold.value, excess, names)
        self.apply()
        # Counting the masks reads a quarter (bool) or 1/32 (bits) of the bytes of counting the weights.
        kept = torch.stack([bitmask.kept(m) for m in self.masks.values()]).tolist()  # one read of all counts
        pruned = {name: self.params[name].numel() - k for name, k in zip(self.masks, kept)}
        entry = {"step": step, "target_pct": 100.0 * fraction,
                 "measured_pct": 100.0 * sum(pruned.values()) / self.total, "threshold": None,
                 "passes": max(t.passes for _, _, t in found)}
        if layer_counts is None:
            value = found[0][2].value
            entry["threshold"] = value if math.isfinite(value) else None
        else:
            entry["layer_target_pct"] = {name: 100.0 * count / self.params[name].numel()
                                         for name, count in layer_counts.items()}
            entry["layer_measured_pct"] = {name: 100.0 * pruned[name] / self.params[name].numel()
                                           for name in self.params}
        self.history.append(entry)
        self.last_update_scratch_bytes = (4 * (min(self.chunk_size, self.total) + max(t.collected for _, _, t in found)
                                               + min(self.sample_size, self.total))
                                          + (scratch.numel() if scratch is not None else 0))

    def _layer_counts(self, fraction: float) -> dict[str, int]:
        """Entries to prune per tensor: round(layer fraction * n_i), never fewer than are pruned already.

        For the normalised form the counts are then balanced (largest remainders first) to sum to
        exactly round(fraction * N), so the global sparsity is the target to the entry.
        """
        names = list(self.params)
        sizes = [self.params[name].numel() for name in names]
        exact = [f * n for f, n in zip(layer_fractions(fraction, sizes, self.score.layer_adaptive), sizes)]
        already = [self.params[name].numel() - bitmask.count_kept(self.masks[name]) if name in self.masks else 0
                   for name in names]
        if self.score.layer_adaptive == "upstream":
            return {name: max(int(round(e)), a) for name, e, a in zip(names, exact, already)}
        counts = [max(math.floor(e), a) for e, a in zip(exact, already)]
        order = sorted(range(len(names)), key=lambda i: exact[i] - counts[i], reverse=True)
        short = int(round(fraction * self.total)) - sum(counts)
        while short > 0:  # below the goal: one more entry each, largest remainders first
            room = [i for i in order if counts[i] < sizes[i]][:short]
            for i in room:
                counts[i] += 1
            short -= len(room)
        for i in reversed(order):  # above it (floors at what is pruned already): smallest remainders give back
            give = min(max(-short, 0), counts[i] - already[i])
            counts[i] -= give
            short += give
        return dict(zip(names, counts))

    def _keep_ties(self, value: float, excess: int, names: Sequence[str]) -> None:
        # Only live weights (w != 0) are kept: a pruned weight is never revived.
        for name, start, end, scores in self._score_chunks(names, force_pruned=False):
            if excess <= 0:
                return
            ties = (scores == value) & (self.params[name].detach().view(-1)[start:end] != 0)
            index = torch.nonzero(ties).view(-1)[:excess]
            if index.numel():
                keep = bitmask.read(self.masks[name], start, end)  # a view (bool) or a chunk's copy (bits)
                keep[index] = True
                bitmask.write(self.masks[name], start, keep)
            excess -= index.numel()

    @torch.no_grad()
    def apply(self) -> None:
        """Zero pruned entries of each weight and its same-shape optimizer state."""
        pairs = []
        for name, mask in self.masks.items():
            param = self.params[name]
            pairs.append((param.data, mask))
            pairs.extend((value, mask) for value in self.optimizer.state.get(param, {}).values()
                         if torch.is_tensor(value) and value.shape == param.shape)
        zero_pruned_(pairs)

    # -- scores -----------------------------------------------------------

    def _inputs(self, name: str, param: torch.Tensor) -> ScoreInputs:
        state = self.optimizer.state.get(param, {})
        if self.score.needs_moments and "exp_avg_sq" not in state:
            raise UserError(f"score {self.score_name!r} reads Adam's moments, but the optimizer "
                            f"({type(self.optimizer).__name__}) has none for {name}: use AdamWPrune")
        corrections = self._corrections if self._corrections is not None else self._bias_corrections((name,))
        return ScoreInputs(param.detach(), state.get("exp_avg"), state.get("exp_avg_sq"), self.tracked.get(name),
                           corrections.get(name, 1.0))

    def _bias_corrections(self, names: Optional[Sequence[str]] = None) -> dict[str, float]:
        """name -> 1 - beta1^t (1.0 at t = 0) for each of `names` (default all) with an Adam step count t: the
        counts read together (on a GPU each read of a count waits for the device)."""
        beta1_of = {id(p): group["betas"][0] for group in self.optimizer.param_groups
                    if "betas" in group for p in group["params"]}
        found = [(name, self.optimizer.state.get(self.params[name], {}).get("step"))
                 for name in (self.params if names is None else names)]
        found = [(name, t) for name, t in found if t is not None and id(self.params[name]) in beta1_of]
        counts = _read_counts([t for _, t in found])
        return {name: (1.0 - beta1_of[id(self.params[name])] ** t) or 1.0 for (name, _), t in zip(found, counts)}

    def _score_chunks(self, names: Optional[Sequence[str]] = None,
                      force_pruned: bool = True) -> Iterator[tuple[str, int, int, torch.Tensor]]:
        """(name, start, end, scores) per chunk of `names` (default all); scores live in reused scratch memory.

        Every chunk is checked finite first; then signed scores (movement, bitter5, bitter9) get
        -inf where the mask prunes, so pruned stays pruned.
        """
        scratch: Optional[torch.Tensor] = None
        names = list(self.params) if names is None else names
        total = FiniteCheck()
        for name in names:
            param = self.params[name]
            inputs, n = self._inputs(name, param), param.numel()
            if scratch is None:
                scratch = torch.empty(min(self.chunk_size, self.total), device=param.device)
            for start in range(0, n, self.chunk_size):
                end = min(start + self.chunk_size, n)
                out = scratch[:end - start]
                self.score.fn(inputs.chunk(start, end), out)
                total.add(out)
                if force_pruned and self.score.signed and name in self.masks:
                    out.masked_fill_(~bitmask.read(self.masks[name], start, end), -math.inf)
                yield name, start, end, out
        if not total.finite():  # checked once all are scored, before any caller changes a mask
            self._raise_non_finite(names)

    def _score_values(self, names: Optional[Sequence[str]] = None) -> Iterator[torch.Tensor]:
        return (scores for _, _, _, scores in self._score_chunks(names))

    def _sample_scores(self, n: int, names: Optional[Sequence[str]] = None) -> torch.Tensor:
        """Scores at n positions drawn uniformly over the entries of `names` (default all)."""
        names = list(self.params) if names is None else list(names)
        total = sum(self.params[name].numel() for name in names)
        positions = torch.randint(total, (n,), generator=self.generator).sort().values
        offsets = list(accumulate((self.params[name].numel() for name in names), initial=0))
        bounds = torch.searchsorted(positions, torch.tensor(offsets)).tolist()  # on the host, like the positions
        samples, check = [], FiniteCheck()
        for i, name in enumerate(names):
            param = self.params[name]
            index = (positions[bounds[i]:bounds[i + 1]] - offsets[i]).to(param.device)
            out = torch.empty(index.numel(), device=param.device)
            self.score.fn(self._inputs(name, param).take(index), out)
            check.add(out)
            if self.score.signed and name in self.masks:
                out.masked_fill_(~bitmask.gather(self.masks[name], index), -math.inf)
            samples.append(out)
        if not check.finite():
            self._raise_non_finite(names)
        return torch.cat(samples).cpu()  # one copy back, not one per tensor

    def _raise_non_finite(self, names: Sequence[str]) -> None:
        """NonFiniteError naming the first of `names` with a NaN or infinite score (scored again chunk by
        chunk, exactly); nothing when none has one (a chunk's sum only overflowed)."""
        for name in names:
            param = self.params[name]
            inputs, n = self._inputs(name, param), param.numel()
            for start in range(0, n, self.chunk_size):
                scores = torch.empty(min(self.chunk_size, n - start), device=param.device)
                self.score.fn(inputs.chunk(start, min(start + self.chunk_size, n)), scores)
                if bool(torch.isfinite(scores).all()):
                    continue
                kind = "nan" if bool(torch.isnan(scores).any()) else "infinite"
                source = "the tracked movement" if self.score.tracks else "the optimizer state"
                raise NonFiniteError(f"pruning score {self.score_name} is {kind} in {name} at step {self._step}: "
                                     f"the weights or {source} went non-finite")

    # -- accounting -------------------------------------------------------

    def mask_bytes(self) -> int:
        """Bytes the masks hold, measured from the tensors (bool: n, bits: ceil(n/8) per tensor)."""
        return sum(m.numel() * m.element_size() for m in self.masks.values())

    def tracked_bytes(self) -> int:
        """Extra per-weight state the score keeps (movement's accumulator, w0)."""
        return sum(t.numel() * t.element_size() for t in self.tracked.values())

    # -- checkpointing ----------------------------------------------------

    def state_dict(self) -> dict:
        """What a resumed run needs to continue pruning exactly where it stopped."""
        return {"masks": dict(self.masks), "tracked": dict(self.tracked), "history": list(self.history),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        device = next(iter(self.params.values())).device
        # A checkpoint written with the other storage is converted: the run keeps the format it is configured with.
        self.masks = {name: bitmask.convert(mask.to(device), self.params[name], self.mask_storage)
                      for name, mask in state["masks"].items()}
        for name, tensor in state["tracked"].items():
            self.tracked[name].copy_(tensor)
        self.history = list(state["history"])
        self.generator.set_state(state["generator"])
