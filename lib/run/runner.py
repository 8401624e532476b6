"""Run a matrix: what to run, in which folder, and what to record about the whole.

The runner owns the result directory: config.txt and matrix.json at the
start, then one task per run not yet done, handed to an executor
(executors.py: this machine's slot pool, or Slurm). Each run's folder,
run.json and result.json are written by run_task.execute_run wherever the run
lands; result.json is written last and atomically, and its presence with
status "success" is what "done" means, so resuming needs nothing but files.
"""
from __future__ import annotations

import dataclasses
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable

from lib.config import RunnerSettings, default_runner, load_kconfig
from lib.errors import NON_FINITE_EXIT, UserError, WriteError, clipped, counted, escaped
from lib.jsonio import SCHEMA_VERSION, check_result_dir, read_json, write_bytes_atomic, write_json_atomic
from lib.matrix import spec_from_entry
from lib.names import RESUME_DIR, SUPERSEDED_DIR, check_no_links
from lib.provenance import git_commit
from lib.run.dir_lock import locked
from lib.run.executor import Executor
from lib.run.launch import prepare_data, trainer_command
from lib.run.local_executor import LocalExecutor
from lib.run.progress import MatrixProgress
from lib.run.slots import SlotPool, visible_gpus
from lib.run.task import RunPolicy, RunTask
from lib.spec import RunSpec
from lib.trackers.settings import TrackerSettings

POLL_S = 1.0  # how often the progress display refreshes while nothing happens
# The names new_timestamped_dir gives: only these are matrices `make continue` may pick on its own
# (reproduce_<time>/, compare_<time>/ or a user's copy sort after them by name but are not).
EXECUTORS = ("local", "slurm")  # make_executor's names: EXECUTOR=, CONFIG_EXECUTOR_*
MATRIX_DIR_NAME = re.compile(r"(\d{8}_\d{6})(?:_(\d{1,3}))?")


def check_device(device: object) -> None:
    """Fail before any run starts when DEVICE names a device this machine lacks:
    every run would fail (or silently train on the CPU) otherwise."""
    import torch

    if not isinstance(device, str) or device in ("auto", "cpu"):
        return
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError('CONFIG_DEVICE="mps" but this machine has no MPS device (Apple GPUs only); '
                        'set DEVICE to auto, cpu or cuda')
    count = torch.cuda.device_count() if device.startswith("cuda") else 0
    index = int(device[5:]) if device.startswith("cuda:") and device[5:].isdigit() else 0
    if device.startswith("cuda") and index >= count:
        have = f"{counted(count, 'CUDA device')} (cuda:0..cuda:{count - 1})" if count else "no CUDA device"
        raise UserError(f'CONFIG_DEVICE="{device}" but this machine has {have}; set DEVICE to auto or cpu')


def check_devices(runs: Iterable[RunSpec]) -> None:
    """check_device for every run that will train on this machine."""
    for spec in runs:
        check_device(spec.training.device)


def check_runnable(runs: Iterable[RunSpec]) -> None:
    """Fail before any run starts if a run asks for a model, optimizer or method we lack."""
    from lib.optim import OPTIMIZERS
    from lib.pruning import SCORES
    from lib.pruning.scores import score_name

    for spec in runs:
        trainer_command(spec, Path("."))
        if spec.optimizer not in OPTIMIZERS:
            raise UserError(f"{spec.run_id}: optimizer {spec.optimizer!r} is not available in this version "
                            f"(have: {', '.join(OPTIMIZERS)})")
        score = score_name(spec.pruning, spec.variant, spec.optimizer_params.state_score or "")
        if spec.pruning != "none" and score not in SCORES:
            raise UserError(f"{spec.run_id}: pruning score {score!r} is not available in this version "
                            f"(have: none, state, {', '.join(SCORES)})")


def new_timestamped_dir(root: Path) -> Path:
    """Create root/<YYYYMMDD_HHMMSS>[_N]: os.mkdir either creates it or fails,
    so two runners started in the same second never share a directory."""
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    try:
        root.mkdir(parents=True, exist_ok=True)
        for suffix in range(1, 1000):
            results_dir = root / (stamp if suffix == 1 else f"{stamp}_{suffix}")
            try:
                results_dir.mkdir()
                return results_dir
            except FileExistsError:
                continue
    except OSError as exc:
        raise WriteError(exc.errno, f"{root}: cannot create a result directory ({exc.strerror})") from None
    raise UserError(f"{root}: 999 result directories named {stamp}_N already exist")


def newest_matrix_dir(root: Path) -> Path:
    """The newest root/<YYYYMMDD_HHMMSS>[_N] holding a matrix.json, by its name's time and N."""
    def key(path: Path) -> tuple[str, int]:
        stamp, suffix = MATRIX_DIR_NAME.fullmatch(path.name).groups()
        return stamp, int(suffix or 1)  # _10 after _9, which a plain sort by name gets wrong

    # os.path.isfile: False for a folder we may not read (Path.is_file raises PermissionError there)
    candidates = [p for p in root.glob("*") if MATRIX_DIR_NAME.fullmatch(p.name) and os.path.isfile(p / "matrix.json")]
    if not candidates:
        raise UserError(f"no result directory under {root} to continue: none named <YYYYMMDD_HHMMSS> holds "
                        "a matrix.json (run `make` first, or give RESULTS=dir)")
    return max(candidates, key=key)


def create_results_dir(root: Path, config_path: Path, config_name: str | None, runs: list[RunSpec]) -> Path:
    """A new timestamped directory holding config.txt and matrix.json."""
    results_dir = new_timestamped_dir(root)
    write_bytes_atomic(results_dir / "config.txt", config_path.read_bytes())
    # matrix.json last: a directory without it is not offered to `make continue`
    write_json_atomic(results_dir / "matrix.json", {
        "schema_version": SCHEMA_VERSION, "created_at": datetime.now().isoformat(timespec="seconds"),
        "config_name": config_name, "runs": [r.to_json() for r in runs]})
    return results_dir


def load_matrix(results_dir: Path) -> list[RunSpec]:
    """The runs of matrix.json, each checked (lib/matrix.spec_from_entry): it may come from anyone."""
    path = results_dir / "matrix.json"
    check_result_dir(results_dir, hint="(give a test_matrix_results/<timestamp> folder)")  # a mistyped RESULTS=
    if not path.is_file():
        raise UserError(f"{results_dir}: not a result directory of this framework (no matrix.json)")
    data = read_json(path, within=results_dir)
    entries = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: no 'runs' list")
    runs = [spec_from_entry(entry, f"{path}: run {i + 1}") for i, entry in enumerate(entries)]
    seen: set[str] = set()
    for spec in runs:
        if spec.run_id in seen:  # two runs in one folder would overwrite each other
            raise UserError(f"{path}: run_id {spec.run_id!r} appears twice")
        seen.add(spec.run_id)
    return runs


def is_done(run_dir: Path) -> bool:
    """True when result.json is valid JSON saying the run succeeded."""
    try:
        return read_json(run_dir / "result.json", within=run_dir.parent).get("status") == "success"
    except (UserError, AttributeError):
        return False


def pending(results_dir: Path, runs: list[RunSpec]) -> list[RunSpec]:
    return [spec for spec in runs if not is_done(results_dir / spec.run_id)]


def failure_lines(results_dir: Path, runs: list[RunSpec]) -> list[str]:
    """What to do about the runs that did not succeed, one line per kind of failure (none if all did).

    A run that went non-finite (result.json "non_finite", or its trainer's NON_FINITE_EXIT in a
    result.json written before that field) diverges again from the same recorded settings, so
    `make continue` is no remedy there; a crash, timeout or interruption may pass."""
    non_finite, other = [], []
    for spec in runs:
        try:
            result = read_json(results_dir / spec.run_id / "result.json", within=results_dir)
        except UserError:
            continue  # never finished: reported as missing, and `make continue` runs it
        if isinstance(result, dict) and result.get("status") not in ("success", None):
            diverged = result.get("non_finite") is True or result.get("exit_code") == NON_FINITE_EXIT
            (non_finite if diverged else other).append(spec.run_id)
    lines = []
    if non_finite:
        lines.append(f"{counted(len(non_finite), 'run')} went non-finite ({', '.join(non_finite)}); make continue "
                     "reruns the recorded settings and would diverge again: lower CONFIG_LEARNING_RATE (or the "
                     "optimizer's own rate) or set CONFIG_GRADIENT_CLIP_NORM, then run make")
    if other:
        lines.append(f"{counted(len(other), 'run')} failed; see their output.log, then `make continue`")
    return lines


def config_changes(current: Path, recorded: Path, limit: int = 8) -> list[str]:
    """Symbols whose values differ between two configuration files, as `NAME: old -> new`."""
    def shown(value: str) -> str:
        # an int or string with no value (its menu switched off) is empty; a bool is never empty (n);
        # a string of the recorded config.txt comes from elsewhere: cut, control characters escaped
        return escaped(clipped(value, 80)) or "(unset)"

    old, new = load_kconfig(recorded).kconf, load_kconfig(current).kconf
    changed = [f"{name}: {shown(sym.str_value)} -> {shown(new.syms[name].str_value)}"
               for name, sym in old.syms.items()
               if name in new.syms and sym.str_value != new.syms[name].str_value]
    return changed[:limit] + ([f"... and {len(changed) - limit} more"] if len(changed) > limit else [])


# What the recorded config.txt decides when a directory is continued: part of the experiment. Everything
# else (executor, slots, Slurm's partition, account and sbatch options, trackers) says where and how the
# runs go, and comes from this machine's .config only, else Kconfig's defaults: a directory may come from
# another lab, whose config.txt would otherwise submit our runs under its Slurm account with its sbatch
# options (SLURM_EXTRA "output=..." writes a file wherever it names) and log them to its tracker project.
RECORDED_FIELDS = ("timeout_s", "retries")
PLACEMENT_FIELDS = tuple(f.name for f in dataclasses.fields(RunnerSettings)
                         if f.name not in (*RECORDED_FIELDS, "tracking", "results_root"))


def continue_settings(recorded: RunnerSettings, here: RunnerSettings | None,
                      executor: str | None = None) -> RunnerSettings:
    """Settings to finish a directory with: the recorded timeout and retries (RECORDED_FIELDS), the rest
    from this machine's .config (`here`), else Kconfig's defaults, never the directory's; `executor` if
    given."""
    settings = dataclasses.replace(here or default_runner(),
                                   **{name: getattr(recorded, name) for name in RECORDED_FIELDS})
    return dataclasses.replace(settings, executor=executor) if executor else settings


def placement_note(recorded: RunnerSettings, used: RunnerSettings, recorded_path: Path) -> str | None:
    """The note `make continue` prints without a .config when config.txt recorded another placement
    (executor, slots, Slurm settings) than the defaults it runs with; None when they agree. Values
    escaped and cut: config.txt may come from elsewhere."""
    def shown(value: object) -> str:
        return "'" + escaped(clipped(str(value))) + "'"

    differ = [f"{name} {shown(getattr(recorded, name))}" for name in PLACEMENT_FIELDS
              if getattr(recorded, name) != getattr(used, name)]
    if not differ:
        return None
    return (f"note: {escaped(str(recorded_path))} recorded {', '.join(differ)}; not used: without a .config "
            f"here the runs go where Kconfig's defaults say (executor {used.executor!r}); where runs go is "
            "never taken from a result directory: load a .config to choose")


def tracker_note(recorded: TrackerSettings, used: TrackerSettings, recorded_path: Path,
                 config_name: str | None) -> str | None:
    """The note `make continue` prints when the trackers recorded in config.txt are not the ones
    it logs to (None when they are the same): both named, the recorded ones escaped and cut,
    since config.txt may come from elsewhere. `config_name`: the .config used, None without one."""
    if recorded == used:
        return None
    source = (f"those of {config_name}: {used.describe()}" if config_name
              else "none (no .config here; trackers come only from your own .config, never from a result "
                   "directory)")
    return (f"note: experiment trackers recorded in {escaped(str(recorded_path))}: {recorded.describe()}; "
            f"not used: continuing with {source}")


def make_tasks(results_dir: Path, todo: list[RunSpec], policy: RunPolicy,
               tracking: TrackerSettings = TrackerSettings()) -> list[RunTask]:
    commit = git_commit()
    return [RunTask(results_dir, spec, tuple(trainer_command(spec, results_dir / spec.run_id)), policy,
                    spec.gpus, commit, tracking) for spec in todo]


def run_matrix(results_dir: Path, runs: list[RunSpec], settings: RunnerSettings | None = None,
               executor: Executor | None = None, out: Callable[[str], None] = print,
               bar: bool = False, data_ready: bool = False) -> dict[str, int]:
    """Run every spec of `runs` not yet done in `results_dir`; return counts by status.

    Interrupted (KeyboardInterrupt, or SIGTERM turned into one by the caller),
    it stops every run in flight before re-raising; their folders have no
    result.json, so `make continue` reruns exactly them. Holds the directory's
    lock throughout (lib/run/dir_lock): a second runner on it stops at once.
    `settings` None: Kconfig's defaults.
    """
    settings = settings or default_runner()
    check_no_links(results_dir, [RESUME_DIR, SUPERSEDED_DIR, *(spec.run_id for spec in runs)])
    with locked(results_dir):
        return _run_locked(results_dir, runs, settings, executor, out, bar, data_ready)


def _run_locked(results_dir: Path, runs: list[RunSpec], settings: RunnerSettings, executor: Executor | None,
                out: Callable[[str], None], bar: bool, data_ready: bool) -> dict[str, int]:
    def say(line: str) -> None:
        # the directory, its matrix's data folders, the recorded Slurm settings and jobs.json may come
        # from another lab (make continue, make reproduce)
        out(escaped(line))

    todo = pending(results_dir, runs)
    executor = executor or make_executor(settings, results_dir, say)
    check_runnable(todo)
    if executor.name == "local":
        check_devices(todo)
    skipped = len(runs) - len(todo)
    say(f"{results_dir}: {counted(len(runs), 'run')}, {skipped} already done, {len(todo)} to run")
    if not todo:
        return {"success": skipped, "failed": 0}
    say(f"executor {executor.name}: {executor.describe()}")
    if not data_ready:
        prepare_data(todo, say)
    tasks = make_tasks(results_dir, todo, RunPolicy(settings.timeout_s, settings.retries,
                                                     settings.sample_interval_ms / 1000), settings.tracking)
    progress = MatrixProgress(len(tasks), executor.slots, out, bar)
    try:
        executor.launch(tasks)
        while progress.remaining:
            for event in executor.poll(POLL_S):
                if event.kind == "started":
                    progress.started(event.task, event.placement)
                else:
                    progress.finished(event.task, event.result)
            progress.refresh()
    except BaseException:
        executor.stop()
        raise
    finally:
        progress.close()
    return {"success": skipped + progress.done, "failed": progress.failed}


def check_executor(name: str, source: str = "executor") -> str:
    """`name` when it is an executor (EXECUTORS), else a UserError naming `source` and what is allowed."""
    if name not in EXECUTORS:
        raise UserError(f"{source}={name!r} is not valid; allowed: {', '.join(EXECUTORS)}")
    return name


def make_executor(settings: RunnerSettings, results_dir: Path, note: Callable[[str], None] = print,
                  name: str | None = None) -> Executor:
    """The executor named by EXECUTOR (or `name`), configured from the runner settings."""
    name = check_executor(name or settings.executor)  # a typo must not mean "local"
    if name == "slurm":
        from lib.run.slurm_executor import SlurmExecutor

        return SlurmExecutor(results_dir, settings, note=note)
    pool = SlotPool(jobs_per_gpu=settings.parallel_jobs, gpus=visible_gpus(), min_free_mib=settings.min_free_gpu_mib)
    return LocalExecutor(pool, note=note)
