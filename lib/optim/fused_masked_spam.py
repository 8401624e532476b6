"""MaskedAdamWSPAM: AdamWPrune on the AdamWSPAM base, the pruner's masks taken into its step.

On CUDA with Triton installed, for float32 tensors, step() is one Triton pass
per tensor (lib/optim/triton_masked_adamw.py, _masked_spam): SPAM's whole
step (reset, spike-aware clipping, moments, the warmed-up bias-corrected
update, decay) with the mask applied to the gradient and written to w, m and
v, so pruned weights and their moments stay exactly 0. It replaces a masking
pass plus AdamWSPAM's eight or more elementwise torch operations (fifteen on
clipping steps), each a pass over the tensor. Anywhere else (CPU, CUDA
without Triton, other dtypes, sparse gradients) it is the path it replaces,
bit for bit: the pruned gradients zeroed in a separate pass
(lib/pruning/mask_ops.py), then AdamWSPAM's step (lib/optim/spam.py), after
one `note:` line saying why (MaskedStep in fused_masked_adamw.py). There is no
CPU kernel: on CPU AdamWPrune's SPAM base keeps that path.

State and state_dict are AdamWSPAM's (exp_avg, exp_avg_sq, an int step per
parameter, total_step per group): scores, checkpoints and state_bytes read
them unchanged.
"""
from __future__ import annotations

from typing import Optional

from lib.optim.fused_masked_adamw import MaskedStep, unfit
from lib.optim.spam import AdamWSPAM


class MaskedAdamWSPAM(MaskedStep, AdamWSPAM):
    """AdamWSPAM whose step keeps the entries that set_masks() prunes at exactly zero; without masks, AdamWSPAM."""

    def _fused_step(self) -> Optional[str]:
        """Every tensor through the Triton SPAM kernel, or why not (nothing stepped, no count advanced)."""
        device = next(iter(self.masks)).device
        if not any(p.device.type in self.TRITON_DEVICES for p in self.masks):
            return f"the fused step on the AdamWSPAM base runs on CUDA with Triton; these parameters are on {device}"
        from lib.optim import triton_masked_adamw  # imported here: Triton loads in 0.25 s, needed on CUDA only
        reason = triton_masked_adamw.unavailable()
        if reason:
            return f"{reason}; on {device} the fused step needs Triton"
        launches = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state, keep = self.state.get(p), self.masks.get(p)
                moments = (state["exp_avg"], state["exp_avg_sq"]) if state else ()  # made by the step if new
                reason = unfit(p, moments, keep, p.device, "the Triton kernel")
                if reason:
                    return reason
                launches.append((group, p, keep))
        reset, clip, scale = self._advance()
        for group, p, keep in launches:
            state = self._state(p)
            state["step"] += 1
            scalars = triton_masked_adamw.spam_scalars(state["step"], float(group["lr"]), tuple(group["betas"]),
                                                       float(group["eps"]), float(group["weight_decay"]), scale,
                                                       self.theta)
            triton_masked_adamw.spam_step_tensor(p, p.grad, state["exp_avg"], state["exp_avg_sq"], keep, scalars,
                                                 reset, clip)
        return None
