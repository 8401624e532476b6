"""MaskedAdamW: torch's AdamW that keeps pruned entries exactly zero, the masking fused into its CPU step.

The pruner hands its masks (bool or bit-packed, lib/pruning/bitmask.py) over
with set_masks() instead of zeroing the pruned gradients itself. On CPU, for
float32 tensors, step() then runs one C pass (masked_adamw.c) that reads w, g,
m, v and the mask and writes w, m, v, with torch's fused AdamW arithmetic bit
for bit and 0 written where the mask prunes: about 29 bytes per weight (28.125
with bits) against 28 + 9 for a separate masking pass. On CUDA with Triton
installed, one Triton pass does the same (lib/optim/triton_masked_adamw.py).
Anywhere else (CUDA without Triton, other dtypes, AMSGrad, maximize, AMP grad
scaling, no C compiler) it zeroes the pruned gradients
(lib/pruning/mask_ops.py) and runs torch's own step, after printing once why.

The kernel is compiled with the system C compiler at first use (about 0.3 s)
into ~/.cache/adamwprune, keyed by the source, the compiler and the CPU, and
loaded with ctypes: no torch headers, no ninja. The gradients are not
modified. This module owns no pruning logic: which entries are pruned is the
pruner's business (lib/pruning/masks.py). MaskedStep, set_masks() and the
fallback with its note, is shared with MaskedAdamWSPAM (fused_masked_spam.py).
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from operator import attrgetter
from pathlib import Path
from typing import Any, Optional

import torch

from lib.pruning.bitmask import is_packed, packed_bytes
from lib.pruning.mask_ops import zero_pruned_

SOURCE = Path(__file__).with_name("masked_adamw.c")
# -ffp-contract=off: the source writes torch's fused multiply-adds explicitly (see masked_adamw.c).
CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off", "-fPIC", "-shared",
          "-pthread"]
CACHE_DIR = Path.home() / ".cache" / "adamwprune"
# torch's fused AdamW rounds the last numel % 8 entries of a tensor in its scalar loop, differently from
# the rest (its vector loop, and the 8-wide vectorised start of its remainder loop). Measured on torch
# 2.13's AVX512 kernel; tests/test_fused_step.py checks every remainder length.
SCALAR_TAIL = 8


class _Tensor(ctypes.Structure):
    """masked_adamw_tensor in masked_adamw.c, field for field."""
    _fields_ = ([(name, ctypes.c_void_p) for name in ("w", "g", "m", "v", "keep")]
                + [(name, ctypes.c_int64) for name in ("n", "vector_end", "keep_bits")]
                + [(name, ctypes.c_float) for name in ("decay", "lerp_weight", "beta2", "one_minus_beta2",
                                                        "bias_correction2_sqrt", "eps", "neg_step_size")])


def _cpu_identity() -> str:
    # -march=native code must not be reused on another CPU (a shared home directory on a cluster).
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(dict.fromkeys(l for l in lines if l.startswith(("model name", "flags"))))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def build_kernel(cache_dir: Path = CACHE_DIR) -> Path:
    """Compile masked_adamw.c into cache_dir (once per source, compiler and CPU); return the library's path."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler (cc or gcc) on PATH")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(CFLAGS).encode(), version.encode(),
                                     _cpu_identity().encode()])).hexdigest()[:16]
    library = cache_dir / f"masked_adamw-{key}.so"
    if not library.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Built under a temporary name and renamed, so concurrent runs never load half a file.
        handle, partial = tempfile.mkstemp(suffix=".so", dir=cache_dir)
        os.close(handle)
        try:
            result = subprocess.run([compiler, *CFLAGS, "-o", partial, str(SOURCE)], capture_output=True, text=True)
            if result.returncode != 0:
                raise OSError(f"{compiler} failed: {result.stderr.strip().splitlines()[-1:]}")
            os.replace(partial, library)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    return library


_KERNEL: dict[str, Any] = {}  # the loaded step function, or why there is none; filled at first use


def kernel() -> tuple[Optional[Any], Optional[str]]:
    """(the C step function, None) or (None, why it is unavailable); built and loaded once per process."""
    if not _KERNEL:
        try:
            function = ctypes.CDLL(str(build_kernel())).masked_adamw_step
            function.argtypes = [ctypes.POINTER(_Tensor), ctypes.c_int64, ctypes.c_int]
            function.restype = ctypes.c_int
            _KERNEL.update(function=function, reason=None)
        except (OSError, subprocess.SubprocessError) as exc:
            _KERNEL.update(function=None, reason=f"the masked AdamW kernel could not be built ({exc})")
    return _KERNEL["function"], _KERNEL["reason"]


class MaskedStep:
    """set_masks() and a step() that runs the subclass's one-pass masked step, or says once why not.

    Mixed in before a torch optimizer (MaskedAdamW here, MaskedAdamWSPAM in
    fused_masked_spam.py). Without masks step() is the optimizer's own. With
    masks it calls _fused_step(), which steps every tensor and returns None,
    or returns why it cannot (having stepped nothing); then the pruned
    gradients are zeroed in a separate pass (lib/pruning/mask_ops.py) and the
    optimizer's own step runs, after one `note:` line per new reason.
    fallback_note keeps the last reason, None while the step is fused.
    """

    # Where the Triton kernel steps the tensors (tests add "cpu" to run it under TRITON_INTERPRET=1).
    TRITON_DEVICES: tuple[str, ...] = ("cuda",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.masks: dict[torch.Tensor, torch.Tensor] = {}
        self.fallback_note: Optional[str] = None  # why the last masked step was not fused, once printed
        self._binding: Any = None  # the Triton launch tables and what they step (triton_binding.py)

    def set_masks(self, masks: dict[torch.Tensor, torch.Tensor]) -> None:
        """parameter -> keep mask (bool, True = keep, or bit-packed); from now on every step zeroes the
        other entries."""
        self.masks = masks

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self.masks:
            super().step()
            return loss
        reason = self._fused_step()
        if reason is None:
            return loss
        if reason != self.fallback_note:
            self.fallback_note = reason
            print(f"note: AdamWPrune masks pruned gradients in a separate pass: {reason}")
        zero_pruned_((p.grad, keep) for p, keep in self.masks.items() if p.grad is not None)
        super().step()
        return loss

    def _fused_step(self) -> Optional[str]:
        """Step every tensor in one masked pass and return None; or return why not, nothing stepped."""
        raise NotImplementedError

    def _bound(self, kernel: str, state_of: Any) -> tuple[Any, list[torch.Tensor], Optional[str]]:
        """(binding, gradients, None) for a Triton step of every parameter with a gradient: the binding
        (lib/optim/triton_binding.py, BINDINGS[kernel]) kept from the last step while its tensors stay the
        same, else made anew, states made by state_of(p); (None, [], None) when no parameter has a gradient;
        or (None, [], why the kernel cannot step them), nothing stepped or counted."""
        from lib.optim import triton_masked_adamw  # imported here: Triton loads in 0.25 s, needed on CUDA only
        reason = triton_masked_adamw.unavailable()
        if reason:
            return None, [], f"{reason}; on {next(iter(self.masks)).device} the fused step needs Triton"
        from lib.optim.triton_binding import BINDINGS
        binding = self._binding
        grads = binding.gradients(self, self.masks) if binding is not None else None
        if grads is None:
            self._binding = None
            entries = [(i, p, state_of(p), self.masks.get(p))
                       for i, group in enumerate(self.param_groups) for p in group["params"] if p.grad is not None]
            if not entries:
                return None, [], None
            for _, p, s, keep in entries:
                reason = unfit(p, (s["exp_avg"], s["exp_avg_sq"]), keep, entries[0][1].device, "the Triton kernel")
                if reason:
                    return None, [], reason
            grads = [p.grad for _, p, _, _ in entries]
        if set(map(attrgetter("dtype"), grads)) != {torch.float32} or not all(map(torch.Tensor.is_contiguous, grads)):
            return None, [], "a gradient that is not contiguous float32 (the Triton kernel takes contiguous float32 tensors)"
        if self._binding is None:
            self._binding = BINDINGS[kernel](self, self.masks, entries)
        return self._binding, grads, None


class MaskedAdamW(MaskedStep, torch.optim.AdamW):
    """torch.optim.AdamW whose step keeps the entries that set_masks() prunes at exactly zero.

    Without masks it is torch's AdamW. Its state (step, exp_avg, exp_avg_sq)
    and state_dict are torch's, so scores, checkpoints and state_bytes read it
    unchanged.
    """

    def _fused_step(self) -> Optional[str]:
        """One masked pass over every tensor (Triton on CUDA, C on CPU); or why it cannot run, nothing stepped."""
        reason = self._unsupported()
        if reason is None and any(p.device.type in self.TRITON_DEVICES for p in self.masks):
            return self._triton_step()
        function, kernel_reason = kernel()
        reason = reason or kernel_reason
        tensors, reason = ([], reason) if reason else self._kernel_arguments()
        if reason is None:
            function((_Tensor * len(tensors))(*tensors), len(tensors), torch.get_num_threads())
        return reason

    def _unsupported(self) -> Optional[str]:
        """Why no fused kernel applies to these settings, whatever the device; None if one may."""
        if getattr(self, "grad_scale", None) is not None or getattr(self, "found_inf", None) is not None:
            return "AMP gradient scaling"
        for group in self.param_groups:
            for option in ("amsgrad", "maximize", "capturable", "differentiable"):
                if group.get(option):
                    return f"{option} is set"
        return None

    def _triton_step(self) -> Optional[str]:
        """Every tensor through lib/optim/triton_masked_adamw.py (step counts kept on the device); or why not."""
        binding, grads, reason = self._bound("adamw", lambda p: self._state(p, p.device))
        if binding is not None:
            binding.step(self, grads)
        return reason

    def _state(self, p: torch.Tensor, step_device: torch.device) -> dict:
        """p's state, made as torch's fused AdamW makes it, its step count on `step_device`."""
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=step_device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        elif state["step"].device != step_device:  # from a foreach step: the kernel reads it where it runs
            state["step"] = state["step"].to(step_device)
        return state

    def _kernel_arguments(self) -> tuple[list[_Tensor], Optional[str]]:
        """(each stepped tensor described to the C kernel, None), its step count advanced; or ([], why it cannot be).

        The scalars are torch's, computed in double as its fused kernel does.
        """
        tensors, steps = [], []
        cpu = torch.device("cpu")
        for group in self.param_groups:
            lr, eps, decay = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
            beta1, beta2 = (float(b) for b in group["betas"])
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                state = self._state(p, cpu)
                m, v, keep = state["exp_avg"], state["exp_avg_sq"], self.masks.get(p)
                reason = unfit(p, (m, v), keep, cpu, "the C kernel")
                if reason:
                    return [], reason
                n, step = p.numel(), state["step"].item() + 1  # exact: float32 counts exactly to 2**24
                tensors.append(_Tensor(p.data_ptr(), grad.data_ptr(), m.data_ptr(), v.data_ptr(),
                                       keep.data_ptr() if keep is not None else None, n, n - n % SCALAR_TAIL,
                                       int(keep is not None and is_packed(keep)),
                                       1 - lr * decay, 1 - beta1, beta2, 1 - beta2, math.sqrt(1 - beta2 ** step),
                                       eps, -(lr / (1 - beta1 ** step))))
                steps.append(state["step"])
        if steps:
            torch._foreach_add_(steps, 1)
        return tensors, None


def unfit(p: torch.Tensor, moments: tuple[torch.Tensor, ...], keep: Optional[torch.Tensor], device: torch.device,
          kernel: str) -> Optional[str]:
    """Why `kernel` cannot step p, its gradient, its moments and its mask on `device`; None when it can.
    Shared by every one-pass step (the C kernel, the Triton AdamW and SPAM kernels)."""
    if not (_plain(p, device) and _plain(p.grad, device)):
        return (f"a {p.dtype} parameter or its gradient on {p.device} ({kernel} takes contiguous float32 tensors "
                f"on {device.type})")
    if not all(_plain(t, device) for t in moments):
        return f"optimizer state that is not contiguous float32 on {device.type} beside its parameter"
    if keep is not None and not _fits(keep, p):
        return f"a mask that is neither a bool tensor of its parameter's shape on {device.type} nor its bits"
    return None


def _fits(keep: torch.Tensor, p: torch.Tensor) -> bool:
    """A contiguous mask of p on its device: bools of its shape, or its ceil(n/8) packed bytes."""
    if keep.device != p.device or not keep.is_contiguous():
        return False
    if is_packed(keep):
        return keep.dim() == 1 and keep.numel() == packed_bytes(p.numel())
    return keep.dtype == torch.bool and keep.shape == p.shape


def _plain(t: torch.Tensor, device: torch.device) -> bool:
    return t.dtype is torch.float32 and t.device == device and t.layout is torch.strided and t.is_contiguous()
