"""Bool masks over all prunable weights, chosen by one global threshold.

Prunable: the weights of every Linear and Conv2d layer (biases and
normalisation parameters are left dense). After each optimizer step the
masks zero the weight and the optimizer's per-parameter state of the same
shape (momentum, Adam moments), so a pruned weight stays exactly zero.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lib.errors import UserError
from lib.pruning.schedules import SCHEDULES, target_fraction
from lib.pruning.scores import SCORES


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name -> weight of every Linear and Conv2d layer, in module order."""
    return {f"{name}.weight": module.weight for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv2d))}


def global_threshold(scores: list[torch.Tensor], fraction: float) -> torch.Tensor | None:
    """The score at or below which `fraction` of all entries fall (exact order statistic)."""
    flat = torch.cat([s.reshape(-1).float() for s in scores])
    k = int(round(fraction * flat.numel()))
    if k <= 0:
        return None
    return flat.kthvalue(k).values


@torch.no_grad()
def measure_sparsity(params: dict[str, torch.Tensor]) -> tuple[float, dict[str, float], int, int]:
    """(global %, per-tensor %, zero count, total count) of exactly-zero entries."""
    per_layer, zeros, total = {}, 0, 0
    for name, tensor in params.items():
        z = int((tensor == 0).sum())
        per_layer[name] = 100.0 * z / tensor.numel()
        zeros, total = zeros + z, total + tensor.numel()
    return (100.0 * zeros / total if total else 0.0), per_layer, zeros, total


@dataclass
class GradualPruner:
    """Gradual global pruning from warm-up to ramp end, every `frequency` steps."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    method: str
    final_sparsity: float
    warmup_steps: int
    ramp_end_step: int
    frequency: int
    schedule: str = "cubic"
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.method not in SCORES:
            raise UserError(f"pruning method {self.method!r} is not available in this version "
                            f"(have: none, {', '.join(SCORES)})")
        if self.schedule not in SCHEDULES:
            raise UserError(f"sparsity schedule {self.schedule!r} is unknown (have: {', '.join(SCHEDULES)})")
        self.params = prunable_parameters(self.model)

    def _due(self, step: int) -> bool:
        if step < self.warmup_steps or (self.masks and step > self.ramp_end_step):
            return False
        return step >= self.ramp_end_step or (step - self.warmup_steps) % self.frequency == 0

    @torch.no_grad()
    def step(self, step: int) -> None:
        """Call after optimizer.step(): update masks when due, then apply them."""
        if self._due(step):
            self._update_masks(step)
        self.apply()

    @torch.no_grad()
    def _update_masks(self, step: int) -> None:
        fraction = target_fraction(self.schedule, step, self.warmup_steps, self.ramp_end_step, self.final_sparsity)
        score_fn = SCORES[self.method]
        scores = {name: score_fn(p, self.optimizer.state.get(p, {})) for name, p in self.params.items()}
        for name, mask in self.masks.items():
            scores[name].masked_fill_(~mask, float("-inf"))  # pruned stays pruned
        threshold = global_threshold(list(scores.values()), fraction)
        if threshold is None:
            return
        self.masks = {name: score > threshold for name, score in scores.items()}
        self.apply()
        measured, _, _, _ = measure_sparsity(self.params)
        self.history.append({"step": step, "target_pct": 100.0 * fraction, "measured_pct": measured})

    @torch.no_grad()
    def apply(self) -> None:
        for name, mask in self.masks.items():
            param = self.params[name]
            param.mul_(mask)
            for value in self.optimizer.state.get(param, {}).values():
                if torch.is_tensor(value) and value.shape == param.shape:
                    value.mul_(mask)

    def mask_bytes(self) -> int:
        return sum(m.numel() * m.element_size() for m in self.masks.values())
