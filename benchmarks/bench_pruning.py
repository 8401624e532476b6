#!/usr/bin/env python3
"""AdamWPrune cost on GPT-2 124M shapes, each figure a ratio to a baseline measured in the same run.

(a) optimizer step of AdamWPrune (base AdamW, 50% masks applied every step),
    with bool masks and with bit-packed masks, over torch.optim.AdamW
    fused=True and foreach=True, beside the two-pass step it replaces (mask
    the gradients, then torch's fused step), and the time to build its CPU
    kernel at first use; on CUDA also each step's achieved bytes/s (28 bytes
    per parameter, the fp32 AdamW floor) against the device's memory
    bandwidth (from its memory clock and bus width, and a measured copy),
    each step's host time (until step() returns) over the fused step's,
    and AdamWPrune on the AdamWSPAM base (its Triton step, clipping on)
    beside AdamWSPAM's torch step after the masking pass (on CPU that base
    is that two-pass step, so it is timed on CUDA only);
(b) one full mask update (bitter7 scores, exact global threshold, masks,
    zeroing), bool and bits, over the same update done the upstream way
    (scores computed twice, all concatenated, kthvalue on a 2% sample, float
    masks), with each one's sparsity error;
(c) our threshold search over torch.kthvalue on all scores concatenated;
(d) memory state pruning adds, over the weights' bytes, for each storage.

Usage: python benchmarks/bench_pruning.py [--device cpu|cuda] [--size 124M] [--repeats 5] [--threads N]
Results of past runs: docs/performance.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpt2.model import GPT, gpt2_config  # noqa: E402
from lib.optim import build_optimizer  # noqa: E402
from lib.spec import OptimizerParams, SpamParams  # noqa: E402
from lib.optim.fused_masked_adamw import build_kernel  # noqa: E402
from lib.pruning import GradualPruner, bitmask  # noqa: E402
from lib.pruning.mask_ops import zero_pruned_  # noqa: E402
from lib.pruning.scores import SCORE_EPS, SCORES, ScoreInputs  # noqa: E402
from lib.pruning.threshold import kth_smallest  # noqa: E402

SPARSITY = 0.5
ADAMW_BYTES_PER_PARAM = 28  # fp32 AdamW step: read w, g, m, v (16), write w, m, v (12)
STEPS = ("adamw_fused", "adamw_foreach", "adamwprune_bool", "adamwprune_bits", "adamwprune_two_pass")
SPAM_STEPS = ("adamwprune_spam_bool", "adamwprune_spam_bits", "adamwspam_two_pass")  # CUDA only
ADAMWPRUNE = OptimizerParams(learning_rate=None, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, base="adamw")
# SPAM's defaults, clipping from step 2 (the costlier step; no reset within the timed steps).
SPAM = SpamParams(theta=5000.0, enable_clip=True, periodic_reset=True, interval=500, warmup=True,
                  warmup_steps=150, clip_delay_steps=2)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of `fn` over `repeats` runs after one warm-up run."""
    _once(fn, device)
    return statistics.median(_once(fn, device) for _ in range(repeats))


def timed_together(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, float]:
    """Median wall time of each fn, the fns taking turns, so that load from elsewhere hits them alike."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for name, fn in fns.items():
        _once(fn, device)
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(_once(fn, device))
    return {name: statistics.median(values) for name, values in samples.items()}


def random_grads(model: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen, device=p.device) * 1e-3


def make_model(size: str, device: torch.device) -> GPT:
    torch.manual_seed(0)
    return GPT(gpt2_config(size)).to(device)


@torch.no_grad()
def upstream_mask_update(params: list[torch.Tensor], states: list[dict], fraction: float) -> float:
    """The upstream AdamWPrune update: returns the sparsity it reached (%)."""
    def score(p: torch.Tensor, state: dict) -> torch.Tensor:
        return p.abs() * (state["exp_avg_sq"].abs() + SCORE_EPS) ** 0.25
    everything = torch.cat([score(p, s).flatten() for p, s in zip(params, states)])
    sample = everything[torch.randint(everything.numel(), (max(1, everything.numel() // 50),),
                                      device=everything.device)]
    threshold = sample.kthvalue(max(1, int(fraction * sample.numel()))).values
    pruned = 0
    for p, s in zip(params, states):
        mask = (score(p, s) > threshold).float()
        p.mul_(mask)
        s["exp_avg"].mul_(mask)
        s["exp_avg_sq"].mul_(mask)
        pruned += int((mask == 0).sum())
    return 100.0 * pruned / sum(p.numel() for p in params)


def bench_step(model: GPT, device: torch.device, repeats: int) -> dict[str, float | str]:
    params = list(model.parameters())
    random_grads(model)
    fused = torch.optim.AdamW(params, lr=1e-4, fused=True)
    foreach = torch.optim.AdamW(params, lr=1e-4, foreach=True)
    ours = build_optimizer("adamwprune", model, 1e-4, ADAMWPRUNE)
    ours.step()  # create the moments the scores read
    pruner = GradualPruner(model, ours, "bitter7", SPARSITY, warmup_steps=0, ramp_end_step=1, frequency=1)
    pruner.update_masks(SPARSITY)
    masks = {pruner.params[name]: keep for name, keep in pruner.masks.items()}
    bits = {p: bitmask.convert(keep, p, "bits") for p, keep in masks.items()}
    # One optimizer per storage, as in training: a step keeps its launch tables while the masks stay the same.
    ours_bits = build_optimizer("adamwprune", model, 1e-4, ADAMWPRUNE)
    ours_bits.step()

    def adamwprune_bool() -> None:  # what pruner.before_optimizer_step() + step do with each storage
        ours.set_masks(dict(masks))
        ours.step()

    def adamwprune_bits() -> None:
        ours_bits.set_masks(dict(bits))
        ours_bits.step()

    def two_pass_step() -> None:  # AdamWPrune's step before the masking moved into it
        zero_pruned_(((p.grad, keep) for p, keep in masks.items()))
        fused.step()
    result: dict[str, float | str] = timed_together(
        {"adamw_fused": fused.step, "adamwprune_bool": adamwprune_bool, "adamwprune_bits": adamwprune_bits,
         "adamwprune_two_pass": two_pass_step}, device, repeats)
    result["adamw_foreach"] = timed(foreach.step, device, repeats)
    result["fused_note"] = getattr(ours, "fallback_note", None) or "masking fused into the step"
    if device.type == "cuda":
        result.update({f"{name}_host": seconds for name, seconds in host_times(
            {"adamw_fused": fused.step, "adamwprune_bool": adamwprune_bool, "adamwprune_bits": adamwprune_bits},
            repeats).items()})
        result.update(bench_spam_step(model, device, repeats, masks, bits))
    if device.type == "cpu":
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            build_kernel(Path(cache))
            result["kernel_build_s"] = time.perf_counter() - start
    return result


def bench_spam_step(model: GPT, device: torch.device, repeats: int, masks: dict,
                    bits: dict) -> dict[str, float | str]:
    """AdamWPrune on AdamWSPAM (MaskedAdamWSPAM: one Triton pass) against masking then AdamWSPAM's own step."""
    # One optimizer per storage, as in training: a step keeps its launch tables while the masks stay the same.
    ours, ours_bits = (build_optimizer("adamwprune", model, 1e-4,
                                       dataclasses.replace(ADAMWPRUNE, base="adamwspam", spam=SPAM)) for _ in range(2))
    spam = build_optimizer("adamwspam", model, 1e-4, OptimizerParams(
        learning_rate=None, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, spam=SPAM))

    def spam_bool() -> None:
        ours.set_masks(dict(masks))
        ours.step()

    def spam_bits() -> None:
        ours_bits.set_masks(dict(bits))
        ours_bits.step()

    def spam_two_pass() -> None:
        zero_pruned_(((p.grad, keep) for p, keep in masks.items()))
        spam.step()
    result: dict[str, float | str] = timed_together(
        {"adamwprune_spam_bool": spam_bool, "adamwprune_spam_bits": spam_bits, "adamwspam_two_pass": spam_two_pass},
        device, repeats)
    result["spam_note"] = getattr(ours, "fallback_note", None) or "masking fused into the step"
    return result


def bench_mask_update(model: GPT, device: torch.device, repeats: int) -> dict[str, float]:
    random_grads(model, seed=1)
    ours = build_optimizer("adamwprune", model, 1e-4, ADAMWPRUNE)
    ours.step()
    pruner = GradualPruner(model, ours, "bitter7", SPARSITY, warmup_steps=0, ramp_end_step=1, frequency=1)
    bits_pruner = GradualPruner(model, ours, "bitter7", SPARSITY, warmup_steps=0, ramp_end_step=1, frequency=1,
                                mask_storage="bits")
    snapshot = {p: (p.detach().clone(), {k: v.clone() for k, v in ours.state[p].items()}) for p in pruner.params.values()}

    def restore() -> None:  # each update starts from the same dense weights
        for p, (weight, state) in snapshot.items():
            p.data.copy_(weight)
            for key, value in state.items():
                ours.state[p][key].copy_(value)
        pruner.masks, bits_pruner.masks = {}, {}
    result: dict[str, float] = {}
    for label, each in (("ours", pruner), ("bits", bits_pruner)):
        samples = []
        for _ in range(repeats):
            restore()
            samples.append(_once(lambda: each.update_masks(SPARSITY), device))
        result[f"{label}_s"] = statistics.median(samples)
        result[f"{label}_error_pts"] = abs(each.history[-1]["measured_pct"] - 100 * SPARSITY)
        result[f"{label}_scratch_bytes"] = each.last_update_scratch_bytes
        result[f"{label}_mask_bytes"] = each.mask_bytes()
    params = list(pruner.params.values())
    states = [ours.state[p] for p in params]
    samples, reached = [], 0.0
    for _ in range(repeats):
        restore()
        start = _start(device)
        reached = upstream_mask_update(params, states, SPARSITY)
        samples.append(_stop(start, device))
    result["upstream_s"] = statistics.median(samples)
    result["upstream_error_pts"] = abs(reached - 100 * SPARSITY)
    restore()
    return result


def host_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median host time of each CUDA fn: from an idle GPU until fn returns, the GPU not waited for. A step
    whose host work outlasts its kernels keeps the GPU waiting (docs/performance.md, the Triton step)."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats + 1):
        for name, fn in fns.items():
            torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    torch.cuda.synchronize()
    return {name: statistics.median(values[1:]) for name, values in samples.items()}  # the first: warm-up


def _start(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def _stop(start: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _once(fn: Callable[[], object], device: torch.device) -> float:
    start = _start(device)
    fn()
    return _stop(start, device)


def bench_threshold(model: GPT, device: torch.device, repeats: int) -> dict[str, float]:
    random_grads(model, seed=2)
    ours = build_optimizer("adamwprune", model, 1e-4, ADAMWPRUNE)
    ours.step()
    pruner = GradualPruner(model, ours, "bitter7", SPARSITY, warmup_steps=0, ramp_end_step=1, frequency=1)
    scores = []
    for p in pruner.params.values():
        out = torch.empty(p.numel(), device=device)
        SCORES["bitter7"].fn(ScoreInputs(p.detach(), ours.state[p]["exp_avg"], ours.state[p]["exp_avg_sq"]).chunk(
            0, p.numel()), out)
        scores.append(out)
    total = sum(s.numel() for s in scores)
    k = int(round(SPARSITY * total))
    chunk = pruner.chunk_size
    gen = torch.Generator().manual_seed(0)

    def chunks():
        for s in scores:
            for start in range(0, s.numel(), chunk):
                yield s[start:start + chunk]

    def sample(n: int) -> torch.Tensor:
        positions = torch.randint(total, (n,), generator=gen).sort().values
        parts, offset = [], 0
        for s in scores:
            lo, hi = torch.searchsorted(positions, torch.tensor([offset, offset + s.numel()])).tolist()
            parts.append(s[(positions[lo:hi] - offset).to(device)].cpu())
            offset += s.numel()
        return torch.cat(parts)
    found = kth_smallest(chunks, sample, total, k)
    exact = torch.cat(scores).kthvalue(k).values.item()
    return {"ours_s": timed(lambda: kth_smallest(chunks, sample, total, k), device, repeats),
            "kthvalue_s": timed(lambda: torch.cat(scores).kthvalue(k), device, repeats),
            "exact": float(found.value == exact)}


def memory_bandwidth(device: torch.device) -> dict[str, float]:
    """Bytes/s of `device`: from its memory clock and bus width where torch reports them, and a measured copy."""
    found: dict[str, float] = {}
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    if clock_khz and bus_bits:  # double data rate: two transfers per clock
        found["spec_bytes_s"] = 2 * clock_khz * 1e3 * bus_bits / 8
    source = torch.empty(1 << 28, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    seconds = timed(lambda: target.copy_(source), device, 5)
    found["copy_bytes_s"] = 2 * source.numel() / seconds  # read + write
    return found


def report_bandwidth(step: dict[str, float | str], n_params: int, device: torch.device) -> None:
    bandwidth = memory_bandwidth(device)
    print(f"  achieved bytes/s at {ADAMW_BYTES_PER_PARAM} bytes/param (fp32 AdamW floor):")
    for name in STEPS + tuple(name for name in SPAM_STEPS if name in step):
        achieved = ADAMW_BYTES_PER_PARAM * n_params / float(step[name])
        shares = "  ".join(f"{100 * achieved / value:.0f}% of {key.split('_')[0]}" for key, value in bandwidth.items())
        print(f"    {name:<20} {achieved / 1e9:8.1f} GB/s  {shares}")
    print("  device: " + ", ".join(f"{key} {value / 1e9:.0f} GB/s" for key, value in bandwidth.items()))


def bench_device(raw: str) -> torch.device:
    """DEVICE (from make's environment too) as a torch device; a typo stops with one line, exit 2.
    As a `type=`, argparse applies it to the environment's default as well, unlike `choices`."""
    try:
        return torch.device(raw)
    except RuntimeError:
        print(f"error: DEVICE={raw!r} is not valid; allowed: cpu, cuda, cuda:N or mps", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=bench_device,
                        default=os.environ.get("DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))
    parser.add_argument("--size", default="124M", help="GPT-2 size preset (gpt2/model.py SIZES)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: torch's choice); 1 is steadier on a shared machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    model = make_model(args.size, device)
    n_params = sum(p.numel() for p in model.parameters())
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"GPT-2 {args.size}: {n_params / 1e6:.1f}M parameters on {machine}; torch {torch.__version__}; "
          f"median of {args.repeats}")
    step = bench_step(model, device, args.repeats)
    print(f"\n(a) optimizer step ({step['fused_note']})")
    for name in STEPS:
        print(f"  {name:<20} {step[name]:8.4f} s")
    fused = float(step["adamw_fused"])
    print(f"  AdamWPrune bool / AdamW fused = {step['adamwprune_bool'] / fused:.2f}  (goal <= 1.3)")
    print(f"  AdamWPrune bits / AdamW fused = {step['adamwprune_bits'] / fused:.2f}  (goal <= 1.10)")
    print(f"  AdamWPrune bool / AdamW foreach = {step['adamwprune_bool'] / step['adamw_foreach']:.2f}")
    print(f"  two-pass step / AdamW fused = {step['adamwprune_two_pass'] / fused:.2f}  (before)")
    if "adamwspam_two_pass" in step:
        print(f"  on the AdamWSPAM base ({step['spam_note']}; clipping on):")
        for name in SPAM_STEPS:
            print(f"  {name:<20} {step[name]:8.4f} s")
        print(f"  AdamWPrune on SPAM bool / two-pass SPAM = "
              f"{step['adamwprune_spam_bool'] / step['adamwspam_two_pass']:.2f}")
    if device.type == "cuda":
        report_bandwidth(step, n_params, device)
        host = float(step["adamw_fused_host"])
        print("  host time of step() (until it returns, the GPU not waited for):")
        for name in ("adamw_fused", "adamwprune_bool", "adamwprune_bits"):
            print(f"    {name:<20} {step[name + '_host'] * 1e3:8.3f} ms  ({step[name + '_host'] / host:.2f}x fused)")
    if "kernel_build_s" in step:
        print(f"  kernel build at first use: {step['kernel_build_s']:.2f} s (then cached in ~/.cache/adamwprune)")
    update = bench_mask_update(model, device, args.repeats)
    print("\n(b) full mask update (bitter7, 50%)")
    print(f"  ours     {update['ours_s']:8.4f} s   sparsity error {update['ours_error_pts']:.4f} pts  (bool masks)")
    print(f"  ours     {update['bits_s']:8.4f} s   sparsity error {update['bits_error_pts']:.4f} pts  (bit masks)")
    print(f"  upstream {update['upstream_s']:8.4f} s   sparsity error {update['upstream_error_pts']:.4f} pts")
    print(f"  ours / upstream = {update['ours_s'] / update['upstream_s']:.2f}  (goal <= 0.4, error <= 0.5 pts)")
    threshold = bench_threshold(model, device, args.repeats)
    print("\n(c) threshold search on all scores")
    print(f"  ours {threshold['ours_s']:.4f} s   torch.kthvalue {threshold['kthvalue_s']:.4f} s   "
          f"exact match: {bool(threshold['exact'])}")
    print(f"  kthvalue / ours = {threshold['kthvalue_s'] / threshold['ours_s']:.1f}x  (goal >= 5)")
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print("\n(d) memory of state pruning over weight bytes")
    print(f"  bool masks (kept between updates)  {update['ours_mask_bytes'] / weight_bytes:.4f}x  (goal <= 0.30)")
    print(f"  bit masks (kept between updates)   {update['bits_mask_bytes'] / weight_bytes:.4f}x  (1/32 of the "
          f"prunable weights' bytes: {update['bits_mask_bytes']} bytes)")
    print(f"  scratch during a mask update       {update['ours_scratch_bytes'] / weight_bytes:.3f}x bool, "
          f"{update['bits_scratch_bytes'] / weight_bytes:.3f}x bits")
    print("  optimizer state                     0 extra: the scores read AdamW's own exp_avg/exp_avg_sq")


if __name__ == "__main__":
    main()
