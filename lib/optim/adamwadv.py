"""AdamWAdv: AdamW with AMSGrad and global-norm gradient clipping.

Its third ingredient, cosine annealing to ADV_COSINE_ETA_MIN, is a learning
rate schedule and lives with the others in lib/optim/lr_schedules.py.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import torch


class AdamWAdv(torch.optim.AdamW):
    """torch AdamW (AMSGrad by default) that clips the gradients' global L2 norm before each step."""

    def __init__(self, params: Iterable[Any], lr: float, *, grad_clip: float = 1.0, amsgrad: bool = True,
                 **adamw_kwargs: Any) -> None:
        super().__init__(params, lr=lr, amsgrad=amsgrad, **adamw_kwargs)
        self.grad_clip = grad_clip

    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.grad_clip > 0:
            grads = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(grads, self.grad_clip, foreach=True)
        super().step()
        return loss
