"""The memory sampler: a small process that runs beside one training run and
writes `<run_id>/gpu_stats.json` (format in docs/results-format.md).

    python -m lib.gpu_monitor.sampler --pid PID --out PATH [--interval 0.1] [--flush-every 5.0] [--token T]

It owns measuring memory of the run's process tree (the pid and all of its
descendants) and nothing else: it never touches the training process, never
reads `.config`, and never writes a GPU figure it did not measure. The
backend is chosen once at start:

1. NVML through nvidia-ml-py (`pynvml`) when nvmlInit works and at least one
   device is visible (CUDA_VISIBLE_DEVICES, by index or UUID, if set).
2. `nvidia-smi --query-compute-apps` parsing when NVML fails but nvidia-smi
   runs.
3. `rocm-smi --json` parsing on AMD GPUs (`"device": "cuda"` as PyTorch
   names ROCm devices, `"source": "rocm-smi"`).
4. Otherwise the resident set size of the process tree (psutil), written as
   `"device": "cpu", "source": "rss"`. RSS sums count pages shared between
   forked processes (data-loader workers) once per process, so this is an
   upper bound on the tree's resident memory.

On a GPU, `memory_mib` is the memory the driver attributes to the process
tree (`"memory_scope": "process"`). When the driver cannot attribute memory
to processes (usedGpuMemory not available, as on Windows WDDM, or the driver
lists pids of another PID namespace, as in containers) the whole file falls
back to the device-wide figure (`"memory_scope": "device"`); both figures are
tracked from the first sample, so the switch keeps the summary exact and never
mixes scopes in one file. Several visible devices: memory and power are
summed, utilisation averaged, temperature is the hottest.

Bounded samples: a multi-day run at 100 ms would keep millions of samples, so
once more than MAX_SAMPLES are retained the list is thinned to every other
sample and the stored stride (`sample_stride`) doubles; later samples are kept
only at multiples of the stride, so the retained ones stay evenly spaced.
n_samples, duration_s, mean_mib and peak_mib are running figures over every
sample taken and stay exact; the percentiles (p50_mib, p90_mib, p95_mib,
p99_mib) come from the retained samples and are exact until the first
thinning, approximate after it. On a GPU the summary also holds running
figures of the whole-device memory, utilisation, power and temperature.

The file is rewritten atomically every --flush-every seconds (default 5), so
a crash or kill -9 leaves a valid file that lacks at most that much;
SIGTERM/SIGINT or the end of the process tree writes the final file and
exits 0.

A sampler writes only its own attempt's file. start_sampler writes a fresh
token into `.<out name>.owner` beside the file and passes it as --token; the
sampler reads that file before every write and stops without writing once it
holds another token or is gone (the run folder was set aside and a newer
attempt owns the name). Started by start_sampler it also dies with the
runner (lib/lifeline), so a stale sampler can never overwrite a newer run's
figures.
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from lib import ROOT
from lib.errors import UserError, run_cli
from lib.gpu_monitor.backends import Backend, ProcessTree, open_backend
from lib.jsonio import SCHEMA_VERSION, write_json_atomic, write_text_atomic
from lib.lifeline import with_parent_death_signal

MAX_SAMPLES = 20_000
FLUSH_CPU_SHARE = 0.05



@dataclass
class RunningStats:
    """Count, mean and peak over every value seen, however many are thinned."""
    n: int = 0
    total: float = 0.0
    peak: float = -math.inf

    def add(self, value: float) -> None:
        self.n += 1
        self.total += value
        self.peak = max(self.peak, value)


PERCENTILES = (50, 90, 95, 99)
# summary key -> (sample field, statistic) of the GPU figures beside memory
GPU_SUMMARY = {"device_mean_mib": ("device_mib", "mean"), "device_peak_mib": ("device_mib", "peak"),
               "utilization_mean_pct": ("utilization_pct", "mean"), "power_mean_w": ("power_w", "mean"),
               "power_peak_w": ("power_w", "peak"), "temperature_peak_c": ("temperature_c", "peak")}


class SampleStore:
    """Samples with a bounded list (see module docstring) and exact running
    stats for each measured field, so the scope can be chosen at the end."""

    FIELDS = ("process_mib", "device_mib", "utilization_pct", "power_w", "temperature_c")

    def __init__(self, max_samples: int = MAX_SAMPLES):
        if max_samples < 2:
            raise ValueError("max_samples must be at least 2")
        self.max_samples = max_samples
        self.samples: list[dict[str, Any]] = []
        self.stride = 1
        self.offered = 0
        self.first_t: float | None = None
        self.last_t: float | None = None
        self.stats = {f: RunningStats() for f in self.FIELDS}

    def add(self, sample: dict[str, Any]) -> None:
        for field, stats in self.stats.items():
            if sample.get(field) is not None:
                stats.add(sample[field])
        if self.first_t is None:
            self.first_t = sample["t_s"]
        self.last_t = sample["t_s"]
        if self.offered % self.stride == 0:
            self.samples.append(sample)
            if len(self.samples) > self.max_samples:
                # retained samples sit at multiples of the stride; keeping
                # every other one leaves them at multiples of twice the stride
                self.samples = self.samples[::2]
                self.stride *= 2
        self.offered += 1

    def mean(self, field: str) -> float | None:
        stats = self.stats[field]
        return round(stats.total / stats.n, 3) if stats.n else None

    def peak(self, field: str) -> float | None:
        stats = self.stats[field]
        return round(stats.peak, 3) if stats.n else None

    def summary(self, field: str, gpu: bool = False) -> dict[str, Any]:
        """Count, duration, mean, peak and percentiles of the memory `field`;
        with `gpu`, the GPU_SUMMARY figures too (None where not measured)."""
        n = self.stats[field].n
        kept = sorted(s[field] for s in self.samples if s.get(field) is not None)
        summary = {"n_samples": n, "duration_s": round(self.last_t - self.first_t, 3) if n else None,
                   "mean_mib": self.mean(field), "peak_mib": self.peak(field),
                   **{f"p{q}_mib": _round(percentile(kept, q)) for q in PERCENTILES}}
        if gpu:
            summary.update({key: getattr(self, stat)(source) for key, (source, stat) in GPU_SUMMARY.items()})
        return summary


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# --------------------------------------------------------------------- sampler

class StopFlag:
    """Set from a signal handler. A plain attribute, not threading.Event:
    Event.set takes a lock that the interrupted main thread may be holding."""

    def __init__(self) -> None:
        self.stopped = False

    def set(self) -> None:
        self.stopped = True

    def is_set(self) -> bool:
        return self.stopped

    def wait(self, timeout: float) -> None:
        # short sleeps so a stop is noticed within 50 ms even at long intervals
        deadline = time.monotonic() + timeout
        while not self.stopped and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))


class Sampler:
    """Samples one process tree with one backend; usable in-process."""

    def __init__(self, pid: int, backend: Backend, interval_s: float = 0.1,
                 max_samples: int = MAX_SAMPLES):
        self.pid = pid
        self.backend = backend
        self.interval_s = interval_s
        self.tree = ProcessTree(pid)
        self.store = SampleStore(max_samples)
        self.scope = "process"
        self.target_exited = False
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._t0 = time.monotonic()

    def sample_once(self) -> dict[str, Any] | None:
        """Take and record one sample; None when nothing could be measured
        (then `target_exited` says whether the tree is gone)."""
        procs = self.tree.refresh()
        if not procs:
            self.target_exited = True
            return None
        reading = self.backend.read(procs)
        if reading is None:
            return None
        if reading.process_mib is None:
            self.scope = "device"  # for the whole file; see module docstring
        sample = {"t_s": round(time.monotonic() - self._t0, 3),
                  "process_mib": _round(reading.process_mib),
                  "device_mib": _round(reading.device_mib),
                  "utilization_pct": _round(reading.utilization_pct, 1),
                  "power_w": _round(reading.power_w, 2),
                  "temperature_c": _round(reading.temperature_c, 1)}
        self.store.add(sample)
        return sample

    def to_json(self) -> dict[str, Any]:
        field = "process_mib" if self.scope == "process" else "device_mib"
        gpu = self.backend.device == "cuda"  # RSS rows carry no GPU fields at all
        samples = []
        for s in self.store.samples:
            row = {"t_s": s["t_s"], "memory_mib": s[field]}
            if gpu:
                row.update(device_memory_mib=s["device_mib"], utilization_pct=s["utilization_pct"],
                           power_w=s["power_w"], temperature_c=s["temperature_c"])
            samples.append(row)
        return {"schema_version": SCHEMA_VERSION, "device": self.backend.device,
                "source": self.backend.name, "memory_scope": self.scope,
                "gpu_name": self.backend.gpu_name, "interval_s": self.interval_s,
                "pid": self.pid, "started_at": self.started_at,
                "sample_stride": self.store.stride, "samples": samples,
                "summary": self.store.summary(field, gpu)}

    def run(self, stop: StopFlag, out_path: Path | None = None, flush_every_s: float = 5.0,
            token: str | None = None) -> None:
        """Sample until the tree exits or `stop` is set, flushing to out_path
        while `token` (if given) is the one its owner file holds."""
        next_sample = next_flush = time.monotonic()
        while not stop.is_set():
            self.sample_once()
            if self.target_exited:
                break
            now = time.monotonic()
            if out_path is not None and now >= next_flush:
                if not owns(out_path, token):
                    return  # a newer attempt owns the file: leave it alone
                self._write(out_path, final=False)
                # rewriting 20,000 samples takes about half a second; spacing
                # flushes by their cost keeps the sampler to a few % of a core
                cost = time.monotonic() - now
                next_flush = now + max(flush_every_s, cost / FLUSH_CPU_SHARE)
            # a slow nvidia-smi or flush delays the schedule instead of
            # bursting samples to catch up, which would skew the mean
            next_sample = max(next_sample + self.interval_s, now)
            stop.wait(next_sample - now)
        if out_path is not None and owns(out_path, token):
            self._write(out_path, final=True)

    def _write(self, out_path: Path, final: bool) -> None:
        try:
            write_json_atomic(out_path, self.to_json())
        except OSError as exc:
            if final:
                raise UserError(f"{out_path}: cannot write gpu stats ({exc})") from None
            # a full disk should not end sampling; the next flush retries
            print(f"warning: {out_path}: flush failed ({exc})", file=sys.stderr)


# ------------------------------------------------------------ runner interface

def owner_path(out_path: Path) -> Path:
    """The file naming which sampler may write `out_path`."""
    return out_path.with_name(f".{out_path.name}.owner")


def owns(out_path: Path, token: str | None) -> bool:
    """Whether the sampler holding `token` may write `out_path` (always, without a token)."""
    if token is None:
        return True
    try:
        return owner_path(out_path).read_text().strip() == token
    except OSError:
        return False


def start_sampler(pid: int, out_path: Path, interval_s: float = 0.1, python: str = sys.executable,
                  *, flush_every_s: float = 5.0, log_path: Path | None = None,
                  env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Launch the sampler CLI beside process `pid`, owning `out_path` from now
    on (a fresh token) and dying with this process. Pass the training run's
    `env` so the sampler sees the same CUDA_VISIBLE_DEVICES; its output goes
    to `log_path` (appended) or nowhere."""
    out = Path(out_path).resolve()  # absolute: the sampler runs from the project root
    token = uuid.uuid4().hex
    write_text_atomic(owner_path(out), token + "\n")  # before the start: an older sampler stops writing now
    cmd = [python, "-m", "lib.gpu_monitor.sampler", "--pid", str(pid), "--out", str(out),
           "--interval", repr(float(interval_s)), "--flush-every", repr(float(flush_every_s)), "--token", token]
    log = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(with_parent_death_signal(cmd), cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, env=None if env is None else dict(env))
    finally:
        if log_path is not None:
            log.close()  # the child holds its own descriptor


def stop_sampler(proc: subprocess.Popen, timeout_s: float = 10.0) -> dict[str, Any] | None:
    """SIGTERM the sampler, wait (kill after timeout_s) and return its summary
    as read_summary does, or None if the file is missing or corrupt."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()  # the last periodic flush is still on disk
            proc.wait()
    args = [str(a) for a in proc.args] if isinstance(proc.args, (list, tuple)) else []
    if "--out" not in args:
        return None
    return read_summary(Path(args[args.index("--out") + 1]))


def read_summary(path: Path) -> dict[str, Any] | None:
    """The summary of a gpu_stats.json with where it came from, flat, for
    result.json metrics: device, source, memory_scope, gpu_name, n_samples,
    duration_s, mean_mib, peak_mib, p50/p90/p95/p99_mib (and the GPU_SUMMARY
    figures on a GPU). None if unreadable."""
    try:
        data = json.loads(Path(path).read_text())
        summary = data["summary"]
        if data["schema_version"] != SCHEMA_VERSION or not isinstance(summary, dict):
            return None
        head = {k: data.get(k) for k in ("device", "source", "memory_scope", "gpu_name")}
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    return {**head, **summary}


# ------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.gpu_monitor.sampler",
                                     description="Sample a process tree's memory.")
    parser.add_argument("--pid", type=int, required=True, help="process whose tree to sample")
    parser.add_argument("--out", type=Path, required=True, help="gpu_stats.json to write")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between samples")
    parser.add_argument("--flush-every", type=float, default=5.0, help="seconds between rewrites")
    parser.add_argument("--token", default=None, help="write only while the owner file beside --out holds this")
    args = parser.parse_args(argv)
    if args.pid <= 0:
        raise UserError(f"--pid {args.pid}: not a process id")
    if not (args.interval > 0 and args.flush_every > 0):
        raise UserError("--interval and --flush-every must be positive seconds")
    stop = StopFlag()
    # before opening the backend, which can take a second: a stop that
    # arrives meanwhile still ends with a written file
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    backend = open_backend()
    try:
        Sampler(args.pid, backend, args.interval).run(stop, args.out, args.flush_every, args.token)
    finally:
        backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
