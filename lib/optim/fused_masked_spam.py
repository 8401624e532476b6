"""MaskedAdamWSPAM: AdamWPrune on the AdamWSPAM base, the pruner's masks taken into its step.

On CUDA with Triton installed, for float32 tensors, step() is one Triton pass
over all tensors per mask kind (lib/optim/triton_masked_adamw.py,
_masked_spam_multi, its launch tables kept between steps by
lib/optim/triton_binding.py, SpamBinding): SPAM's whole
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

from lib.optim.fused_masked_adamw import MaskedStep
from lib.optim.spam import AdamWSPAM


class MaskedAdamWSPAM(MaskedStep, AdamWSPAM):
    """AdamWSPAM whose step keeps the entries that set_masks() prunes at exactly zero; without masks, AdamWSPAM."""

    def _fused_step(self) -> Optional[str]:
        """Every tensor through the Triton SPAM kernel, or why not (nothing stepped, no count advanced)."""
        device = next(iter(self.masks)).device
        if not any(p.device.type in self.TRITON_DEVICES for p in self.masks):
            return f"the fused step on the AdamWSPAM base runs on CUDA with Triton; these parameters are on {device}"
        binding, grads, reason = self._bound("spam", self._state)
        if reason is None:
            flags = self._advance()  # the global step counted only once the step is sure to run, as AdamWSPAM's
            if binding is not None:
                binding.step(self, grads, *flags)
        return reason
