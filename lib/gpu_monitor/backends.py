"""Memory backends of the sampler: NVML, nvidia-smi, rocm-smi and process RSS.

Each backend measures the memory of one process tree (a pid and its
descendants) and returns a Reading; lib/gpu_monitor/sampler.py decides when to
sample and writes the file. The backend is chosen once (open_backend): NVML
when it initialises and a device is visible, else nvidia-smi when it runs,
else rocm-smi (AMD) when it runs, else RSS, which is labelled
`"device": "cpu"` and never passed off as GPU memory. The text the two
command-line tools print is parsed by pure functions (parse_nvidia_smi,
parse_rocm_smi) so it can be tested on captured output.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from typing import Any, Callable, Protocol

import psutil

MIB = 1024 * 1024
# A listed pid that does not exist here may just have exited between the
# driver's listing and our check; only this many samples in a row mean the
# driver reports pids of another PID namespace.
FOREIGN_PID_SAMPLES = 3
SMI_TIMEOUT_S = 10.0

@dataclass(frozen=True)
class Reading:
    """One measurement. process_mib None: the driver cannot attribute memory
    to processes; other None fields: not measured."""
    process_mib: float | None
    device_mib: float | None = None
    utilization_pct: float | None = None
    power_w: float | None = None
    temperature_c: float | None = None


class Backend(Protocol):
    name: str            # "nvml" | "nvidia-smi" | "rocm-smi" | "rss"
    device: str          # "cuda" (any GPU, ROCm included, as PyTorch names it) | "cpu"
    gpu_name: str | None

    def read(self, procs: list[psutil.Process]) -> Reading | None: ...
    def close(self) -> None: ...


# ---------------------------------------------------------------- process tree

class ProcessTree:
    """The target pid and its descendants. Descendants seen once are
    remembered, so children that outlive the root (reparented to init) are
    still followed; psutil.Process objects guard against pid reuse."""

    def __init__(self, pid: int):
        self._procs: dict[int, psutil.Process] = {}
        try:
            self._procs[pid] = psutil.Process(pid)
        except psutil.NoSuchProcess:
            pass  # already gone: the tree is empty and sampling ends at once

    def refresh(self) -> list[psutil.Process]:
        """Return the live processes of the tree (zombies count as exited)."""
        found: dict[int, psutil.Process] = {}
        for proc in list(self._procs.values()):
            if not _alive(proc):
                continue
            found[proc.pid] = proc
            try:
                for child in proc.children(recursive=True):
                    if _alive(child):
                        found.setdefault(child.pid, child)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass  # exited or hidden while listing: keep what we have
        self._procs = found
        return list(found.values())


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


# -------------------------------------------------------------------- backends

class RssBackend:
    name, device, gpu_name = "rss", "cpu", None

    def read(self, procs: list[psutil.Process]) -> Reading | None:
        total, readable = 0, 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
                readable += 1
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # exited since the tree was listed, or not ours to read
        return Reading(process_mib=total / MIB) if readable else None

    def close(self) -> None:
        pass


def _visible_entries(variable: str = "CUDA_VISIBLE_DEVICES") -> list[str] | None:
    """CUDA_VISIBLE_DEVICES (or another such variable) as a list of
    indices/UUIDs, None when unset. CUDA stops at the first malformed entry,
    so do we; "-1" hides all."""
    raw = os.environ.get(variable)
    if raw is None:
        return None
    entries = []
    for item in (part.strip() for part in raw.split(",")):
        if item.isdigit() or item.startswith(("GPU-", "MIG-")):
            entries.append(item)
        else:
            break
    return entries


class Attribution:
    """Whether the driver attributes memory to processes, decided from what it
    lists and kept for the whole run once it does not (see lib/gpu_monitor)."""

    def __init__(self) -> None:
        self.per_process = True
        self._foreign_streak = 0

    def process_mib(self, listed: list[tuple[int, float | None]] | None, pids: set[int]) -> float | None:
        """MiB that `listed` ((pid, MiB or None) pairs, None: no listing)
        gives to `pids`; None from the first sample the driver cannot say.
        An unknown figure of another process (one that is exiting) is ignored."""
        if listed is None or any(mib is None for pid, mib in listed if pid in pids):
            self.per_process = False  # no listing, or WDDM-style "not available"
        if not self.per_process:
            return None
        ours = sum(mib for pid, mib in listed if pid in pids)
        foreign = any(pid not in pids and not psutil.pid_exists(pid) for pid, _ in listed)
        self._foreign_streak = self._foreign_streak + 1 if foreign and not ours else 0
        if self._foreign_streak >= FOREIGN_PID_SAMPLES:
            self.per_process = False  # pids of another PID namespace (a container)
            return None
        return ours


class NvmlBackend:
    name, device = "nvml", "cuda"

    def __init__(self) -> None:
        import pynvml  # optional dependency; ImportError means "not this backend"
        self._nvml = pynvml
        pynvml.nvmlInit()
        try:
            self._handles = self._visible_handles()
            if not self._handles:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
            names = [pynvml.nvmlDeviceGetName(h) for h in self._handles]
        except BaseException:
            pynvml.nvmlShutdown()
            raise
        self.gpu_name = ", ".join(_text(n) for n in names)
        self._attribution = Attribution()

    def _visible_handles(self) -> list[Any]:
        nvml = self._nvml
        every = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        entries = _visible_entries()
        if entries is None:
            return every
        uuids = [_text(nvml.nvmlDeviceGetUUID(h)) for h in every]
        handles = []
        for entry in entries:
            if entry.isdigit():
                # CUDA numbers devices fastest-first unless CUDA_DEVICE_ORDER=
                # PCI_BUS_ID, NVML by PCI bus; on mixed machines these differ.
                if int(entry) >= len(every):
                    break
                handles.append(every[int(entry)])
            elif entry.startswith("MIG-"):
                handle = self._call(nvml.nvmlDeviceGetHandleByUUID, entry)
                if handle is None:
                    break
                handles.append(handle)
            else:
                matches = [h for h, u in zip(every, uuids) if u.startswith(entry)]
                if len(matches) != 1:  # CUDA rejects unknown or ambiguous prefixes
                    break
                handles.append(matches[0])
        return handles

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except self._nvml.NVMLError:
            return None  # not supported on this device, or it went away

    def _processes(self, handle: Any) -> list[Any] | None:
        nvml = self._nvml
        try:
            return nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except nvml.NVMLError_FunctionNotFound:
            # drivers older than the v3 entry point
            return self._call(nvml.nvmlDeviceGetComputeRunningProcesses_v2, handle)
        except nvml.NVMLError:
            return None

    def _temperature(self, handle: Any) -> float | None:
        # nvmlDeviceGetTemperature is deprecated for nvmlDeviceGetTemperatureV,
        # which drivers before R535 lack: try the new one first
        nvml = self._nvml
        for name in ("nvmlDeviceGetTemperatureV", "nvmlDeviceGetTemperature"):
            fn = getattr(nvml, name, None)
            if fn is not None and (value := self._call(fn, handle, nvml.NVML_TEMPERATURE_GPU)) is not None:
                return value
        return None

    def read(self, procs: list[psutil.Process]) -> Reading | None:
        nvml = self._nvml
        listed: list[tuple[int, float | None]] | None = [] if self._attribution.per_process else None
        device_bytes, utils, power_mw, temps = [], [], [], []
        for h in self._handles:
            if listed is not None:
                found = self._processes(h)
                # usedGpuMemory is None where the driver cannot attribute (WDDM)
                listed = None if found is None else listed + [
                    (p.pid, None if p.usedGpuMemory is None else p.usedGpuMemory / MIB) for p in found]
            mem = self._call(nvml.nvmlDeviceGetMemoryInfo, h)
            device_bytes.append(None if mem is None else mem.used)
            rates = self._call(nvml.nvmlDeviceGetUtilizationRates, h)
            utils.append(None if rates is None else rates.gpu)
            power_mw.append(self._call(nvml.nvmlDeviceGetPowerUsage, h))  # milliwatts
            temps.append(self._temperature(h))
        return Reading(
            process_mib=self._attribution.process_mib(listed, {p.pid for p in procs}),
            device_mib=_sum_or_none(device_bytes, scale=1 / MIB),
            utilization_pct=_mean_or_none(utils),
            power_w=_sum_or_none(power_mw, scale=1e-3),
            temperature_c=_max_or_none(temps),
        )

    def close(self) -> None:
        self._call(self._nvml.nvmlShutdown)


SMI_GPU_QUERY = "--query-gpu=memory.used,utilization.gpu,power.draw,temperature.gpu"
SMI_APPS_QUERY = "--query-compute-apps=pid,used_memory"


def _csv_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in row] for row in csv.reader(io.StringIO(text)) if row]


def parse_nvidia_smi(apps_csv: str, gpus_csv: str) -> tuple[list[tuple[int, float | None]], Reading]:
    """`nvidia-smi SMI_APPS_QUERY` and `SMI_GPU_QUERY` output (csv,noheader,
    nounits) -> the listed (pid, MiB or None) and the device-wide figures of
    the listed GPUs (process_mib left None: the caller attributes)."""
    listed = [(int(row[0]), _number(row[1])) for row in _csv_rows(apps_csv)
              if len(row) >= 2 and row[0].isdigit()]
    cols = [[_number(v) for v in row] for row in _csv_rows(gpus_csv) if len(row) == 4]
    return listed, Reading(process_mib=None,
                           device_mib=_sum_or_none([c[0] for c in cols]),
                           utilization_pct=_mean_or_none([c[1] for c in cols]),
                           power_w=_sum_or_none([c[2] for c in cols]),
                           temperature_c=_max_or_none([c[3] for c in cols]))


class SmiBackend:
    name, device = "nvidia-smi", "cuda"

    def __init__(self) -> None:
        exe = shutil.which("nvidia-smi")
        if exe is None:
            raise OSError("nvidia-smi not found")
        entries = _visible_entries()
        if entries == []:
            raise OSError("CUDA_VISIBLE_DEVICES hides every GPU")
        self._base = [exe] + ([f"--id={','.join(entries)}"] if entries else [])
        names = [row[0] for row in _csv_rows(self._query("--query-gpu=name"))]
        if not names:
            raise OSError("nvidia-smi lists no GPU")
        self.gpu_name = ", ".join(names)
        self._attribution = Attribution()

    def _query(self, query: str) -> str:
        return subprocess.run(self._base + [query, "--format=csv,noheader,nounits"], capture_output=True,
                              text=True, timeout=SMI_TIMEOUT_S, check=True).stdout

    def read(self, procs: list[psutil.Process]) -> Reading | None:
        try:
            apps, gpus = self._query(SMI_APPS_QUERY), self._query(SMI_GPU_QUERY)
        except (OSError, subprocess.SubprocessError):
            return None  # a hung or failing nvidia-smi loses this sample only
        listed, reading = parse_nvidia_smi(apps, gpus)
        return replace(reading, process_mib=self._attribution.process_mib(listed, {p.pid for p in procs}))

    def close(self) -> None:
        pass


# rocm-smi (python_smi_tools/rocm_smi.py of ROCm/rocm_smi_lib) with --json
# prints {"card0": {"<metric> (<unit>)": "<value>", ...}, ..., "system":
# {"PID<pid>": "<name>, <n gpus>, <vram bytes>, <sdma>, <cu occupancy>"}};
# key spellings vary between releases, hence the alternatives below.
ROCM_QUERY = ["--showmeminfo", "vram", "--showuse", "--showpower", "--showtemp", "--showpids", "--json"]
ROCM_DEVICE_USED = "VRAM Total Used Memory (B)"
ROCM_USE = "GPU use (%)"
ROCM_POWER = ("Average Graphics Package Power (W)", "Current Socket Graphics Package Power (W)")
ROCM_TEMPERATURE = ("Temperature (Sensor edge) (C)", "Temperature (Sensor junction) (C)")  # edge if it has one
ROCM_NAME = ("Card Series", "Card series", "Card SKU")


def _rocm_json(text: str) -> dict[str, Any]:
    """The JSON object in rocm-smi's output, which may follow warning lines."""
    start = text.find("{")
    try:
        data = json.JSONDecoder().raw_decode(text[start:])[0] if start >= 0 else None
    except ValueError:
        data = None
    return data if isinstance(data, dict) else {}


def _rocm_cards(data: dict[str, Any]) -> list[dict[str, Any]]:
    cards = [(k, v) for k, v in data.items() if k.startswith("card") and k[4:].isdigit() and isinstance(v, dict)]
    return [v for _, v in sorted(cards, key=lambda kv: int(kv[0][4:]))]


def _first(card: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        if (value := _number(str(card.get(key, "")))) is not None:
            return value
    return None


def parse_rocm_smi(text: str) -> tuple[list[tuple[int, float | None]] | None, Reading]:
    """`rocm-smi ROCM_QUERY` output -> the listed (pid, MiB or None), None when
    it printed no process section at all, and the device-wide figures."""
    data = _rocm_json(text)
    cards = _rocm_cards(data)
    system = data.get("system")
    listed = None
    if isinstance(system, dict):
        listed = []
        for key, value in system.items():
            if key.startswith("PID") and key[3:].isdigit():
                vram = _number(str(value).split(", ")[-3]) if str(value).count(", ") >= 3 else None
                listed.append((int(key[3:]), None if vram is None else vram / MIB))
    elif cards:
        listed = []  # rocm-smi prints no "system" entry when no process uses a GPU
    return listed, Reading(
        process_mib=None,
        device_mib=_sum_or_none([_first(c, (ROCM_DEVICE_USED,)) for c in cards], scale=1 / MIB),
        utilization_pct=_mean_or_none([_first(c, (ROCM_USE,)) for c in cards]),
        power_w=_sum_or_none([_first(c, ROCM_POWER) for c in cards]),
        temperature_c=_max_or_none([_first(c, ROCM_TEMPERATURE) for c in cards]),
    )


class RocmSmiBackend:
    """AMD GPUs through rocm-smi. The per-process figure is what rocm-smi
    lists for the pid over all its GPUs; devices are limited to the indices
    of HIP_VISIBLE_DEVICES, else CUDA_VISIBLE_DEVICES, else ROCR_VISIBLE_DEVICES
    (these are not composed, and UUID entries are not resolved)."""
    name, device = "rocm-smi", "cuda"  # PyTorch's name for ROCm devices too

    def __init__(self) -> None:
        exe = shutil.which("rocm-smi")
        if exe is None:
            raise OSError("rocm-smi not found")
        entries = next((e for v in ("HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")
                        if (e := _visible_entries(v)) is not None), None)
        if entries == []:
            raise OSError("the *_VISIBLE_DEVICES variables hide every GPU")
        self._exe = exe
        self._devices = ["-d", *entries] if entries and all(e.isdigit() for e in entries) else []
        cards = _rocm_cards(_rocm_json(self._query(["--showproductname", "--json"])))
        if not cards:
            raise OSError("rocm-smi lists no GPU")
        self.gpu_name = ", ".join(str(next((c[k] for k in ROCM_NAME if c.get(k)), "AMD GPU")) for c in cards)
        self._attribution = Attribution()

    def _query(self, args: list[str]) -> str:
        # not check=True: rocm-smi exits non-zero when one metric is unsupported
        return subprocess.run([self._exe, *args, *self._devices], capture_output=True, text=True,
                              timeout=SMI_TIMEOUT_S).stdout

    def read(self, procs: list[psutil.Process]) -> Reading | None:
        try:
            listed, reading = parse_rocm_smi(self._query(ROCM_QUERY))
        except (OSError, subprocess.SubprocessError):
            return None
        if reading.device_mib is None and listed is None:
            return None  # nothing parsed: this sample only
        return replace(reading, process_mib=self._attribution.process_mib(listed, {p.pid for p in procs}))

    def close(self) -> None:
        pass


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None  # "[N/A]", "[Not Supported]"
    return value if math.isfinite(value) else None


def _known(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def _sum_or_none(values: list[float | None], scale: float = 1.0) -> float | None:
    # a partial sum over devices would understate: unknown if any is unknown
    return None if not values or None in values else sum(values) * scale


def _mean_or_none(values: list[float | None]) -> float | None:
    known = _known(values)
    return sum(known) / len(known) if known else None


def _max_or_none(values: list[float | None]) -> float | None:
    known = _known(values)
    return max(known) if known else None


def open_backend() -> Backend:
    """The best backend that works here: NVML, nvidia-smi, rocm-smi, then RSS."""
    try:
        return NvmlBackend()
    except ImportError:
        pass
    except Exception as exc:  # NVMLError, OSError from a missing libnvidia-ml
        if not _is_nvml_error(exc):
            raise
    for backend in (SmiBackend, RocmSmiBackend):
        try:
            return backend()
        except (OSError, subprocess.SubprocessError):
            pass
    return RssBackend()


def _is_nvml_error(exc: BaseException) -> bool:
    nvml = sys.modules.get("pynvml")
    return isinstance(exc, OSError) or (nvml is not None and isinstance(exc, nvml.NVMLError))
