"""Optimizer registry: name -> builder(param_groups, lr, params) -> torch optimizer.

Parameter groups follow nanoGPT: tensors of rank >= 2 (Linear and Conv2d
weights) get weight decay; biases and normalisation weights do not. The full
library (AdamWAdv, AdamWSPAM, AdamWPrune) registers here too.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from lib.errors import UserError

OptimizerBuilder = Callable[[list[dict[str, Any]], float, dict[str, Any]], torch.optim.Optimizer]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: decayed weights (rank >= 2) and undecayed biases/norm weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def _sgd(groups: list[dict[str, Any]], lr: float, p: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=lr, momentum=p["momentum"], foreach=True)


def _adam(groups: list[dict[str, Any]], lr: float, p: dict[str, Any]) -> torch.optim.Optimizer:
    # Adam adds weight decay to the gradient (coupled L2), per group as configured above.
    return torch.optim.Adam(groups, lr=lr, betas=tuple(p["betas"]), eps=p["eps"], foreach=True)


def _adamw(groups: list[dict[str, Any]], lr: float, p: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(p["betas"]), eps=p["eps"], foreach=True)


OPTIMIZERS: dict[str, OptimizerBuilder] = {"sgd": _sgd, "adam": _adam, "adamw": _adamw}


def build_optimizer(name: str, model: nn.Module, lr: float, params: dict[str, Any]) -> torch.optim.Optimizer:
    """Build the named optimizer with decay only on rank >= 2 tensors."""
    if name not in OPTIMIZERS:
        raise UserError(f"optimizer {name!r} is not available in this version (have: {', '.join(OPTIMIZERS)})")
    return OPTIMIZERS[name](param_groups(model, params.get("weight_decay", 0.0)), lr, params)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in the optimizer's per-parameter state tensors, measured."""
    return sum(t.numel() * t.element_size() for state in optimizer.state.values()
               for t in state.values() if torch.is_tensor(t) and t.dim() > 0)
