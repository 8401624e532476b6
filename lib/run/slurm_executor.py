"""The scale-out executor: one Slurm array task per run, through submitit.

Each task runs `run_task.execute_run` on its node, the same function a local
slot runs, so a run's folder and result.json do not depend on where it ran
and `make continue` finishes a directory whichever executor started it. The
result directory (and DATA_DIR) must be on storage the nodes share.

- submitit's own files (pickled task, each task's stdout/stderr) go to
  `<results>/.submitit/`; `jobs.json` there maps run IDs to job IDs, so a later
  `make continue` waits for a task that is still queued or running (the
  runner was killed, the tasks were not) instead of starting it twice.
- Preemption and time limits: `RunOnNode` is a submitit Checkpointable, so on
  Slurm's warning signal submitit requeues the same task. The requeued task
  sets the partial folder aside and the trainer resumes from its last.pt
  (`<results>/.resume/<run_id>/`).
- A task that ends without result.json (cancelled, node failure, out of
  memory) is recorded by the runner as "interrupted" (or "timeout") with the tail
  of the task's log.

SLURM_CLUSTER=local runs the same tasks through submitit's LocalExecutor (the
tests do); it ignores array limits, so there the executor submits one job per
run, SLURM_ARRAY_PARALLELISM at a time.
"""
from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import submitit

from lib import ROOT
from lib.config import RunnerSettings, parse_slurm_extra
from lib.errors import UserError, counted
from lib.jsonio import read_json, write_json_atomic
from lib.run.executor import RunEvent
from lib.run.process import RunOutcome, now_iso
from lib.run.slots import THREAD_VARS, cpu_cores
from lib.run.task import LOG_TAIL_LINES, Placement, RunTask, execute_run, set_aside, write_result

LIVE_STATES = {"PENDING", "REQUEUED", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "RESIZING", "UNKNOWN"}
RUNNING_STATES = {"RUNNING", "COMPLETING"}


class RunOnNode(submitit.helpers.Checkpointable):
    """The array task: one run, on the node, exactly as a local slot would run it.

    Checkpointable's `checkpoint` resubmits the same call on preemption or time
    limit; the trainer itself resumes from its last.pt."""

    def __init__(self, threads: int | None = None):
        self.threads = threads  # None: the task's Slurm CPUs (SLURM_CPUS_PER_TASK)

    def __call__(self, task: RunTask) -> dict[str, Any]:
        env = submitit.JobEnvironment()
        threads = self.threads or int(os.environ.get("SLURM_CPUS_PER_TASK") or 0) or cpu_cores()
        gpus = tuple(g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g)
        placement = Placement("slurm", gpus=gpus, threads=threads, job_id=str(env.job_id))
        return execute_run(task, placement, {name: str(threads) for name in THREAD_VARS})


@dataclass
class _Tracked:
    task: RunTask
    job: Any  # submitit Job
    started: bool = False
    submitted_at: float = field(default_factory=time.monotonic)


class SlurmExecutor:
    """Submits the runs as a job array and follows the tasks until each has a result."""

    name = "slurm"

    def __init__(self, results_dir: Path, settings: RunnerSettings, note: Callable[[str], None] = print):
        self.settings, self.cluster, self._note = settings, settings.slurm_cluster, note
        self.folder = Path(results_dir) / ".submitit"
        self.jobs_file = self.folder / "jobs.json"
        self.slots = settings.slurm_array_parallelism or 1_000_000  # no limit: every run at once
        self._queue: deque[RunTask] = deque()  # local cluster only: waiting for a slot
        self._live: dict[str, _Tracked] = {}
        self._executors: dict[int, Any] = {}

    def describe(self) -> str:
        s = self.settings
        gpus = "no GPU" if not s.slurm_gpus_per_task else f"{s.slurm_gpus_per_task}+ GPUs"  # "1+": plural
        return (f"Slurm array on partition {s.slurm_partition or '(default)'}, {s.slurm_time_min} min, {gpus}, "
                f"{counted(s.slurm_cpus_per_task, 'CPU')} per task"
                + (f", at most {s.slurm_array_parallelism} at once" if s.slurm_array_parallelism else ""))

    def _gpus(self, task: RunTask) -> int:
        wanted = self.settings.slurm_gpus_per_task
        return 0 if wanted == 0 else max(wanted, task.gpus)

    def _executor(self, gpus: int):
        if gpus not in self._executors:
            s = self.settings
            try:
                ex = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
            except (RuntimeError, ValueError) as error:  # no sbatch/srun here, or an unknown cluster name
                raise UserError(f"EXECUTOR_SLURM: {error} (SLURM_CLUSTER={self.cluster!r}; "
                                f"submit from a Slurm login node, or set SLURM_CLUSTER=local to rehearse)") from None
            params: dict[str, Any] = {"name": f"matrix-{self.folder.parent.name}", "timeout_min": s.slurm_time_min,
                                      "cpus_per_task": s.slurm_cpus_per_task,
                                      "slurm_additional_parameters": parse_slurm_extra(s.slurm_extra)}
            if gpus:
                params["gpus_per_node"] = gpus
            if s.slurm_mem_gb:
                params["mem_gb"] = s.slurm_mem_gb
            if s.slurm_partition:
                params["slurm_partition"] = s.slurm_partition
            if s.slurm_array_parallelism:
                params["slurm_array_parallelism"] = s.slurm_array_parallelism
            ex.update_parameters(**params)
            self._executors[gpus] = ex
        return self._executors[gpus]

    def _local_cluster(self) -> bool:
        return self.cluster in ("local", "debug")

    # ------------------------------------------------------------------ launch

    def launch(self, tasks: list[RunTask]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        # The task process imports lib/ by name; sbatch and the local controller pass the environment on.
        paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if str(ROOT) not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in paths if p])
        fresh = [task for task in tasks if not self._reattach(task)]
        for task in fresh:
            set_aside(task.run_dir)  # an old result.json must not pass for this task's result
        if self._local_cluster():
            self._queue.extend(fresh)
            self._submit_queued()
            return
        by_gpus: dict[int, list[RunTask]] = {}
        for task in fresh:
            by_gpus.setdefault(self._gpus(task), []).append(task)
        for gpus, group in by_gpus.items():
            jobs = self._executor(gpus).map_array(RunOnNode(), group)
            self._track(zip(group, jobs))

    def _submit_queued(self) -> None:
        while self._queue and len(self._live) < self.slots:
            task = self._queue.popleft()
            # local processes share this machine's cores, as local slots do
            threads = max(1, cpu_cores() // min(self.slots, cpu_cores()))
            self._track([(task, self._executor(self._gpus(task)).submit(RunOnNode(threads), task))])

    def _track(self, pairs) -> None:
        for task, job in pairs:
            self._live[task.spec.run_id] = _Tracked(task, job)
        recorded = self._recorded()
        recorded.update({run_id: str(t.job.job_id) for run_id, t in self._live.items()})
        write_json_atomic(self.jobs_file, recorded)

    def _recorded(self) -> dict[str, str]:
        try:
            return dict(read_json(self.jobs_file))
        except UserError:
            return {}

    def _reattach(self, task: RunTask) -> bool:
        """Follow a task of an earlier invocation that is still queued or running, instead of a second one."""
        job_id = self._recorded().get(task.spec.run_id)
        if not job_id:
            return False
        if self._local_cluster():
            _stop_local_leftover(job_id)  # a local controller cannot be followed from another process
            return False
        job = submitit.SlurmJob(folder=self.folder, job_id=job_id)
        if job.state.upper().split()[0] not in LIVE_STATES:
            return False
        self._note(f"{task.spec.run_id}: following job {job_id} of an earlier invocation ({job.state})")
        self._live[task.spec.run_id] = _Tracked(task, job)
        return True

    # -------------------------------------------------------------------- poll

    def poll(self, timeout_s: float) -> list[RunEvent]:
        deadline = time.monotonic() + timeout_s
        while True:
            news = self._news()
            self._submit_queued()
            if news or time.monotonic() >= deadline:
                return news
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))

    def _news(self) -> list[RunEvent]:
        news = []
        for run_id, tracked in list(self._live.items()):
            state = str(tracked.job.state).upper()
            done = tracked.job.done()
            if not tracked.started and (done or state.split()[0] in RUNNING_STATES):
                tracked.started = True
                news.append(RunEvent("started", tracked.task, Placement("slurm", job_id=str(tracked.job.job_id))))
            if done:
                del self._live[run_id]
                news.append(RunEvent("finished", tracked.task, None, self._result(tracked, state)))
        return news

    def _result(self, tracked: _Tracked, state: str) -> dict[str, Any]:
        task = tracked.task
        try:
            result = read_json(task.run_dir / "result.json")
            if isinstance(result, dict) and result.get("status"):
                return result
        except UserError:
            pass
        # The task ended without recording itself: the runner records what Slurm says.
        # execute_run always writes result.json unless its process was killed, or raised (then submitit
        # pickled the exception): tell the two apart.
        raised = tracked.job.paths.result_pickle.exists()
        status = "timeout" if state.startswith("TIMEOUT") else "failed" if raised else "interrupted"
        task.run_dir.mkdir(parents=True, exist_ok=True)
        duration = time.monotonic() - tracked.submitted_at
        outcome = RunOutcome(status, None, 1, now_iso(), now_iso(), duration)
        placement = Placement("slurm", job_id=str(tracked.job.job_id))
        log = (tracked.job.stderr() or "") + (tracked.job.stdout() or "")
        return write_result(task.run_dir, task.spec, outcome, placement,
                            extra_log=[f"--- job {tracked.job.job_id} ended {state} without result.json ---"]
                            + log.splitlines()[-LOG_TAIL_LINES:])

    # -------------------------------------------------------------------- stop

    def stop(self) -> None:
        """Cancel every task of this invocation still queued or running."""
        self._queue.clear()
        for tracked in self._live.values():
            try:
                tracked.job.cancel(check=False)
            except Exception as error:  # scancel missing or failing: say so, the tasks may still run
                self._note(f"could not cancel job {tracked.job.job_id}: {error}")
        for tracked in self._live.values():
            process = getattr(tracked.job, "_process", None)  # local cluster: wait for the controller
            if process is not None:
                try:
                    process.wait(timeout=15)
                except Exception:
                    process.kill()
        self._live.clear()


def _stop_local_leftover(job_id: str) -> None:
    """SIGINT a local-cluster controller left by a killed runner (its task then stops the trainer)."""
    import signal

    import psutil

    try:
        proc = psutil.Process(int(job_id))
        if "submitit.local._local" in " ".join(proc.cmdline()):
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=15)
    except (ValueError, psutil.Error):
        pass
