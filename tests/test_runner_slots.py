"""The local slot pool and executor without a GPU: NVML and the GPU list are stand-ins."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import psutil
import pytest

from lib.errors import UserError
from lib.run import runner
from lib.run import slots as slot_pool
from lib.run.local_executor import LocalExecutor
from lib.run.slots import SlotPool
from lib.run.task import RunTask
from lib.spec import RunSpec
from tests.specs import make_spec


def test_cpu_only_runs_parallel_jobs_with_the_cores_divided():
    pool = SlotPool(jobs_per_gpu=2, gpus=(), cores=8)
    first, second = pool.acquire(), pool.acquire()
    assert pool.capacity == 2 and pool.acquire() is None
    assert (first.slots, second.slots) == ((1,), (2,))
    env = pool.env(first)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "4" and "CUDA_VISIBLE_DEVICES" not in env
    pool.release(first)
    assert pool.acquire().slots == (1,)


def test_one_run_at_a_time_keeps_torch_default_threads():
    pool = SlotPool(jobs_per_gpu=1, gpus=(), cores=8)
    assert pool.env(pool.acquire()) == {}


def test_parallel_jobs_per_gpu_spread_over_the_gpus():
    pool = SlotPool(jobs_per_gpu=2, gpus=("0", "1"), cores=16)
    placed = [pool.acquire() for _ in range(4)]
    assert [p.gpus for p in placed] == [("0",), ("1",), ("0",), ("1",)]
    assert pool.acquire() is None and pool.capacity == 4
    env = pool.env(placed[1])
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["OMP_NUM_THREADS"] == "4"


def test_a_ddp_run_gets_its_gpus_together_or_waits():
    pool = SlotPool(jobs_per_gpu=1, gpus=("0", "1"), cores=4)
    single = pool.acquire(1)
    assert pool.acquire(2) is None  # never one GPU now and the other later
    pool.release(single)
    ddp = pool.acquire(2)
    assert ddp.gpus == ("0", "1") and pool.env(ddp)["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert pool.check(3) == "asks for 3 GPUs together; this machine has 2"


def test_free_memory_guard_keeps_runs_off_a_full_gpu():
    free = {"0": 500.0, "1": 30000.0}
    pool = SlotPool(jobs_per_gpu=2, gpus=("0", "1"), cores=4, min_free_mib=2000, free_mib=free.get)
    assert [pool.acquire().gpus for _ in range(2)] == [("1",), ("1",)]
    assert pool.acquire() is None
    assert pool.waiting_for == "GPU 0 has 500 MiB free, below GPU_MIN_FREE_MIB=2000"
    free["0"] = 8000.0  # the other user's job ended
    assert pool.acquire().gpus == ("0",)


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    class FakeNvml:
        @staticmethod
        def nvmlDeviceGetCount():
            return 4

    monkeypatch.setattr(slot_pool, "_nvml", lambda: FakeNvml)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert slot_pool.visible_gpus() == ["0", "1", "2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert slot_pool.visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,-1,2")  # CUDA stops at the first invalid entry
    assert slot_pool.visible_gpus() == ["1"]


def test_no_gpu_on_this_machine_means_cpu_slots(monkeypatch):
    def no_nvml():
        raise OSError("libnvidia-ml.so not found")

    monkeypatch.setattr(slot_pool, "_nvml", no_nvml)
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert slot_pool.visible_gpus() == []


def _spec(n: int, gpus: int = 1) -> RunSpec:
    return make_spec(f"lenet5_sgd_magnitude_{n}", pruning="magnitude", target=n, gpus_per_run=gpus)


# Writes what the run saw into metrics.json, after sleeping a little so runs overlap.
REPORTER = ("import json, os, sys, time; start = time.time(); time.sleep(float(sys.argv[2])); "
            "open(os.path.join(sys.argv[1], 'metrics.json'), 'w').write(json.dumps({'best_accuracy_pct': 1.0, "
            "'cuda': os.environ.get('CUDA_VISIBLE_DEVICES'), 'threads': os.environ.get('OMP_NUM_THREADS'), "
            "'start': start, 'end': time.time()}))")


@pytest.fixture
def fake_trainer(monkeypatch):
    def command(spec, run_dir, sleep="1.0"):
        return [sys.executable, "-c", REPORTER, str(run_dir), sleep]

    monkeypatch.setattr(runner, "trainer_command", command)
    monkeypatch.setattr(runner, "prepare_data", lambda runs, out: None)
    monkeypatch.setattr(runner, "check_runnable", lambda runs: None)


def test_local_executor_runs_two_at_once_each_on_its_gpu(tmp_path, fake_trainer):
    specs = [_spec(n) for n in (10, 20, 30, 40)]
    pool = SlotPool(jobs_per_gpu=1, gpus=("0", "1"), cores=2, free_mib=lambda gpu: None)
    lines: list[str] = []
    counts = runner.run_matrix(tmp_path, specs, executor=LocalExecutor(pool), out=lines.append)
    assert counts == {"success": 4, "failed": 0}
    seen = [json.loads((tmp_path / s.run_id / "metrics.json").read_text()) for s in specs]
    assert sorted(m["cuda"] for m in seen) == ["0", "0", "1", "1"] and {m["threads"] for m in seen} == {"1"}
    # the first two overlapped in time, on different GPUs
    assert seen[1]["start"] < seen[0]["end"] and seen[0]["cuda"] != seen[1]["cuda"]
    results = [json.loads((tmp_path / s.run_id / "result.json").read_text()) for s in specs]
    assert all(r["placement"]["gpus"] == [m["cuda"]] for r, m in zip(results, seen))
    assert any("running 1" in line for line in lines)


def test_a_run_asking_for_more_gpus_than_the_machine_has_stops_before_anything_runs(tmp_path, fake_trainer):
    pool = SlotPool(jobs_per_gpu=1, gpus=("0",), cores=2)
    with pytest.raises(UserError, match="asks for 2 GPUs together; this machine has 1"):
        runner.run_matrix(tmp_path, [_spec(10, gpus=2)], executor=LocalExecutor(pool), out=lambda line: None)
    assert not (tmp_path / _spec(10).run_id).exists()


def test_stop_kills_every_run_in_flight_within_seconds(tmp_path):
    specs = [_spec(n) for n in (10, 20)]
    tasks = [RunTask(tmp_path, s, (sys.executable, "-c", REPORTER, str(tmp_path / s.run_id), "60")) for s in specs]
    executor = LocalExecutor(SlotPool(jobs_per_gpu=2, gpus=(), cores=2))
    executor.launch(tasks)
    started = executor.poll(0.1)
    assert [e.kind for e in started] == ["started", "started"]
    time.sleep(1.0)
    pids = [p.pid for p in psutil.process_iter(["cmdline"]) if REPORTER in (p.info["cmdline"] or [])]
    assert len(pids) == 2
    begin = time.monotonic()
    executor.stop()
    assert time.monotonic() - begin < 7
    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert not list(Path(tmp_path).glob("*/result.json"))  # stopped runs are not recorded as done or failed
