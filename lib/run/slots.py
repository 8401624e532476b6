"""This machine's run slots: how many runs go at once, which GPUs each gets and
how many CPU threads.

- With GPUs: PARALLEL_JOBS slots per visible GPU. A run that asks for k GPUs
  (DDP) takes a slot on k different GPUs at the same moment, never some now
  and the rest later. A GPU takes a new run only while NVML reports at least
  `min_free_mib` free on it (other users' jobs count too).
- Without GPUs: PARALLEL_JOBS CPU slots.
- Whenever more than one run goes at once, each gets cores // runs-at-once
  threads (OMP_NUM_THREADS and friends), so runs do not oversubscribe cores.

GPU discovery and the free-memory figure are plain callables (`visible_gpus`,
`nvml_free_mib`), so tests stand in for NVML without a GPU. Nothing here
starts a process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

from lib.errors import counted
from lib.run.task import Placement

FreeMiB = Callable[[str], "float | None"]
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def cpu_cores() -> int:
    """Cores this process may use (the affinity mask, as cgroups and taskset see it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _nvml():
    import pynvml

    pynvml.nvmlInit()
    return pynvml


def visible_gpus() -> list[str]:
    """GPU ids as CUDA_VISIBLE_DEVICES names them: that variable's entries if set,
    else every NVML device, else torch's CUDA count; [] on a CPU-only machine."""
    try:
        count = _nvml().nvmlDeviceGetCount()
    except Exception:  # no driver, no library: try torch before concluding there is no GPU
        try:
            import torch

            count = torch.cuda.device_count()
        except Exception:
            count = 0
    if not count:
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    ids = []
    for entry in (e.strip() for e in listed.split(",")):
        if not entry or entry == "-1" or (entry.isdigit() and int(entry) >= count):
            break  # CUDA itself ignores everything after the first invalid entry
        ids.append(entry)
    return ids


def nvml_free_mib(gpu: str) -> float | None:
    """Free memory of one GPU (an index or a UUID), or None if NVML cannot tell."""
    try:
        nvml = _nvml()
        handle = (nvml.nvmlDeviceGetHandleByIndex(int(gpu)) if gpu.isdigit()
                  else nvml.nvmlDeviceGetHandleByUUID(gpu))
        return nvml.nvmlDeviceGetMemoryInfo(handle).free / 2**20
    except Exception:
        return None


@dataclass
class SlotPool:
    """Slots of this machine, handed out first come, first served."""

    jobs_per_gpu: int = 1
    gpus: Sequence[str] = ()
    cores: int = field(default_factory=cpu_cores)
    min_free_mib: float = 0.0
    free_mib: FreeMiB = nvml_free_mib

    def __post_init__(self) -> None:
        self.gpus = tuple(self.gpus)
        self.capacity = self.jobs_per_gpu * max(len(self.gpus), 1)
        # Threads are divided only when runs share the machine; one run keeps torch's default.
        self.threads = max(1, self.cores // self.capacity) if self.capacity > 1 else None
        self._free_slots = list(range(1, self.capacity + 1))
        self._load = {gpu: 0 for gpu in self.gpus}
        self.waiting_for: str | None = None  # why the last acquire() returned None

    def check(self, gpus_wanted: int) -> str | None:
        """Why a run asking for `gpus_wanted` GPUs can never start here, or None."""
        if self.gpus and gpus_wanted > len(self.gpus):
            return f"asks for {gpus_wanted} GPUs together; this machine has {len(self.gpus)}"
        return None

    def slots_needed(self, gpus_wanted: int) -> int:
        # CPU-only: a multi-process run still takes as many slots as it starts processes.
        return gpus_wanted if self.gpus else min(gpus_wanted, self.capacity)

    def acquire(self, gpus_wanted: int = 1) -> Placement | None:
        """A placement for one run, or None (and `waiting_for` says why) if it must wait."""
        needed = self.slots_needed(gpus_wanted)
        if len(self._free_slots) < needed:
            self.waiting_for = "every slot is busy"
            return None
        chosen: tuple[str, ...] = ()
        if self.gpus:
            ready = [g for g in self.gpus if self._load[g] < self.jobs_per_gpu and self._enough_memory(g)]
            if len(ready) < gpus_wanted:
                return None
            # least-loaded GPUs first, so runs spread before they stack
            chosen = tuple(sorted(ready, key=lambda g: (self._load[g], self.gpus.index(g)))[:gpus_wanted])
            for gpu in chosen:
                self._load[gpu] += 1
        slots = sorted(self._free_slots)[:needed]
        for slot in slots:
            self._free_slots.remove(slot)
        self.waiting_for = None
        return Placement(executor="local", slots=tuple(slots), gpus=chosen, threads=self.threads)

    def _enough_memory(self, gpu: str) -> bool:
        if self.min_free_mib <= 0:
            return True
        free = self.free_mib(gpu)
        if free is None or free >= self.min_free_mib:
            return True
        self.waiting_for = f"GPU {gpu} has {free:.0f} MiB free, below GPU_MIN_FREE_MIB={self.min_free_mib:.0f}"
        return False

    def release(self, placement: Placement) -> None:
        self._free_slots.extend(placement.slots)
        for gpu in placement.gpus:
            self._load[gpu] -= 1

    def env(self, placement: Placement) -> dict[str, str]:
        """Environment additions for a run in `placement`."""
        env: dict[str, str] = {}
        if self.gpus:
            # PCI bus order makes CUDA's device numbers the same as NVML's (and nvidia-smi's).
            env.update(CUDA_DEVICE_ORDER="PCI_BUS_ID", CUDA_VISIBLE_DEVICES=",".join(placement.gpus))
        if placement.threads:
            env.update({name: str(placement.threads) for name in THREAD_VARS})
        return env

    def describe(self) -> str:
        """One line: how many runs at once, on what."""
        threads = f", {counted(self.threads, 'CPU thread')} each" if self.threads else ""
        if not self.gpus:
            return f"{counted(self.capacity, 'run')} at once on CPU ({counted(self.cores, 'core')}){threads}"
        guard = f"; a GPU takes a run only with >= {self.min_free_mib:.0f} MiB free" if self.min_free_mib else ""
        return (f"{counted(self.capacity, 'run')} at once: {self.jobs_per_gpu} per GPU on "
                f"{'GPU' if len(self.gpus) == 1 else 'GPUs'} {', '.join(self.gpus)}{threads}{guard}")
