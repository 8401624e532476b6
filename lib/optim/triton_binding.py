"""Which tensors a Triton masked step runs over, kept from step to step and checked by identity.

On an H200 the host work around MaskedAdamW's kernel used to outlast it:
1.43 ms of Python and small torch operations per GPT-2 124M step (a key of
every tensor's address, then the scalar rows from the device step counts in
about a dozen torch operations) against a 1.05 ms kernel, while torch's fused
AdamW spends 0.50 ms on the host (docs/performance.md). A Binding is made when
the tensors change and then, each step, only
- checks that they have not: the same parameter objects and storage, state
  dicts, moment tensors, step counts, masks, and gradients on the same
  parameters (identity and address comparisons, no torch operation);
- advances the step counts, and computes the scalar rows on the host in
  float64 from host copies of those counts (as torch's fused AdamW and
  AdamWSPAM compute their scalars in double);
- hands the rows with the gradients' addresses to the plan, which sends both
  in one copy.
AdamWBinding (MaskedAdamW): torch keeps the counts as tensors beside the
parameters, read once when the binding is made and then advanced on the
device with one foreach add (torch's state, read by checkpoints and the
scores) and here; their version counters tell whether anything else moved
them (a two-pass step, a state loaded in place). SpamBinding
(MaskedAdamWSPAM): AdamWSPAM keeps them as ints, compared by value. Either
way a moved count means a new binding.
"""
from __future__ import annotations

import math
from operator import is_
from typing import Any, Optional

import torch

from lib.optim import triton_masked_adamw


def scalar_row(step: float, lr: float, betas: tuple[float, float], eps: float,
               weight_decay: float) -> tuple[float, ...]:
    """triton_masked_adamw.COLUMNS for a tensor at its step count `step` (already advanced), in float64."""
    beta1, beta2 = betas
    return (lr / (1 - beta1 ** step), 1 - lr * weight_decay, 1 - beta1, beta2, 1 - beta2,
            math.sqrt(1 - beta2 ** step), eps)


def _same(a: list, b: list) -> bool:
    """a and b hold the same objects, in order."""
    return len(a) == len(b) and all(map(is_, a, b))


class Binding:
    """One MultiTensorPlan and what it was made from: entries (group index, parameter, its state, its mask)
    for every parameter with a gradient, in group order, states made and their moments fit for the kernel;
    counts, each entry's step count before this step. A subclass says how its optimizer keeps the counts."""

    KERNEL = ""  # triton_masked_adamw.KERNELS key

    def __init__(self, optimizer: torch.optim.Optimizer, masks: dict, entries: list[tuple[int, Any, dict, Any]],
                 counts: list[float]):
        self.state_table, self.masks = optimizer.state, masks
        self.all_params = [p for group in optimizer.param_groups for p in group["params"]]
        self.has_grad = [p.grad is not None for p in self.all_params]
        self.params = [p for _, p, _, _ in entries]
        self.states = [s for _, _, s, _ in entries]
        self.keeps = [keep for _, _, _, keep in entries]
        self.exp_avgs = [s["exp_avg"] for s in self.states]
        self.exp_avg_sqs = [s["exp_avg_sq"] for s in self.states]
        self.addresses = [p.data_ptr() for p in self.params]
        # One scalar row per distinct (group, step count): usually one per group, as the counts advance together.
        row_of: dict[tuple[int, float], int] = {}
        rows = [row_of.setdefault((g, c), len(row_of)) for (g, _, _, _), c in zip(entries, counts)]
        self.row_counts = list(row_of)
        self.taken = 0  # steps since the counts were read
        self.plan = triton_masked_adamw.MultiTensorPlan(
            [(p, s["exp_avg"], s["exp_avg_sq"], keep) for _, p, s, keep in entries], rows, self.KERNEL)

    def gradients(self, optimizer: torch.optim.Optimizer, masks: dict) -> Optional[list[torch.Tensor]]:
        """The gradients to step, in the plan's order, if the binding still describes `optimizer` and `masks`;
        else None. A mask dict made anew each step (the pruner's) matches while it holds the same tensors."""
        if optimizer.state is not self.state_table:
            return None
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if not _same(params, self.all_params):
            return None
        grads = [p.grad for p in params]
        if [g is not None for g in grads] != self.has_grad:
            return None
        if masks is not self.masks:
            if not _same(list(map(masks.get, self.params)), self.keeps):
                return None
            self.masks = masks
        states = self.states
        if not (_same(list(map(optimizer.state.get, self.params)), states)
                and _same([s.get("exp_avg") for s in states], self.exp_avgs)
                and _same([s.get("exp_avg_sq") for s in states], self.exp_avg_sqs)
                and self.counts_unmoved()
                and list(map(torch.Tensor.data_ptr, self.params)) == self.addresses):
            return None
        return grads if len(grads) == len(self.params) else [g for g in grads if g is not None]

    def counts_unmoved(self) -> bool:
        """Whether the step counts are where this binding's last step left them."""
        raise NotImplementedError


class AdamWBinding(Binding):
    """For MaskedAdamW: torch keeps each step count as a float32 tensor beside its parameter. They are read
    once here; each step advances them on the device (one foreach add) and in the host copies."""

    KERNEL = "adamw"

    def __init__(self, optimizer: torch.optim.Optimizer, masks: dict, entries: list[tuple[int, Any, dict, Any]]):
        self.steps = [s["step"] for _, _, s, _ in entries]
        super().__init__(optimizer, masks, entries, torch.stack(self.steps).tolist())  # the one read of the counts
        self.versions = [s._version for s in self.steps]

    def counts_unmoved(self) -> bool:
        # A count moved by anything else (a two-pass step, a state loaded in place) has a new version.
        return (_same([s.get("step") for s in self.states], self.steps)
                and [s._version for s in self.steps] == self.versions)

    def step(self, optimizer: torch.optim.Optimizer, grads: list[torch.Tensor]) -> None:
        """One masked AdamW step of every bound tensor: counts advanced on the device and here, then the kernel."""
        torch._foreach_add_(self.steps, 1)
        self.versions = [s._version for s in self.steps]
        self.taken += 1
        groups = optimizer.param_groups
        rows = [scalar_row(count + self.taken, float(groups[g]["lr"]), tuple(groups[g]["betas"]),
                           float(groups[g]["eps"]), float(groups[g]["weight_decay"]))
                for g, count in self.row_counts]
        self.plan.step(grads, rows)


class SpamBinding(Binding):
    """For MaskedAdamWSPAM: AdamWSPAM keeps each step count as a Python int in the state, advanced here."""

    KERNEL = "spam"

    def __init__(self, optimizer: torch.optim.Optimizer, masks: dict, entries: list[tuple[int, Any, dict, Any]]):
        counts = [s["step"] for _, _, s, _ in entries]
        super().__init__(optimizer, masks, entries, counts)
        self.expected = counts

    def counts_unmoved(self) -> bool:
        return [s["step"] for s in self.states] == self.expected

    def step(self, optimizer: Any, grads: list[torch.Tensor], reset: bool, clip: bool, scale: float) -> None:
        """One masked AdamWSPAM step of every bound tensor, at this global step's reset, clip and warm-up scale."""
        for state in self.states:
            state["step"] += 1
        self.expected = [s["step"] for s in self.states]
        self.taken += 1
        groups = optimizer.param_groups
        rows = [triton_masked_adamw.spam_scalars(count + self.taken, float(groups[g]["lr"]), tuple(groups[g]["betas"]),
                                                 float(groups[g]["eps"]), float(groups[g]["weight_decay"]), scale,
                                                 optimizer.theta)
                for g, count in self.row_counts]
        self.plan.step(grads, rows, int(reset), int(clip))


# The binding of each multi-tensor kernel (triton_masked_adamw.KERNELS), by the same name.
BINDINGS: dict[str, type[Binding]] = {kind.KERNEL: kind for kind in (AdamWBinding, SpamBinding)}
