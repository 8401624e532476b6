"""lib/gpu_monitor/backends.py without a GPU: the nvidia-smi and rocm-smi parsers on
the text those tools print, the rocm-smi backend behind a stand-in
subprocess.run, and the rule that decides process or device scope."""
from __future__ import annotations

import os
import shutil
import subprocess
from types import SimpleNamespace

import pytest

from lib.gpu_monitor.backends import MIB, Attribution, parse_nvidia_smi, parse_rocm_smi
from lib.gpu_monitor.sampler import Sampler
from lib.gpu_monitor import backends as memory_backends

# nvidia-smi --query-compute-apps=pid,used_memory / --query-gpu=... with
# --format=csv,noheader,nounits, two GPUs; a WDDM driver prints [N/A] for
# per-process memory, a GPU without a power sensor [N/A] for power.draw.
SMI_APPS = "4242, 1500\n77, 900\n4243, 20\n"
SMI_GPUS = "2400, 87, 310.55, 61\n1100, 13, 75.20, 48\n"
SMI_APPS_WDDM = "4242, [N/A]\n"
SMI_GPUS_NO_POWER = "2400, 87, [N/A], 61\n"

# rocm-smi --showmeminfo vram --showuse --showpower --showtemp --showpids --json,
# in the shape python_smi_tools/rocm_smi.py prints it (card keys as in the
# JSON quoted in ROCm issue threads; "PID<pid>": "name, gpus, vram bytes,
# sdma, cu occupancy", lower-cased). A Radeon with an edge sensor and
# average power, then an MI300X-style card with only junction and socket power.
ROCM_TWO_CARDS = """\
WARNING: AMD GPU device(s) is/are in a low-power state. Check power control/runtime_status
{"card0": {"Temperature (Sensor edge) (C)": "45.0", "Temperature (Sensor junction) (C)": "52.0",
  "Average Graphics Package Power (W)": "35.0", "GPU use (%)": "12",
  "VRAM Total Memory (B)": "21458059264", "VRAM Total Used Memory (B)": "2147483648"},
 "card1": {"Temperature (Sensor edge) (C)": "N/A", "Temperature (Sensor junction) (C)": "71.0",
  "Current Socket Graphics Package Power (W)": "133.0", "GPU use (%)": "88",
  "VRAM Total Memory (B)": "206141652992", "VRAM Total Used Memory (B)": "1073741824"},
 "system": {"PID4242": "python3, 2, 1610612736, 0, 0", "PID4243": "pt main thread, 1, 104857600, 0, 0",
            "PID77": "xorg, 1, 52428800, 0, 0"}}
"""
ROCM_NO_PROCESSES = ('{"card0": {"GPU use (%)": "0", "VRAM Total Memory (B)": "21458059264", '
                     '"VRAM Total Used Memory (B)": "27856896", "Average Graphics Package Power (W)": "9.0", '
                     '"Temperature (Sensor edge) (C)": "38.0"}}\n')
ROCM_PRODUCT = ('{"card0": {"Card Series": "Radeon RX 7900 XT", "Card Model": "0x744c", '
                '"Card Vendor": "Advanced Micro Devices, Inc. [AMD/ATI]", "Card SKU": "D70401XT"}}\n')


def test_nvidia_smi_parser_reads_processes_and_devices():
    listed, reading = parse_nvidia_smi(SMI_APPS, SMI_GPUS)
    assert listed == [(4242, 1500.0), (77, 900.0), (4243, 20.0)]
    assert reading.device_mib == 3500.0 and reading.utilization_pct == 50.0
    assert reading.power_w == pytest.approx(385.75) and reading.temperature_c == 61.0
    assert parse_nvidia_smi(SMI_APPS_WDDM, SMI_GPUS_NO_POWER)[0] == [(4242, None)]
    assert parse_nvidia_smi("", SMI_GPUS_NO_POWER)[1].power_w is None  # unknown, not 0
    assert parse_nvidia_smi("", "")[1] == memory_backends.Reading(None)


def test_rocm_smi_parser_reads_processes_and_devices():
    listed, reading = parse_rocm_smi(ROCM_TWO_CARDS)
    assert sorted(listed) == [(77, 50.0), (4242, 1536.0), (4243, 100.0)]
    assert reading.device_mib == 3072.0 and reading.utilization_pct == 50.0
    assert reading.power_w == 168.0  # average power of one card, socket power of the other
    assert reading.temperature_c == 71.0  # edge where a card has one, else junction; the hottest
    listed, reading = parse_rocm_smi(ROCM_NO_PROCESSES)
    assert listed == [] and reading.device_mib == pytest.approx(27856896 / MIB)
    assert parse_rocm_smi("rocm-smi: command failed\n") == (None, memory_backends.Reading(None))
    unknown = '{"card0": {}, "system": {"PID5": "python3, UNKNOWN, unknown, unknown, unknown"}}'
    assert parse_rocm_smi(unknown)[0] == [(5, None)]


def test_attribution_keeps_process_scope_until_the_driver_cannot_say():
    me = os.getpid()
    rule = Attribution()
    assert rule.process_mib([(me, 100.0), (me + 1, None)], {me}) == 100.0  # another's unknown: ignored
    assert rule.process_mib([], {me}) == 0.0  # not on the GPU yet
    assert rule.process_mib([(me, None)], {me}) is None
    assert rule.process_mib([(me, 100.0)], {me}) is None  # the switch holds for the whole file
    assert Attribution().process_mib(None, {me}) is None


def fake_rocm(monkeypatch, answers: dict[str, str]) -> list[list[str]]:
    calls = []
    monkeypatch.setattr(memory_backends, "NvmlBackend", lambda: (_ for _ in ()).throw(ImportError()))
    monkeypatch.setattr(shutil, "which", lambda name: "/opt/rocm/bin/rocm-smi" if name == "rocm-smi" else None)

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        key = "--showproductname" if "--showproductname" in cmd else "query"
        return SimpleNamespace(stdout=answers[key], returncode=0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    return calls


def test_rocm_backend_samples_the_tree_on_visible_devices(monkeypatch):
    me = os.getpid()
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "1")
    calls = fake_rocm(monkeypatch, {"--showproductname": ROCM_PRODUCT,
                                    "query": ROCM_TWO_CARDS.replace("PID4242", f"PID{me}")})
    sampler = Sampler(me, memory_backends.open_backend())
    sample = sampler.sample_once()
    assert (sampler.backend.name, sampler.backend.gpu_name) == ("rocm-smi", "Radeon RX 7900 XT")
    assert calls[-1][-2:] == ["-d", "1"] and "--json" in calls[-1]
    assert sample["process_mib"] == 1536.0 and sample["device_mib"] == 3072.0
    data = sampler.to_json()
    assert (data["device"], data["source"], data["memory_scope"]) == ("cuda", "rocm-smi", "process")
    assert set(data["samples"][0]) == {"t_s", "memory_mib", "device_memory_mib", "utilization_pct",
                                       "power_w", "temperature_c"}
    assert data["summary"]["power_peak_w"] == 168.0


def test_rocm_backend_needs_a_card(monkeypatch):
    monkeypatch.delenv("HIP_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("ROCR_VISIBLE_DEVICES", raising=False)
    fake_rocm(monkeypatch, {"--showproductname": "ERROR: No AMD GPUs specified\n", "query": ""})
    assert isinstance(memory_backends.open_backend(), memory_backends.RssBackend)
