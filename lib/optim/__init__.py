"""Optimizer registry: name -> builder(param_groups, lr, params) -> torch optimizer.

`params` is the run's OptimizerParams (lib/spec.py: Kconfig values, already
checked). Parameter groups follow nanoGPT: tensors of rank
>= 2 (Linear and Conv2d weights, embeddings) get weight decay; biases and
normalisation weights do not. Formulas and sources: docs/algorithms.md.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from lib.errors import UserError
from lib.optim.adamwadv import AdamWAdv
from lib.optim.fused_masked_adamw import MaskedAdamW
from lib.optim.fused_masked_spam import MaskedAdamWSPAM
from lib.optim.spam import AdamWSPAM
from lib.spec import OptimizerParams

OptimizerBuilder = Callable[[list[dict[str, Any]], float, OptimizerParams], torch.optim.Optimizer]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: decayed weights (rank >= 2) and undecayed biases/norm weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def _implementation(groups: list[dict[str, Any]]) -> dict[str, bool]:
    # torch's fused Adam/AdamW kernels (CPU and CUDA) are the fastest; they
    # need every parameter floating point on one of those devices.
    params = [p for g in groups for p in g["params"]]
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return {"fused": True} if fused else {"foreach": True}


def _sgd(groups: list[dict[str, Any]], lr: float, p: OptimizerParams) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=lr, momentum=p.momentum, foreach=True)


def _adam(groups: list[dict[str, Any]], lr: float, p: OptimizerParams) -> torch.optim.Optimizer:
    # Adam adds weight decay to the gradient (coupled L2), per group as configured above.
    return torch.optim.Adam(groups, lr=lr, betas=p.betas, eps=p.eps, amsgrad=p.amsgrad, **_implementation(groups))


def _adamw(groups: list[dict[str, Any]], lr: float, p: OptimizerParams) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=lr, betas=p.betas, eps=p.eps, amsgrad=p.amsgrad, **_implementation(groups))


def _adamwadv(groups: list[dict[str, Any]], lr: float, p: OptimizerParams) -> torch.optim.Optimizer:
    return AdamWAdv(groups, lr, betas=p.betas, eps=p.eps, amsgrad=p.amsgrad, grad_clip=p.adv.grad_clip,
                    **_implementation(groups))


def _adamwspam(groups: list[dict[str, Any]], lr: float, p: OptimizerParams,
               cls: type[AdamWSPAM] = AdamWSPAM) -> torch.optim.Optimizer:
    if p.amsgrad:
        raise UserError("AMSGrad is not part of SPAM: unset ADAMWPRUNE_AMSGRAD or pick another AdamWPrune base")
    s = p.spam
    # SPAM_INTERVAL=0 or SPAM_PERIODIC_RESET=n: no reset (so no warm-up); SPAM_WARMUP=n: warm-up length 0.
    return cls(groups, lr, p.betas, p.eps, theta=s.theta, enable_clip=s.enable_clip,
               reset_interval=s.interval if s.periodic_reset else 0,
               warmup_steps=s.warmup_steps if s.warmup else 0, clip_delay_steps=s.clip_delay_steps)


def adamwprune_base_params(p: OptimizerParams) -> OptimizerParams:
    """The base optimizer's settings: AdamWPrune's own betas, eps, decay and AMSGrad, with the
    base's own (AdamWAdv's clip, SPAM's settings) from their menus."""
    return OptimizerParams(learning_rate=p.learning_rate, weight_decay=p.weight_decay, betas=p.betas, eps=p.eps,
                           amsgrad=p.amsgrad, spam=p.spam, adv=p.adv)


def _adamwprune(groups: list[dict[str, Any]], lr: float, p: OptimizerParams) -> torch.optim.Optimizer:
    # AdamWPrune is its base optimizer configured by AdamWPrune's Kconfig
    # values; its state pruning (lib/pruning, `state` runs) reads that
    # optimizer's own exp_avg / exp_avg_sq, so it adds no optimizer memory.
    # Base AdamW without AMSGrad is MaskedAdamW: the same AdamW, taking the
    # pruner's masks into its step (one pass instead of two on CPU).
    base = adamwprune_base_params(p)
    if p.base == "adamw" and not base.amsgrad:
        return MaskedAdamW(groups, lr, betas=base.betas, eps=base.eps, **_implementation(groups))
    if p.base == "adamwspam":  # MaskedAdamWSPAM: AdamWSPAM, the masks in one Triton pass on CUDA
        return _adamwspam(groups, lr, base, MaskedAdamWSPAM)
    return OPTIMIZERS[p.base](groups, lr, base)


OPTIMIZERS: dict[str, OptimizerBuilder] = {"sgd": _sgd, "adam": _adam, "adamw": _adamw, "adamwadv": _adamwadv,
                                           "adamwspam": _adamwspam, "adamwprune": _adamwprune}


def build_optimizer(name: str, model: nn.Module, lr: float, params: OptimizerParams) -> torch.optim.Optimizer:
    """Build the named optimizer with decay only on rank >= 2 tensors."""
    if name not in OPTIMIZERS:
        raise UserError(f"optimizer {name!r} is unknown (have: {', '.join(OPTIMIZERS)})")
    return OPTIMIZERS[name](param_groups(model, params.weight_decay), lr, params)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in the optimizer's per-parameter state tensors, measured."""
    return sum(t.numel() * t.element_size() for state in optimizer.state.values()
               for t in state.values() if torch.is_tensor(t) and t.dim() > 0)
