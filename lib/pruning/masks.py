"""Gradual global pruning: score -> global threshold -> bool mask -> apply.

Prunable: the weights of every Linear and Conv2d layer (biases and
normalisation parameters stay dense). With tied GPT-2 embeddings the shared
matrix is lm_head's weight and so is pruned once, as one tensor.

How pruned weights stay exactly zero at the cost of one pass per step: when
the masks change, the weight and every same-shape optimizer state tensor
(Adam's moments, AMSGrad's maximum, SGD's momentum) are zeroed where pruned;
before every optimizer step the gradient is zeroed there. Adam, AdamW, SGD
and SPAM then leave those entries at zero (m and v stay 0, the update is
0/(0+eps), decay of 0 is 0). An optimizer with set_masks() (AdamWPrune on
AdamW: lib/optim/fused_masked_adamw.py) is handed the masks instead and
zeroes those entries inside its own step, which saves that pass. Tests check
it after training.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional

import torch
from torch import nn

from lib.errors import UserError
from lib.pruning.mask_ops import zero_pruned_
from lib.pruning.schedules import SCHEDULES, target_fraction
from lib.pruning.scores import SCORES, ScoreInputs
from lib.pruning.threshold import SAMPLE_SIZE, kth_smallest


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


def _default_chunk(device: torch.device) -> int:
    # Small enough to stay in CPU cache through the in-place score passes;
    # large enough that kernel launches do not dominate on a GPU.
    return (1 << 24) if device.type == "cuda" else (1 << 18)


class GradualPruner:
    """Global pruning from warm-up to ramp end, masks updated every `frequency` steps.

    The training loop calls before_optimizer_step() after backward (and any
    gradient accumulation) and after_optimizer_step(step) after each step.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, score: str, final_sparsity: float, *,
                 warmup_steps: int, ramp_end_step: int, frequency: int, schedule: str = "cubic", seed: int = 0,
                 chunk_size: Optional[int] = None, sample_size: int = SAMPLE_SIZE) -> None:
        if score not in SCORES:
            raise UserError(f"pruning score {score!r} is unknown (have: {', '.join(SCORES)})")
        if schedule not in SCHEDULES:
            raise UserError(f"sparsity schedule {schedule!r} is unknown (have: {', '.join(SCHEDULES)})")
        if not 0.0 <= final_sparsity < 1.0:
            raise UserError(f"target sparsity {final_sparsity} is outside [0, 1)")
        self.optimizer, self.score_name, self.score = optimizer, score, SCORES[score]
        self.final_sparsity, self.schedule = final_sparsity, schedule
        self.warmup_steps, self.ramp_end_step, self.frequency = warmup_steps, ramp_end_step, max(1, frequency)
        self.params = prunable_parameters(model)
        self.total = sum(p.numel() for p in self.params.values())
        device = next(iter(self.params.values())).device
        self.chunk_size = chunk_size or _default_chunk(device)
        self.sample_size = sample_size
        self.generator = torch.Generator().manual_seed(seed)
        self.masks: dict[str, torch.Tensor] = {}  # name -> bool, True = keep
        self.tracked = self._tracked_tensors()
        self.history: list[dict] = []
        self.last_update_scratch_bytes = 0

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
            zero_pruned_((self.params[name].grad, mask) for name, mask in self.masks.items()
                         if self.params[name].grad is not None)
        if self.score.tracks == "movement":
            for name, param in self.params.items():
                if param.grad is not None:
                    self.tracked[name].addcmul_(param.grad, param, value=-1.0)

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
        """Prune exactly round(fraction * N) entries by global score, then zero them everywhere."""
        k = int(round(fraction * self.total))
        if k <= 0:
            return
        found = kth_smallest(self._all_score_chunks, self._sample_scores, self.total, k, self.sample_size)
        if not self.masks:
            self.masks = {name: torch.ones_like(p, dtype=torch.bool) for name, p in self.params.items()}
            if not hasattr(self.optimizer, "set_masks") and not self.history:
                print(f"note: {type(self.optimizer).__name__}: pruned gradients are zeroed in a separate pass before "
                      "each step (fused into the step only for AdamWPrune on AdamW without AMSGrad)")
        # Masks are rewritten in place, chunk by chunk, right after each chunk is scored.
        for name, start, end, scores in self._score_chunks():
            torch.gt(scores, found.value, out=self.masks[name].view(-1)[start:end])
        excess = found.count_below + found.count_equal - k
        if excess > 0:  # ties at the threshold: keep `excess` of them
            self._keep_ties(found.value, excess)
        self.apply()
        # Counting the bool masks reads a quarter of the bytes of counting the weights.
        measured = 100.0 * (self.total - sum(int(torch.count_nonzero(m)) for m in self.masks.values())) / self.total
        self.history.append({"step": step, "target_pct": 100.0 * fraction, "measured_pct": measured,
                             "threshold": found.value if math.isfinite(found.value) else None,
                             "passes": found.passes})
        self.last_update_scratch_bytes = 4 * (min(self.chunk_size, self.total) + found.collected
                                              + min(self.sample_size, self.total))

    def _keep_ties(self, value: float, excess: int) -> None:
        # Only live weights (w != 0) are kept: a pruned weight is never revived.
        for name, start, end, scores in self._score_chunks(force_pruned=False):
            if excess <= 0:
                return
            ties = (scores == value) & (self.params[name].detach().view(-1)[start:end] != 0)
            index = torch.nonzero(ties).view(-1)[:excess]
            self.masks[name].view(-1)[start:end][index] = True
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
        bias_correction1 = 1.0
        if "step" in state:
            beta1 = next(g["betas"][0] for g in self.optimizer.param_groups if any(p is param for p in g["params"]))
            bias_correction1 = 1.0 - beta1 ** float(state["step"])
        return ScoreInputs(param.detach(), state.get("exp_avg"), state.get("exp_avg_sq"), self.tracked.get(name),
                           bias_correction1 or 1.0)

    def _score_chunks(self, force_pruned: bool = True) -> Iterator[tuple[str, int, int, torch.Tensor]]:
        """(name, start, end, scores) per chunk; the scores live in reused scratch memory.

        Signed scores (movement) get -inf where the mask prunes, so pruned stays pruned.
        """
        scratch: Optional[torch.Tensor] = None
        for name, param in self.params.items():
            inputs, n = self._inputs(name, param), param.numel()
            if scratch is None:
                scratch = torch.empty(min(self.chunk_size, self.total), device=param.device)
            for start in range(0, n, self.chunk_size):
                end = min(start + self.chunk_size, n)
                out = scratch[:end - start]
                self.score.fn(inputs.chunk(start, end), out)
                if force_pruned and self.score.signed and name in self.masks:
                    out.masked_fill_(~self.masks[name].view(-1)[start:end], -math.inf)
                yield name, start, end, out

    def _all_score_chunks(self) -> Iterator[torch.Tensor]:
        return (scores for _, _, _, scores in self._score_chunks())

    def _sample_scores(self, n: int) -> torch.Tensor:
        positions = torch.randint(self.total, (n,), generator=self.generator).sort().values
        samples, offset = [], 0
        for name, param in self.params.items():
            lo, hi = torch.searchsorted(positions, torch.tensor([offset, offset + param.numel()])).tolist()
            index = (positions[lo:hi] - offset).to(param.device)
            out = torch.empty(index.numel(), device=param.device)
            self.score.fn(self._inputs(name, param).take(index), out)
            if self.score.signed and name in self.masks:
                out.masked_fill_(~self.masks[name].view(-1)[index], -math.inf)
            samples.append(out.cpu())
            offset += param.numel()
        return torch.cat(samples)

    # -- accounting -------------------------------------------------------

    def mask_bytes(self) -> int:
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
        self.masks = {name: mask.to(device) for name, mask in state["masks"].items()}
        for name, tensor in state["tracked"].items():
            self.tracked[name].copy_(tensor)
        self.history = list(state["history"])
        self.generator.set_state(state["generator"])
