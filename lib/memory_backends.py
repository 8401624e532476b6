"""Memory backends of the sampler: NVML, nvidia-smi and process RSS.

Each backend measures the memory of one process tree (a pid and its
descendants) and returns a Reading; lib/gpu_monitor.py decides when to
sample and writes the file. The backend is chosen once (open_backend): NVML
when it initialises and a device is visible, else nvidia-smi when it runs,
else RSS, which is labelled `"device": "cpu"` and never passed off as GPU
memory.
"""
from __future__ import annotations

import csv
import io
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
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
    name: str            # "nvml" | "nvidia-smi" | "rss"
    device: str          # "cuda" | "cpu"
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


def _visible_entries() -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as a list of indices/UUIDs, None when unset.
    CUDA stops at the first malformed entry, so do we; "-1" hides all."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    entries = []
    for item in (part.strip() for part in raw.split(",")):
        if item.isdigit() or item.startswith(("GPU-", "MIG-")):
            entries.append(item)
        else:
            break
    return entries


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
        self._foreign_streak = 0
        self._per_process = True

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

    def read(self, procs: list[psutil.Process]) -> Reading | None:
        nvml, pids = self._nvml, {p.pid for p in procs}
        ours, foreign = 0, False
        device_bytes, utils, power_mw, temps = [], [], [], []
        for h in self._handles:
            listed = self._processes(h) if self._per_process else None
            if listed is None:
                self._per_process = False
            for p in listed or ():
                if p.usedGpuMemory is None:
                    self._per_process = False
                elif p.pid in pids:
                    ours += p.usedGpuMemory
                elif not psutil.pid_exists(p.pid):
                    foreign = True
            mem = self._call(nvml.nvmlDeviceGetMemoryInfo, h)
            device_bytes.append(None if mem is None else mem.used)
            rates = self._call(nvml.nvmlDeviceGetUtilizationRates, h)
            utils.append(None if rates is None else rates.gpu)
            power_mw.append(self._call(nvml.nvmlDeviceGetPowerUsage, h))
            temps.append(self._call(nvml.nvmlDeviceGetTemperature, h, nvml.NVML_TEMPERATURE_GPU))
        self._foreign_streak = self._foreign_streak + 1 if foreign and not ours else 0
        if self._foreign_streak >= FOREIGN_PID_SAMPLES:
            self._per_process = False
        return Reading(
            process_mib=ours / MIB if self._per_process else None,
            device_mib=_sum_or_none(device_bytes, scale=1 / MIB),
            utilization_pct=_mean_or_none(utils),
            power_w=_sum_or_none(power_mw, scale=1e-3),
            temperature_c=_max_or_none(temps),
        )

    def close(self) -> None:
        self._call(self._nvml.nvmlShutdown)


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
        names = [row[0] for row in self._query("--query-gpu=name")]
        if not names:
            raise OSError("nvidia-smi lists no GPU")
        self.gpu_name = ", ".join(names)
        self._per_process = True

    def _query(self, query: str) -> list[list[str]]:
        out = subprocess.run(self._base + [query, "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=SMI_TIMEOUT_S, check=True)
        return [[c.strip() for c in row] for row in csv.reader(io.StringIO(out.stdout)) if row]

    def read(self, procs: list[psutil.Process]) -> Reading | None:
        pids = {p.pid for p in procs}
        try:
            apps = self._query("--query-compute-apps=pid,used_memory")
            gpus = self._query("--query-gpu=memory.used,utilization.gpu,power.draw,temperature.gpu")
        except (OSError, subprocess.SubprocessError):
            return None  # a hung or failing nvidia-smi loses this sample only
        ours = 0.0
        for pid, used in (row[:2] for row in apps if len(row) >= 2):
            used_mib = _number(used)
            if used_mib is None:  # "[N/A]": the driver cannot attribute memory
                self._per_process = False
            elif pid.isdigit() and int(pid) in pids:
                ours += used_mib
        cols = [[_number(v) for v in row] for row in gpus if len(row) == 4]
        return Reading(
            process_mib=ours if self._per_process else None,
            device_mib=_sum_or_none([c[0] for c in cols]),
            utilization_pct=_mean_or_none([c[1] for c in cols]),
            power_w=_sum_or_none([c[2] for c in cols]),
            temperature_c=_max_or_none([c[3] for c in cols]),
        )

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
    """The best backend that works here: NVML, then nvidia-smi, then RSS."""
    try:
        return NvmlBackend()
    except ImportError:
        pass
    except Exception as exc:  # NVMLError, OSError from a missing libnvidia-ml
        if not _is_nvml_error(exc):
            raise
    try:
        return SmiBackend()
    except (OSError, subprocess.SubprocessError):
        pass
    return RssBackend()


def _is_nvml_error(exc: BaseException) -> bool:
    nvml = sys.modules.get("pynvml")
    return isinstance(exc, OSError) or (nvml is not None and isinstance(exc, nvml.NVMLError))


def detect_backend() -> str:
    """Name of the backend a sampler would use here: "nvml", "nvidia-smi" or "rss"."""
    backend = open_backend()
    backend.close()
    return backend.name


# ------------------------------------------------------------- samples, summary
