"""AdamWSPAM: SPAM (arXiv 2501.06842) as the authors' reference code runs it.

Reference: TianjinYellow/SPAM-Optimizer, galore_torch/SPAM.py (read in the
public copy ffuhu/SPAM-tests@a3b19b7212956d8983280b14292362d28a7b40a0; the
earlier ffuhu/SPAM-Optimizer copy has the same step). Where the paper and the
reference differ we follow the reference; docs/algorithms.md lists each
decision. Our names: interval = the reference's DeltaT, warmup_steps = its
warmup_steps (N), theta = its threshold, clip_delay_steps = its
grad_accu_steps (A).

One call of step() is global step t = 1, 2, ... (the reference's
total_step + 1, counted for the whole optimizer). Per parameter with a
gradient, with n its own step count (never reset):
1. reset: when interval > 0 and t % interval == 0, m = v = 0 (n goes on);
2. n = n + 1;
3. spike-aware clipping, only when t >= A and (interval == 0 or
   t % interval >= A), i.e. not before v is established at the start and
   after each reset: where g^2 > theta * v, g = sign(g) * sqrt(theta * v)
   (on a copy; p.grad is left as it was);
4. m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g^2;
5. w = w - scale * lr * sqrt(1 - beta2^n) / (1 - beta1^n) * m / (sqrt(v) + eps)
   (eps added to the uncorrected sqrt(v), as the reference);
6. w = w - lr * wd * w after the update, with the un-warmed lr.
scale is the warm-up after a reset, the reference's
1 - CosineDecay(0.99, N).get_dr(c): with c = t % interval steps since the
last reset, scale = 1 - 0.99 * (1 + cos(pi * c / (N + 1))) / 2 for c < N,
else 1 (0.01 on the reset step itself). Before the first reset (and with
interval 0 or N = 0) scale = 1: there is no warm-up at the start.

State: per parameter exp_avg, exp_avg_sq (tensors) and step (int, n); the
global t is each param group's "total_step" (int), so state_dict carries it.
A weight whose gradient is zeroed before every step keeps m = v = 0, gets a
zero update and a zero decay: pruned weights stay exactly 0.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Optional

import torch


def warmup_scale(t: int, interval: int, warmup_steps: int) -> float:
    """Multiplier of the Adam update at global step t (1-based): cosine warm-up after each reset.

    The reference starts its counter at N + 1 (no warm-up), sets it to 0 at the
    end of the step before each reset step (t % interval == 0, from t = 2 on)
    and adds 1 per step, so on step t it is t % interval once t >= max(interval, 2).
    """
    if interval <= 0 or warmup_steps <= 0 or t < max(interval, 2):
        return 1.0
    c = t % interval
    if c >= warmup_steps:
        return 1.0
    return 1.0 - 0.99 * (1.0 + math.cos(math.pi * c / (warmup_steps + 1))) / 2.0


def clipping_active(t: int, interval: int, clip_delay_steps: int) -> bool:
    """Whether spike-aware clipping applies at global step t (the reference's grad_accu_steps rule)."""
    if t < clip_delay_steps:
        return False
    return interval <= 0 or t % interval >= clip_delay_steps


class AdamWSPAM(torch.optim.Optimizer):
    """SPAM on AdamW as the reference code; per-parameter state: exp_avg, exp_avg_sq, step.

    Defaults are the reference's (eps 1e-6, DeltaT 500, N 150, threshold 5000,
    grad_accu_steps 20). reset_interval = 0 means no periodic reset (and so no
    warm-up); clip_delay_steps must be at least 2, or every first gradient
    would be clipped against v = 0.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, *, theta: float = 5000.0, enable_clip: bool = True,
                 reset_interval: int = 500, warmup_steps: int = 150, clip_delay_steps: int = 20) -> None:
        if theta <= 0:
            raise ValueError(f"theta must be positive, got {theta}")
        if reset_interval < 0 or warmup_steps < 0:
            raise ValueError(f"reset_interval and warmup_steps must be >= 0, got {reset_interval}, {warmup_steps}")
        if clip_delay_steps < 2:
            raise ValueError(f"clip_delay_steps must be >= 2 (v is 0 on the first step), got {clip_delay_steps}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.theta, self.enable_clip = theta, enable_clip
        self.reset_interval, self.warmup_steps = int(reset_interval), int(warmup_steps)
        self.clip_delay_steps = int(clip_delay_steps)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        reset, clip, scale = self._advance()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group, reset, clip, scale)
        return loss

    def _advance(self) -> tuple[bool, bool, float]:
        """Count one global step t; (reset, clip, scale) at t, the same for every parameter."""
        # One global count for all groups (a group added later joins it).
        t = 1 + max(int(group.get("total_step", 0)) for group in self.param_groups)
        for group in self.param_groups:
            group["total_step"] = t
        reset = self.reset_interval > 0 and t % self.reset_interval == 0
        clip = self.enable_clip and clipping_active(t, self.reset_interval, self.clip_delay_steps)
        return reset, clip, warmup_scale(t, self.reset_interval, self.warmup_steps)

    def _state(self, param: torch.Tensor) -> dict[str, Any]:
        state = self.state[param]
        if not state:
            state.update(step=0, exp_avg=torch.zeros_like(param), exp_avg_sq=torch.zeros_like(param))
        return state

    def _update(self, param: torch.Tensor, group: dict[str, Any], reset: bool, clip: bool, scale: float) -> None:
        grad = param.grad
        if grad.is_sparse:
            raise RuntimeError("AdamWSPAM does not support sparse gradients")
        beta1, beta2 = group["betas"]
        state = self._state(param)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        if reset:
            m.zero_()
            v.zero_()
        state["step"] += 1
        n = state["step"]
        if clip:
            limit = v * self.theta
            grad = torch.where(grad * grad > limit, grad.sign() * limit.sqrt_(), grad)
        m.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        step_size = group["lr"] * math.sqrt(1.0 - beta2 ** n) / (1.0 - beta1 ** n)
        param.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-step_size * scale)
        if group["weight_decay"] > 0:
            param.add_(param, alpha=-group["lr"] * group["weight_decay"])
