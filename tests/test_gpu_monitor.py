"""The memory sampler on this machine (no GPU): RSS of a real child process,
the CLI ending with its target or on SIGTERM, periodic flushes, backend
choice, and the bounded sample list."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from lib import ROOT
from lib.gpu_monitor import sampler as gpu_monitor
from lib.gpu_monitor.backends import MIB, RssBackend, detect_backend
from lib.gpu_monitor.sampler import MAX_SAMPLES, Sampler, SampleStore, StopFlag
from lib.gpu_monitor import backends as memory_backends
from lib.gpu_monitor.sampler import percentile, read_summary, start_sampler, stop_sampler

ALLOCATE_200MB = "x = bytearray(200_000_000); import time; time.sleep(2)"


def spawn(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code])


def wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def check_file(path: Path) -> dict:
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1
    assert (data["device"], data["source"], data["memory_scope"]) == ("cpu", "rss", "process")
    assert data["gpu_name"] is None
    # memory figures only: the GPU summary fields are absent, not null
    assert set(data["summary"]) == {"n_samples", "duration_s", "mean_mib", "peak_mib",
                                    "p50_mib", "p90_mib", "p95_mib", "p99_mib"}
    for sample in data["samples"]:
        assert set(sample) == {"t_s", "memory_mib"}  # no GPU figures it did not measure
    return data


def test_in_process_sampler_sees_child_rss():
    child = spawn(ALLOCATE_200MB)
    try:
        sampler = Sampler(child.pid, RssBackend(), interval_s=0.05)
        sampler.run(StopFlag())  # returns when the child exits
        child.wait()
    finally:
        child.kill()
        child.wait()
    data = sampler.to_json()
    assert sampler.target_exited
    assert data["device"] == "cpu" and data["source"] == "rss"
    assert data["summary"]["peak_mib"] >= 190
    assert data["summary"]["n_samples"] == len(data["samples"]) > 5
    summary = data["summary"]
    assert summary["p50_mib"] <= summary["p90_mib"] <= summary["p95_mib"] <= summary["p99_mib"] <= summary["peak_mib"]


def test_sampler_follows_grandchildren():
    child = spawn("import subprocess, sys; "
                  f"subprocess.run([sys.executable, '-c', {ALLOCATE_200MB!r}])")
    try:
        sampler = Sampler(child.pid, RssBackend(), interval_s=0.05)
        sampler.run(StopFlag())
    finally:
        child.kill()
        child.wait()
    assert sampler.to_json()["summary"]["peak_mib"] >= 190


def test_sampler_on_missing_pid_records_nothing():
    child = spawn("pass")
    child.wait()
    sampler = Sampler(child.pid, RssBackend())
    assert sampler.sample_once() is None and sampler.target_exited
    assert sampler.to_json()["summary"]["peak_mib"] is None


def test_cli_exits_when_target_ends(tmp_path):
    out = tmp_path / "run" / "gpu_stats.json"
    child = spawn("import time; time.sleep(1)")
    sampler = start_sampler(child.pid, out, interval_s=0.05)
    child.wait()
    assert sampler.wait(timeout=15) == 0
    data = check_file(out)
    assert data["pid"] == child.pid and data["interval_s"] == 0.05
    assert data["summary"]["n_samples"] >= 1 and data["summary"]["peak_mib"] > 0
    summary = read_summary(out)
    assert summary["source"] == "rss" and summary["peak_mib"] == data["summary"]["peak_mib"]


def test_sigterm_writes_final_file_and_flushes_while_running(tmp_path):
    out = tmp_path / "gpu_stats.json"
    child = spawn("import time; time.sleep(30)")
    try:
        sampler = start_sampler(child.pid, out, interval_s=0.05, flush_every_s=0.3)
        # the periodic flush leaves a readable file while the sampler runs
        assert wait_for(lambda: out.exists(), 10)
        first = check_file(out)
        assert wait_for(lambda: check_file(out)["summary"]["n_samples"]
                        > first["summary"]["n_samples"], 10)
        assert sampler.poll() is None
        summary = stop_sampler(sampler)
        assert sampler.returncode == 0  # a clean exit, not the default SIGTERM death
    finally:
        child.kill()
        child.wait()
    final = check_file(out)
    assert summary == read_summary(out)
    assert summary["device"] == "cpu" and summary["memory_scope"] == "process"
    assert final["summary"]["n_samples"] >= first["summary"]["n_samples"]


def test_sigkilled_sampler_leaves_valid_file(tmp_path):
    """kill -9 mid-run: the last periodic flush is on disk, whole and readable."""
    out = tmp_path / "gpu_stats.json"
    child = spawn("import time; time.sleep(30)")
    try:
        sampler = start_sampler(child.pid, out, interval_s=0.02, flush_every_s=0.1)
        assert wait_for(lambda: out.exists() and read_summary(out)["n_samples"] >= 5, 10)
        time.sleep(0.25)  # let it be anywhere in a sample or a flush
        sampler.kill()
        sampler.wait()
        assert sampler.returncode == -9
    finally:
        child.kill()
        child.wait()
    data = check_file(out)
    assert data["summary"]["n_samples"] >= 5 and data["summary"]["peak_mib"] > 0
    assert read_summary(out)["source"] == "rss"


def test_stop_sampler_returns_none_without_file(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass", "--out", str(tmp_path / "none.json")])
    assert stop_sampler(proc) is None
    (tmp_path / "bad.json").write_text("{not json")
    assert read_summary(tmp_path / "bad.json") is None


def test_cli_rejects_bad_arguments(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lib.gpu_monitor.sampler", "--pid", "1", "--out",
                             str(tmp_path / "x.json"), "--interval", "0"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr


def test_detect_backend_without_gpu_is_rss(monkeypatch):
    pynvml = pytest.importorskip("pynvml")

    def no_library():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_library)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert detect_backend() == "rss"


def test_thinning_bounds_samples_and_keeps_summary_exact():
    store = SampleStore(max_samples=100)
    values = [float((i * 37) % 1000) for i in range(10_000)]
    for i, value in enumerate(values):
        store.add({"t_s": i * 0.1, "process_mib": value, "device_mib": None})
        assert len(store.samples) <= 100
    summary = store.summary("process_mib")
    assert summary["n_samples"] == 10_000
    assert summary["mean_mib"] == pytest.approx(sum(values) / len(values), abs=1e-3)
    assert summary["peak_mib"] == max(values)
    assert summary["duration_s"] == pytest.approx(999.9)
    # retained samples stay evenly spaced at the doubled stride
    kept = [round(s["t_s"] / 0.1) for s in store.samples]
    assert store.stride > 1 and all(k % store.stride == 0 for k in kept)
    assert store.summary("device_mib")["mean_mib"] is None


def test_percentile_matches_linear_interpolation():
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)
    assert percentile([float(v) for v in range(101)], 99) == 99.0
    assert MAX_SAMPLES == 20_000


# ---- GPU backends against stand-ins: no GPU here, but the attribution rules
# ---- (visible devices, process vs device scope) must still hold.

class FakeNvml:
    """The slice of pynvml the NVML backend calls, for two devices."""
    NVML_ERROR_NOT_FOUND = 6
    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        pass

    class NVMLError_FunctionNotFound(NVMLError):
        pass

    def __init__(self, processes):
        self.processes = processes  # device index -> [(pid, bytes or None)]
        self.shutdown = False

    def nvmlInit(self): pass
    def nvmlShutdown(self): self.shutdown = True
    def nvmlDeviceGetCount(self): return 2
    def nvmlDeviceGetHandleByIndex(self, i): return i
    def nvmlDeviceGetUUID(self, h): return f"GPU-000{h}-aaaa"
    def nvmlDeviceGetHandleByUUID(self, uuid): raise self.NVMLError(uuid)
    def nvmlDeviceGetName(self, h): return b"Fake H100"
    def nvmlDeviceGetMemoryInfo(self, h): return SimpleNamespace(used=(h + 1) * 1024 * MIB)
    def nvmlDeviceGetUtilizationRates(self, h): return SimpleNamespace(gpu=50 + 10 * h)
    def nvmlDeviceGetPowerUsage(self, h): return 250_000  # mW
    def nvmlDeviceGetTemperature(self, h, sensor): raise self.NVMLError("not supported")

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in self.processes[h]]


def use_fake_nvml(monkeypatch, processes, visible):
    fake = FakeNvml(processes)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    return fake


def test_nvml_attributes_memory_to_tree_on_visible_devices(monkeypatch):
    me = os.getpid()
    use_fake_nvml(monkeypatch, {0: [(me, 900 * MIB)], 1: [(me, 300 * MIB), (1, 5000 * MIB)]},
                  visible="GPU-0001")
    backend = memory_backends.open_backend()
    assert backend.name == "nvml" and backend.gpu_name == "Fake H100"
    sampler = Sampler(me, backend)
    sampler.sample_once()
    data = sampler.to_json()
    assert (data["device"], data["memory_scope"]) == ("cuda", "process")
    assert data["samples"][0] == {"t_s": data["samples"][0]["t_s"], "memory_mib": 300.0,
                                  "device_memory_mib": 2048.0, "utilization_pct": 60.0,
                                  "power_w": 250.0, "temperature_c": None}
    summary = data["summary"]
    assert (summary["mean_mib"], summary["p99_mib"], summary["device_peak_mib"]) == (300.0, 300.0, 2048.0)
    assert (summary["utilization_mean_pct"], summary["power_peak_w"]) == (60.0, 250.0)
    assert summary["temperature_peak_c"] is None  # not measured, never invented


def test_nvml_temperature_falls_back_to_the_deprecated_call(monkeypatch):
    fake = use_fake_nvml(monkeypatch, {0: [], 1: []}, visible="0")

    def newer_only(h, sensor):
        raise fake.NVMLError_FunctionNotFound("driver before R535")

    fake.nvmlDeviceGetTemperatureV = newer_only
    fake.nvmlDeviceGetTemperature = lambda h, sensor: 61
    assert memory_backends.open_backend().read([]).temperature_c == 61


def test_nvml_without_per_process_figures_reports_device_scope(monkeypatch):
    me = os.getpid()
    fake = use_fake_nvml(monkeypatch, {0: [(me, 100 * MIB)], 1: []}, visible="0")
    sampler = Sampler(me, memory_backends.open_backend())
    sampler.sample_once()
    fake.processes[0] = [(me, None)]  # WDDM-style: the driver stops attributing
    sampler.sample_once()
    data = sampler.to_json()
    assert data["memory_scope"] == "device"
    assert [s["memory_mib"] for s in data["samples"]] == [1024.0, 1024.0]
    assert data["summary"]["mean_mib"] == 1024.0


def test_nvml_pids_from_another_namespace_mean_device_scope(monkeypatch):
    me = os.getpid()
    use_fake_nvml(monkeypatch, {0: [(2**22 + 12345, 100 * MIB)], 1: []}, visible=None)
    sampler = Sampler(me, memory_backends.open_backend())
    sampler.sample_once()
    assert sampler.scope == "process"  # one sample may be an exit race
    for _ in range(memory_backends.FOREIGN_PID_SAMPLES):
        sampler.sample_once()
    assert sampler.scope == "device"
    assert sampler.to_json()["summary"]["peak_mib"] == 3072.0  # both devices, summed


def test_hidden_gpus_fall_back_to_rss(monkeypatch):
    fake = use_fake_nvml(monkeypatch, {0: [], 1: []}, visible="-1")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert detect_backend() == "rss" and fake.shutdown


def test_nvidia_smi_parsing(monkeypatch):
    me = os.getpid()
    pynvml = pytest.importorskip("pynvml")

    def no_library():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_library)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    answers = {"--query-gpu=name": "NVIDIA H100 80GB HBM3\n",
               "--query-compute-apps=pid,used_memory": f"{me}, 1500\n77, 900\n",
               "--query-gpu=memory.used,utilization.gpu,power.draw,temperature.gpu":
                   "2400, 87, 310.55, 61\n"}

    def fake_run(cmd, **kwargs):
        return SimpleNamespace(stdout=answers[cmd[1]], returncode=0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    sampler = Sampler(me, memory_backends.open_backend())
    sample = sampler.sample_once()
    assert sampler.backend.name == "nvidia-smi" and sampler.backend.gpu_name.startswith("NVIDIA")
    assert sample["process_mib"] == 1500.0 and sample["device_mib"] == 2400.0
    assert sample["power_w"] == 310.55 and sample["utilization_pct"] == 87.0
    answers["--query-compute-apps=pid,used_memory"] = f"{me}, [N/A]\n"
    sampler.sample_once()
    assert sampler.to_json()["memory_scope"] == "device"
