#!/usr/bin/env python3
"""The project's GPU figures in one run (`make gpu-check`, under 10 minutes on one GPU).

On CUDA it first runs the tests that need a GPU (CUDA_TESTS: the Triton
steps against torch's AdamW and AdamWSPAM, state pruning end to end on the
device, the data loaders), since a figure from a wrong kernel is worth
nothing; then it measures, and writes to a JSON file and to a section of
docs/performance.md:
  nvml     NVML per-process memory of two GPT-2 runs started together, each
           sampled by the project's sampler (lib/gpu_monitor/sampler.py), beside each
           run's own torch peak;
  bench    `benchmarks/bench_pruning.py --device cuda` (AdamWPrune's step with
           bool and bit masks, the two-pass step, torch fused AdamW, bytes/s);
  gpt2     GPT-2 124M, 200 steps, bf16 autocast + torch.compile, synthetic
           tokens: tokens/s, MFU (lib/train/mfu.py), peak memory;
  resnet18 ResNet-18 on 32x32 synthetic images: images/s, peak memory.
Without a GPU it runs GPT-2 and ResNet-18 tiny on the CPU (a smoke test of
this script, not a figure to quote), writes the JSON, leaves the docs alone,
and lists what it skipped and why.

Usage: python scripts/gpu_check.py [--out FILE] [--steps N] [--docs docs/performance.md]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gpt2.model import GPT, gpt2_config  # noqa: E402
from lib.gpu_monitor.sampler import start_sampler, stop_sampler  # noqa: E402
from lib.jsonio import write_json_atomic  # noqa: E402
from lib.train.mfu import MFUMeter  # noqa: E402
from resnet18.model import ResNet18  # noqa: E402

BEGIN, END = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _train(model: nn.Module, batch: Any, loss_of: Any, device: torch.device, steps: int, bf16: bool,
           compile_model: bool) -> tuple[float, int]:
    """(seconds per step after warm-up, warm-up steps): AdamW fused, synthetic batches reused."""
    step_model = torch.compile(model) if compile_model else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    warmup = max(1, min(10, steps // 4))  # compilation and allocator warm-up stay out of the figure
    start = 0.0
    for step in range(steps):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_of(step_model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(device)
    return (time.perf_counter() - start) / max(1, steps - warmup), warmup


def gpt2_throughput(device: torch.device, size: str, steps: int, batch: int, block: int, bf16: bool,
                    compile_model: bool) -> dict[str, Any]:
    torch.manual_seed(0)
    model = GPT(gpt2_config(size, block_size=block)).to(device)
    tokens = torch.randint(0, model.config.vocab_size, (batch, block + 1), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, warmup = _train(model, tokens, lambda m, t: m(t[:, :-1], t[:, 1:])[1], device, steps, bf16,
                             compile_model)
    meter = MFUMeter.for_run(model.flops_per_token() * block, block, device, "bf16-autocast" if bf16 else "fp32",
                             tf32_allowed=True)
    return {"size": size, "steps": steps, "warmup_steps": warmup, "batch": batch, "block_size": block,
            "bf16": bf16, "compile": compile_model, "step_s": seconds, **meter.fields(batch / seconds),
            "mfu_note": meter.note, "peak_memory_mib": _peak_mib(device)}


def resnet18_throughput(device: torch.device, steps: int, batch: int, bf16: bool) -> dict[str, Any]:
    torch.manual_seed(0)
    model = ResNet18().to(device).to(memory_format=torch.channels_last)
    images = torch.randn(batch, 3, 32, 32, device=device).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, warmup = _train(model, (images, labels), lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]),
                             device, steps, bf16, compile_model=False)
    return {"steps": steps, "warmup_steps": warmup, "batch": batch, "bf16": bf16, "step_s": seconds,
            "images_per_s": batch / seconds, "peak_memory_mib": _peak_mib(device)}


def concurrent_memory(steps: int) -> dict[str, Any]:
    """Two GPT-2 124M runs at once, each sampled through NVML by lib/gpu_monitor (per process tree)."""
    worker = [sys.executable, str(Path(__file__).resolve()), "--worker", "--steps", str(steps)]
    with tempfile.TemporaryDirectory() as folder:
        runs = [subprocess.Popen(worker, stdout=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(2)]
        samplers = [start_sampler(run.pid, Path(folder) / f"gpu_stats_{i}.json") for i, run in enumerate(runs)]
        try:
            outputs = [run.communicate(timeout=300)[0] for run in runs]
        finally:  # a hung worker must not outlive the check, nor hold the GPU for the parts after it
            for run in runs:
                run.kill()
            summaries = [stop_sampler(sampler) for sampler in samplers]
    result = []
    for run, output, summary in zip(runs, outputs, summaries):
        own = json.loads(output.strip().splitlines()[-1]) if run.returncode == 0 and output.strip() else {}
        result.append({"returncode": run.returncode, "torch_peak_mib": own.get("peak_memory_mib"),
                       "nvml_peak_mib": (summary or {}).get("peak_mib"),
                       "nvml_mean_mib": (summary or {}).get("mean_mib"),
                       "memory_scope": (summary or {}).get("memory_scope"), "source": (summary or {}).get("source")})
    return {"runs": result, "steps": steps, "note": "GPT-2 124M fp32 eager, batch 8 x 1024, both started together"}


# The tests that skip without CUDA (`make test` runs them skipped on CPU machines).
CUDA_TESTS = ("tests/test_triton_cuda.py", "tests/test_pruning_devices.py",
              "tests/test_data_cifar.py::test_loads_onto_cuda", "tests/test_data_text.py::test_get_batch_on_cuda")


def cuda_tests() -> dict[str, Any]:
    """CUDA_TESTS through pytest: its summary line, and an error naming the failures when any failed."""
    # A module that cannot be imported there (a package missing on the GPU machine) must not stop the others.
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", "--continue-on-collection-errors",
               *CUDA_TESTS]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    lines = done.stdout.splitlines()
    summary = lines[-1].strip("= ") if lines else "(no output)"
    figures: dict[str, Any] = {"command": " ".join(command[1:]), "returncode": done.returncode, "summary": summary,
                               "failures": [line for line in lines if line.startswith(("FAILED", "ERROR"))][:20]}
    if done.returncode != 0:
        figures["error"] = f"pytest exit {done.returncode}: {summary}"
    return figures


def cuda_bench() -> dict[str, Any]:
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_pruning.py"), "--device", "cuda"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=360)
    return {"command": " ".join(command[1:]), "returncode": done.returncode,
            "output": done.stdout.splitlines() + done.stderr.splitlines()[-5:]}


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if info["cuda"]:
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def _measured(name: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One part's figures, or {"error": ...}: GPU time is scarce, so a part that fails (a compile
    error, an out-of-memory) must not cost the figures of the others."""
    print(f"gpu-check: {name}...", flush=True)
    start = time.perf_counter()
    try:
        figures = measure()
    except Exception as error:  # noqa: BLE001  (reported in the JSON and the docs section)
        figures = {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}
        print(f"gpu-check: {name} failed: {figures['error']}", flush=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {**figures, "wall_s": round(time.perf_counter() - start, 1)}


def run_checks(steps: int) -> dict[str, Any]:
    result: dict[str, Any] = {"machine": machine(), "skipped": {}}
    if torch.cuda.is_available():
        device = torch.device("cuda")
        result["cuda_tests"] = _measured("cuda_tests", cuda_tests)
        result["nvml"] = _measured("nvml", lambda: concurrent_memory(steps=30))
        result["bench"] = _measured("bench", cuda_bench)
        result["gpt2"] = _measured("gpt2", lambda: gpt2_throughput(device, "124M", steps, batch=12, block=1024,
                                                                   bf16=True, compile_model=True))
        result["resnet18"] = _measured("resnet18", lambda: resnet18_throughput(device, steps=max(steps // 2, 4),
                                                                               batch=512, bf16=True))
        return result
    why = "no CUDA device"
    result["skipped"] = {"cuda_tests": f"{why}: the tests that need one skip (make test runs the rest)",
                         "nvml": f"{why}: NVML memory of two concurrent runs needs a GPU",
                         "bench": f"{why}: the CPU bench is `make bench`",
                         "gpt2": f"{why}: ran GPT-2 tiny on the CPU instead (fp32, eager), not GPT-2 124M",
                         "resnet18": f"{why}: ran ResNet-18 on a CPU batch of 2 instead"}
    cpu = torch.device("cpu")
    result["gpt2_cpu_smoke"] = gpt2_throughput(cpu, "tiny", steps, batch=1, block=64, bf16=False,
                                               compile_model=False)
    result["resnet18_cpu_smoke"] = resnet18_throughput(cpu, steps, batch=2, bf16=False)
    return result


def _gpt2_line(gpt2: dict[str, Any]) -> str:
    mfu = "n/a" if gpt2["mfu_pct"] is None else f"{gpt2['mfu_pct']:.1f}%"
    return (f"- GPT-2 124M, {gpt2['steps']} steps (first {gpt2['warmup_steps']} not timed), batch "
            f"{gpt2['batch']} x {gpt2['block_size']}, bf16 autocast + torch.compile, synthetic tokens: "
            f"**{gpt2['tokens_per_s']:.0f} tokens/s**, {gpt2['achieved_tflops']:.1f} TFLOP/s, MFU "
            f"{mfu} ({gpt2['mfu_note']}), peak {gpt2['peak_memory_mib']:.0f} MiB")


def _resnet18_line(resnet: dict[str, Any]) -> str:
    return (f"- ResNet-18, 32x32 synthetic images, batch {resnet['batch']}, bf16: "
            f"**{resnet['images_per_s']:.0f} images/s**, peak {resnet['peak_memory_mib']:.0f} MiB")


def _nvml_line(nvml: dict[str, Any]) -> str:
    return ("- two concurrent GPT-2 124M runs (NVML per process, torch peak): "
            + "; ".join(f"run {i + 1}: NVML peak {r['nvml_peak_mib']} MiB ({r['memory_scope']}), torch peak "
                        f"{r['torch_peak_mib'] and round(r['torch_peak_mib'])} MiB"
                        for i, r in enumerate(nvml["runs"])))


def _cuda_tests_line(tests: dict[str, Any]) -> str:
    return f"- tests that need a GPU (`{tests['command']}`): {tests['summary']}"


def _bench_lines(bench: dict[str, Any]) -> list[str]:
    return ["", f"`{bench['command']}` (exit {bench['returncode']}):", "", "```", *bench["output"], "```"]


def _part(result: dict[str, Any], name: str, render: Callable[[dict[str, Any]], Any]) -> list[str]:
    """A part's lines, or one line saying it failed and why (the figures of the others still stand)."""
    figures = result.get(name)
    if figures is None:
        return []  # a result written before the part existed
    if "error" in figures:
        return [f"- {name}: **failed**, {figures['error']}"] + [f"  - {line}" for line in figures.get("failures", [])]
    rendered = render(figures)
    return rendered if isinstance(rendered, list) else [rendered]


def section(result: dict[str, Any]) -> str:
    """The docs/performance.md section for a GPU run."""
    lines = [BEGIN, f"## GPU check (`make gpu-check`, {time.strftime('%Y-%m-%d')})", "",
             f"Machine: {result['machine'].get('gpu')}; torch {result['machine']['torch']}; "
             f"triton {result['machine']['triton']}. Figures written by benchmarks/gpu_check.py.", "",
             *_part(result, "cuda_tests", _cuda_tests_line), *_part(result, "gpt2", _gpt2_line), *_part(result, "resnet18", _resnet18_line),
             *_part(result, "nvml", _nvml_line), *_part(result, "bench", _bench_lines), END]
    return "\n".join(lines) + "\n"


def write_section(docs: Path, text: str) -> None:
    """Replace the gpu-check section of `docs` (or append it)."""
    old = docs.read_text()
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + text + old[old.index(END) + len(END) + 1:]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    docs.write_text(new)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "test_matrix_results" / "gpu_check.json")
    parser.add_argument("--steps", type=int, default=200, help="GPT-2 training steps (ResNet-18: half)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "performance.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one of the concurrent runs
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(gpt2_throughput(torch.device("cuda"), "124M", args.steps, batch=8, block=1024, bf16=False,
                                         compile_model=False)))
        return 0
    result = run_checks(args.steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    for part, why in result["skipped"].items():
        print(f"skipped {part}: {why}")
    if "gpt2" in result:
        text = section(result)
        write_section(args.docs, text)
        print(text)
    else:
        smoke = result["gpt2_cpu_smoke"]
        print(f"CPU smoke only (not GPU figures): GPT-2 tiny {smoke['tokens_per_s']:.0f} tokens/s, ResNet-18 "
              f"{result['resnet18_cpu_smoke']['images_per_s']:.1f} images/s; docs left unchanged")
    print(f"wrote {args.out}")
    failed = [name for name, part in result.items() if isinstance(part, dict) and "error" in part]
    if failed:
        print(f"error: gpu-check parts failed: {', '.join(failed)} (the others' figures were written)",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
