"""The Triton masked AdamW step (lib/optim/triton_masked_adamw.py), run on CPU under TRITON_INTERPRET=1.

Against torch.optim.AdamW (for-loop implementation) on masked gradients:
every tensor's w, m and v within 1e-6 of its largest entry (w: or of its
largest starting weight; the kernel does the same float32 operations, and a
weight that crosses zero keeps the rounding error of its larger past, so an
entry-wise relative bound means nothing there), pruned entries exactly 0, for bool
and bit-packed masks, odd sizes and several tensors in two groups; and the
kernel compiles to an sm_90 cubin (no GPU needed). Skipped, with the reason,
where Triton is not installed. Its GPU speed is not tested.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

from lib.optim import triton_binding
from lib.optim.fused_masked_adamw import MaskedAdamW
from lib.optim.triton_binding import scalar_row
from lib.pruning import bitmask
from lib.pruning.mask_ops import zero_pruned_
from tests.conftest import ROOT

SHAPES = [(1,), (7,), (3, 11), (1025,)]
BETAS = (0.9, 0.999)


def tensors(seed=0, shapes=SHAPES, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen).to(device).requires_grad_() for shape in shapes]


def groups(params):
    return [{"params": params[:2], "weight_decay": 0.0}, {"params": params[2:], "weight_decay": 0.1}]


def masks_of(params, storage, seed=1, masked=None):
    """Keep masks of the first `masked` tensors (all by default): (bools, as stored in `storage`)."""
    gen = torch.Generator().manual_seed(seed)
    keep = {p: (torch.rand(p.shape, generator=gen) > 0.4).to(p.device) for p in params[:masked]}
    return keep, {p: bitmask.convert(k, p, storage) for p, k in keep.items()}


def train(optimizer, params, masks, two_pass, steps=5, seed=2, event=None):
    """`steps` steps on random gradients, the lr moving each step; event(step, optimizer, params, masks,
    two_pass) may change things before a step."""
    gen = torch.Generator().manual_seed(seed)
    zero_pruned_([(p.data, keep) for p, keep in masks.items()])
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = 1e-2 * (step + 1) / steps
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(p.device)
        if event is not None:
            event(step, optimizer, params, masks, two_pass)
        if two_pass:
            zero_pruned_((p.grad, keep) for p, keep in masks.items() if p.grad is not None)
        elif masks:
            optimizer.set_masks(dict(masks))  # a new dict of the same masks each step, as the pruner hands them
        optimizer.step()


def count_bindings(monkeypatch) -> list:
    """The bindings the optimizer makes from now on (each builds the launch tables and reads the step counts)."""
    made, make = [], triton_binding.Binding.__init__

    def counted(self, *args):
        make(self, *args)
        made.append(self)
    monkeypatch.setattr(triton_binding.Binding, "__init__", counted)
    return made


def assert_close(ours, reference, a, b, starts):
    for p, q, start in zip(a, b, starts):
        assert (p - q).abs().max() <= 1e-6 * max(q.abs().max(), start), tuple(p.shape)
        for key in ("exp_avg", "exp_avg_sq"):
            x, y = ours.state[p][key], reference.state[q][key]
            assert (x - y).abs().max() <= 1e-6 * y.abs().max(), (tuple(p.shape), key)
        assert float(ours.state[p]["step"]) == float(reference.state[q]["step"])


@pytest.mark.parametrize("masked", [None, 3], ids=["all-masked", "masked-and-dense"])
@pytest.mark.parametrize("storage", ["bool", "bits"])
def test_kernel_matches_torch_adamw_on_masked_gradients(interpreted, storage, masked, monkeypatch):
    """Every tensor in one launch per mask kind (masked-and-dense: a masked and a dense launch)."""
    monkeypatch.setattr(MaskedAdamW, "TRITON_DEVICES", ("cpu",))
    builds = count_bindings(monkeypatch)
    params, expected = tensors(), tensors()
    ours = MaskedAdamW(groups(params), lr=1e-2, betas=BETAS)
    reference = torch.optim.AdamW(groups(expected), lr=1e-2, betas=BETAS, foreach=False)
    keep, stored = masks_of(params, storage, masked=masked)
    starts = [p.detach().abs().max() for p in expected]
    train(ours, params, stored, two_pass=False)
    train(reference, expected, masks_of(expected, "bool", masked=masked)[0], two_pass=True)
    # the launch tables were built once, though train() hands over a new mask dict each step as the pruner does
    assert ours.fallback_note is None and len(builds) == 1
    assert_close(ours, reference, params, expected, starts)
    for p, k in keep.items():
        for t in (p, ours.state[p]["exp_avg"], ours.state[p]["exp_avg_sq"]):
            assert not t[~k].any()


def skip_a_parameter(step, optimizer, params, masks, two_pass):
    if step == 1:  # no gradient: torch leaves it and its count alone, so counts differ within a group after
        params[2].grad = None


def take_one_two_pass_step(step, optimizer, params, masks, two_pass):
    if step == 2:  # a gradient the kernel refuses: that step is the two-pass one, which advances the counts
        params[2].grad = params[2].grad.t().contiguous().t()


def load_a_copy_of_the_state(step, optimizer, params, masks, two_pass):
    if step == 2 and not two_pass:  # a checkpoint loaded mid-run: every state tensor is new
        optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))


MOVED_FROM: list = []


def move_a_parameter(step, optimizer, params, masks, two_pass):
    if step == 2 and not two_pass:  # the parameter's storage replaced (p.data = ...): the old one must not be stepped
        MOVED_FROM.append(params[3].data)  # kept alive, so a step through the old address fails the test cleanly
        params[3].data = params[3].data.clone()


def prune_more(step, optimizer, params, masks, two_pass):
    if step == 2:  # a new mask tensor pruning more, as a mask update that does not update in place
        p = params[0]
        every_third = torch.arange(p.numel(), device=p.device).view(p.shape) % 3 == 0
        keep = bitmask.read(masks[p], 0, p.numel()).view(p.shape) & ~every_third
        if two_pass:  # what the pruner does beside a two-pass step: zero what is newly pruned
            zero_pruned_([(p.data, keep)] + [(optimizer.state[p][k], keep) for k in ("exp_avg", "exp_avg_sq")])
        masks[p] = keep if two_pass else bitmask.convert(keep, p, "bits")


EVENTS = [skip_a_parameter, take_one_two_pass_step, load_a_copy_of_the_state, move_a_parameter, prune_more]


@pytest.mark.parametrize("event", EVENTS, ids=lambda f: f.__name__)
def test_kernel_follows_what_changes_between_steps(interpreted, event, monkeypatch):
    """The launch tables and host step counts are kept between steps (triton_binding.py): whatever changes
    the tensors or the counts in between must be seen, and the run still match torch's AdamW."""
    monkeypatch.setattr(MaskedAdamW, "TRITON_DEVICES", ("cpu",))
    follow_changes(event, "cpu", monkeypatch)


def follow_changes(event, device, monkeypatch) -> None:
    """Six steps of MaskedAdamW (bit masks) and of torch's AdamW on masked gradients, `event` in between;
    they must agree, and the binding must have been made again. Shared with tests/test_triton_cuda.py."""
    builds = count_bindings(monkeypatch)
    params, expected = tensors(device=device), tensors(device=device)
    ours = MaskedAdamW(groups(params), lr=1e-2, betas=BETAS)
    reference = torch.optim.AdamW(groups(expected), lr=1e-2, betas=BETAS, foreach=False)
    starts = [p.detach().abs().max() for p in expected]
    train(ours, params, masks_of(params, "bits")[1], two_pass=False, steps=6, event=event)
    train(reference, expected, masks_of(expected, "bool")[0], two_pass=True, steps=6, event=event)
    assert_close(ours, reference, params, expected, starts)
    assert len(builds) >= 2  # made again after the change


def test_kernel_without_a_mask_is_adamw(interpreted):
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(33, generator=gen)
    ref, start = w.clone().requires_grad_(), w.abs().max()
    m, v, step = torch.zeros(33), torch.zeros(33), torch.zeros(())
    reference = torch.optim.AdamW([ref], lr=1e-2, betas=BETAS, weight_decay=0.1, foreach=False)
    for _ in range(3):
        g = torch.randn(33, generator=gen)
        step += 1
        interpreted.MultiTensorPlan([(w, m, v, None)], [0]).step([g], [scalar_row(float(step), 1e-2, BETAS, 1e-8, 0.1)])
        ref.grad = g
        reference.step()
    assert (w - ref.detach()).abs().max() <= 1e-6 * max(ref.detach().abs().max(), start)


def test_without_triton_it_takes_the_two_pass_step_and_says_why(monkeypatch, capsys):
    from lib.optim import triton_masked_adamw
    monkeypatch.setattr(MaskedAdamW, "TRITON_DEVICES", ("cpu",))
    monkeypatch.setattr(triton_masked_adamw, "_MISSING", "triton is not installed (test)")
    params, expected = tensors(), tensors()
    ours = MaskedAdamW(groups(params), lr=1e-2, betas=BETAS, fused=True)
    reference = torch.optim.AdamW(groups(expected), lr=1e-2, betas=BETAS, fused=True)
    train(ours, params, masks_of(params, "bits")[1], two_pass=False)
    train(reference, expected, masks_of(expected, "bool")[0], two_pass=True)
    for p, q in zip(params, expected):
        assert torch.equal(p, q)
    assert "triton is not installed (test)" in capsys.readouterr().out


def multi_compile(kernel: str, flags: tuple[str, ...] = ()) -> str:
    """A program that compiles the multi-tensor `kernel` of lib/optim/triton_masked_adamw.py (per-step int32
    `flags` after its tables) for sm_90, each mask variant, as a GPU would at first use."""
    return f"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from lib.optim.triton_masked_adamw import {kernel} as kernel
signature = {{name: "*i64" for name in ("w_ptrs", "g_ptrs", "m_ptrs", "v_ptrs", "keep_ptrs", "numels", "rows")}}
signature.update(tensor_of_block="*i32", block_in_tensor="*i32", scalars_ptr="*fp32")
signature.update({{name: "i32" for name in {flags!r}}})
signature.update(HAS_MASK="constexpr", MASK_BITS="constexpr", BLOCK="constexpr")
for has_mask, bits in [(True, True), (True, False), (False, False)]:
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={{"HAS_MASK": has_mask, "MASK_BITS": bits, "BLOCK": 1024}})
    assert triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm["cubin"]
"""


@pytest.mark.slow  # Triton's GPU compiler in a subprocess (about 15 s)
def test_kernel_compiles_for_an_sm90_gpu_without_one():
    """The interpreter accepts code the GPU compiler refuses (globals, float64 maths): compile each variant
    to a cubin for sm_90 with Triton's bundled ptxas, as `make gpu-check` on an H100/H200 would."""
    compile_for_sm90(multi_compile("_masked_adamw_multi"))


def compile_for_sm90(program: str) -> None:
    """Run `program` (which compiles kernels with triton.compile) outside the interpreter; skip without
    an NVIDIA backend in this triton."""
    pytest.importorskip("triton", reason="triton is not installed (optional: pip install triton)")
    from triton.backends import backends
    if "nvidia" not in backends:
        pytest.skip("this triton has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
