"""AdamWSPAM: AdamW with spike-aware clipping and momentum reset (SPAM, arXiv 2501.06842).

Per parameter, at global step t (1-based) with k steps since the last reset:
1. momentum reset: every `reset_interval` steps (t-1 divisible by it, t > 1)
   m and v are zeroed and k restarts, so bias correction restarts too;
2. spike-aware clipping (k > 1, so v holds history): entries with
   g^2 > theta * v are replaced by sign(g) * sqrt(theta * v);
3. Adam moments and update with decoupled weight decay, as torch.optim.AdamW;
4. the learning rate is scaled by a cosine warm-up over the first
   `warmup_steps` steps after each reset (and at the start): from 0.01 to 1,
   1 - 0.99 * (1 + cos(pi * (k-1) / N)) / 2, as the authors' CosineDecay(0.99, N).
With clipping, reset and warm-up off it is exactly AdamW (tests check both).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Optional

import torch


def warmup_factor(steps_since_reset: int, warmup_steps: int) -> float:
    """Learning-rate multiplier at the k-th step (1-based) after a reset."""
    j = steps_since_reset - 1
    if warmup_steps <= 0 or j >= warmup_steps:
        return 1.0
    return 1.0 - 0.99 * (1.0 + math.cos(math.pi * j / warmup_steps)) / 2.0


class AdamWSPAM(torch.optim.Optimizer):
    """SPAM on AdamW; state per parameter: exp_avg, exp_avg_sq, step (since reset), total_steps."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, theta: float = 5000.0, enable_clip: bool = True,
                 reset_interval: int = 0, warmup_steps: int = 0) -> None:
        if theta <= 0:
            raise ValueError(f"theta must be positive, got {theta}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.theta, self.enable_clip = theta, enable_clip
        self.reset_interval, self.warmup_steps = reset_interval, warmup_steps

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group)
        return loss

    def _update(self, param: torch.Tensor, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        state = self.state[param]
        if not state:
            state.update(step=0, total_steps=0, exp_avg=torch.zeros_like(param), exp_avg_sq=torch.zeros_like(param))
        m, v = state["exp_avg"], state["exp_avg_sq"]
        state["total_steps"] += 1
        if self.reset_interval and state["total_steps"] > 1 and (state["total_steps"] - 1) % self.reset_interval == 0:
            m.zero_()
            v.zero_()
            state["step"] = 0
        state["step"] += 1
        k, grad = state["step"], param.grad
        if self.enable_clip and k > 1:
            limit = v * self.theta
            spikes = grad * grad > limit
            if bool(spikes.any()):
                grad = torch.where(spikes, grad.sign() * limit.sqrt_(), grad)
        m.lerp_(grad, 1.0 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        lr = group["lr"] * warmup_factor(k, self.warmup_steps)
        param.mul_(1.0 - lr * group["weight_decay"])
        bias_correction1, bias_correction2 = 1.0 - beta1 ** k, 1.0 - beta2 ** k
        denom = (v.sqrt() / math.sqrt(bias_correction2)).add_(group["eps"])
        param.addcdiv_(m, denom, value=-lr / bias_correction1)
