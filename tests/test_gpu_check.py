"""`make gpu-check` (benchmarks/gpu_check.py): its CPU mode, and the docs section a GPU run writes.

Without a GPU it must run its CPU-only parts, write the JSON, name every
skipped part with the reason and leave docs/performance.md alone. The GPU
section is rendered from a made-up result (no GPU here) and must replace its
own earlier section, not pile up.
"""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU mode only; on a GPU run `make gpu-check`")
def test_cpu_mode_runs_the_cpu_parts_and_says_what_it_skipped(tmp_path, capsys):
    docs = tmp_path / "performance.md"
    docs.write_text("# Performance\n")
    assert gpu_check.main(["--steps", "2", "--out", str(tmp_path / "check.json"), "--docs", str(docs)]) == 0
    result = json.loads((tmp_path / "check.json").read_text())
    assert set(result["skipped"]) == {"cuda_tests", "nvml", "bench", "gpt2", "resnet18"}
    assert result["gpt2_cpu_smoke"]["tokens_per_s"] > 0 and result["resnet18_cpu_smoke"]["images_per_s"] > 0
    assert docs.read_text() == "# Performance\n"
    out = capsys.readouterr().out
    assert out.count("skipped ") == 5 and "not GPU figures" in out


def test_a_gpu_section_replaces_the_previous_one(tmp_path):
    run = {"returncode": 0, "torch_peak_mib": 9000.0, "nvml_peak_mib": 10500.0, "memory_scope": "process"}
    result = {"machine": {"gpu": "NVIDIA H200", "torch": "2.13", "triton": "3.9.0"},
              "gpt2": {"steps": 200, "warmup_steps": 10, "batch": 12, "block_size": 1024, "tokens_per_s": 1.5e5,
                       "achieved_tflops": 120.0, "mfu_pct": 12.1, "mfu_note": "datasheet", "peak_memory_mib": 2e4},
              "resnet18": {"batch": 512, "images_per_s": 3e4, "peak_memory_mib": 3e3},
              "nvml": {"runs": [run, run]}, "bench": {"command": "bench_pruning.py --device cuda", "returncode": 0,
                                                      "output": ["(a) optimizer step"]}}
    docs = tmp_path / "performance.md"
    docs.write_text("# Performance\n\nolder text\n")
    text = gpu_check.section(result)
    gpu_check.write_section(docs, text)
    gpu_check.write_section(docs, text)
    written = docs.read_text()
    assert written.count(gpu_check.BEGIN) == 1 and "older text" in written
    assert "150000 tokens/s" in written and "MFU 12.1%" in written and "30000 images/s" in written


def test_a_failing_part_is_recorded_and_the_others_still_run(monkeypatch, capsys):
    """GPU time is scarce: an error in one part becomes its one line, the other parts keep their figures."""
    def broken() -> dict:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    failed = gpu_check._measured("gpt2", broken)
    assert failed["error"] == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB" and "wall_s" in failed
    assert gpu_check._measured("resnet18", lambda: {"images_per_s": 5.0})["images_per_s"] == 5.0
    result = {"machine": {"gpu": "NVIDIA H200", "torch": "2.13", "triton": None}, "gpt2": failed,
              "resnet18": {"batch": 512, "images_per_s": 3e4, "peak_memory_mib": 3e3},
              "nvml": {"error": "TimeoutExpired: x"}, "bench": {"command": "bench", "returncode": 0, "output": []}}
    text = gpu_check.section(result)
    assert "- gpt2: **failed**, RuntimeError: CUDA out of memory" in text and "30000 images/s" in text
    assert "- nvml: **failed**, TimeoutExpired: x" in text and "`bench` (exit 0)" in text
    assert "gpt2 failed" in capsys.readouterr().out


def test_bench_device_from_the_environment_is_checked(capsys):
    """`make bench DEVICE=...` hands DEVICE over through the environment: a typo is one line, exit 2."""
    from benchmarks.bench_pruning import bench_device

    assert bench_device("cpu") == torch.device("cpu")
    with pytest.raises(SystemExit) as stop:
        bench_device("cdua")
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: DEVICE='cdua' is not valid; allowed: cpu, cuda, cuda:N or mps\n"


def test_the_gpu_tests_part_runs_pytest_on_the_tests_that_need_cuda(monkeypatch):
    """Every CUDA_TESTS entry exists (a renamed test would make the part fail on the GPU, where time is
    scarce); a failing run is an error naming the failures, shown in the docs section."""
    from tests.conftest import ROOT

    for entry in gpu_check.CUDA_TESTS:
        path, _, name = entry.partition("::")
        assert (ROOT / path).is_file(), entry
        assert not name or f"def {name}(" in (ROOT / path).read_text(), entry

    class Done:
        returncode, stderr = 1, ""
        stdout = "F.\nFAILED tests/test_triton_cuda.py::test_x - AssertionError\n==== 1 failed, 1 passed in 3.0s ===="
    monkeypatch.setattr(gpu_check.subprocess, "run", lambda *a, **k: Done())
    failed = gpu_check._measured("cuda_tests", gpu_check.cuda_tests)
    assert failed["error"] == "pytest exit 1: 1 failed, 1 passed in 3.0s"
    assert failed["failures"] == ["FAILED tests/test_triton_cuda.py::test_x - AssertionError"]
    result = {"machine": {"gpu": "NVIDIA H200", "torch": "2.13", "triton": None}, "cuda_tests": failed}
    text = gpu_check.section(result)
    assert "- cuda_tests: **failed**, pytest exit 1: 1 failed, 1 passed in 3.0s" in text
    assert "  - FAILED tests/test_triton_cuda.py::test_x - AssertionError" in text
    Done.returncode, Done.stdout = 0, "....\n==== 4 passed in 9.1s ===="
    passed = gpu_check.cuda_tests()
    assert "error" not in passed and gpu_check._cuda_tests_line(passed).endswith(": 4 passed in 9.1s")
