"""Hostile inputs and faults (issue 14): one test per class, on inputs the tests craft.

Result directories travel between labs, so nothing read from one may run
code, become a path outside the output, crash the report, or outlive the
runner; the CLI ends in a report or one `error:` line with exit code 2.
"""
from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, no_traceback, run_script
from result_dirs import classifier_metrics, gpu_stats, spec, tree_digest, write, write_matrix, write_run

from lib.config import parse_seeds, parse_slurm_extra
from lib.errors import UserError, WriteError
from lib.jsonio import write_json_atomic
from lib.matrix import spec_from_entry
from lib.names import is_safe_name
from lib.report.summary import write_reports
from lib.results.reader import load_results
from lib.run.dir_lock import locked
from lib.run.runner import check_device, new_timestamped_dir
from lib.train.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from tests.specs import make_spec

REPORT = ROOT / "scripts" / "report.py"
MATRIX = ROOT / "scripts" / "matrix.py"
GOOD = json.loads(json.dumps(make_spec("lenet5_sgd_none").to_json()))  # a complete matrix.json entry


# 1. data is never code --------------------------------------------------------

class _RunsCode:
    """Unpickling this calls open(marker, "w"): a file appears if the checkpoint is loaded unsafely."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_crafted_checkpoint_runs_nothing_and_is_set_aside(tmp_path, capsys):
    marker, last = tmp_path / "pwned", tmp_path / ".resume" / "run" / "last.pt"
    last.parent.mkdir(parents=True)
    torch.save({"format_version": 2, "identity": "x", "payload": _RunsCode(marker)}, last)
    assert load_checkpoint(last, torch.device("cpu")) is None
    assert not marker.exists()
    assert not last.exists() and len(list(last.parent.glob("last.pt.rejected-*"))) == 1
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith(f"warning: {last}:")
    # a real checkpoint, RNG states included, still loads weights-only and restores them
    save_checkpoint(last, {"model": torch.nn.Linear(2, 2).state_dict(), "rng": rng_state()})
    state = load_checkpoint(last, torch.device("cpu"), required=("model", "rng"))
    expected = torch.rand(3)
    restore_rng_state(state["rng"])
    assert torch.equal(torch.rand(3), expected)


# 2. data is never a path ------------------------------------------------------

@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", "", ".resume", "-rf", "a b", "x" * 129, "é", None, 3])
def test_unsafe_names_are_refused(name):
    assert not is_safe_name(name)


def test_safe_names_pass():
    assert all(map(is_safe_name, ["lenet5_adamwprune_bitter7_state_50_s2", "gpt2", "a-b.c", "_x"]))


def _hostile_names_dir(root: Path) -> Path:
    good = spec("lenet5", "sgd", "none", 0)
    bad_model = {**spec("lenet5", "adam", "none", 0), "model": "../../x"}
    bad_id = {**spec("lenet5", "adamw", "none", 0), "run_id": "../escape"}
    write_matrix(root, [good, bad_model, bad_id, {**good, "run_id": {"a": 1}}])
    for s in (good, bad_model):
        write_run(root, s, "success", classifier_metrics(s, [90.0, 91.0], 0.0), gpu_stats(10, 20))
    return root


def test_report_skips_unsafe_names_and_writes_only_into_out(tmp_path):
    results = _hostile_names_dir(tmp_path / "in" / "results")
    before, outside = tree_digest(tmp_path / "in"), set(tmp_path.iterdir())
    out = tmp_path / "out"
    proc = run_script(REPORT, results, "--out", out)
    no_traceback(proc)
    assert proc.returncode == 0
    assert tree_digest(tmp_path / "in") == before  # input byte-identical
    assert set(tmp_path.iterdir()) == outside | {out}  # nothing beside OUT
    runs = json.loads((out / "all_results.json").read_text())["runs"]
    assert [r["run_id"] for r in runs] == ["lenet5_sgd_none"]
    assert "model '../../x' is not a safe name" in proc.stderr
    assert "run_id '../escape' is not a safe name" in proc.stderr
    assert all(is_safe_name(p.stem) for p in (out / "graphs").iterdir())


def test_upstream_test_id_with_dots_is_skipped(tmp_path, capsys):
    write(tmp_path / "all_results.json", [{"test_id": "../../evil", "best_accuracy": 5},
                                          {"test_id": "lenet5_sgd_none", "best_accuracy": 97.0}])
    table = load_results(tmp_path)
    assert list(table["run_id"]) == ["lenet5_sgd_none"]
    assert "test_id '../../evil' is not a safe name" in capsys.readouterr().err


@pytest.mark.parametrize("entry, says", [
    ({"run_id": "../x"}, "run_id '../x' is not a safe name"),
    ({"model": "../../x"}, "model '../../x' is not a safe name"),
    ({"variant": "a/b"}, "variant 'a/b' is not a safe name"),
    ({"seed": 10**30}, "seed 1000000000000000000000000000000 is not an integer"),
    ({"hyperparams": []}, "hyperparams lack"),
    ({"hyperparams": {"model": {}, "training": {}}}, "hyperparams.training: lacks 'batch_size'"),
    ({"optimizer": "lion"}, "hyperparams.optimizer: optimizer 'lion' is unknown"),
    ({"hyperparams": {**GOOD["hyperparams"], "training": {**GOOD["hyperparams"]["training"], "epochs": "2"}}},
     "hyperparams.training.epochs: '2' is not an integer"),
    ({"hyperparams": {**GOOD["hyperparams"], "optimizer": {"momentum": 0.9}}},
     "hyperparams.optimizer: lacks 'weight_decay'"),
])
def test_continue_refuses_a_hostile_matrix_entry(entry, says):
    assert json.loads(json.dumps(spec_from_entry(GOOD, "matrix.json: run 1").to_json())) == GOOD
    with pytest.raises(UserError, match=says.replace("(", r"\(")):
        spec_from_entry({**GOOD, **entry}, "matrix.json: run 1")


def test_make_continue_on_a_hostile_matrix_is_one_error_line(tmp_path):
    results = tmp_path / "results"
    write_matrix(results, [{**spec("lenet5", "sgd", "none", 0), "run_id": "../escape",
                            "hyperparams": {"model": {}, "training": {}}}])
    before = tree_digest(tmp_path)
    proc = run_script(MATRIX, "continue", "--results", results, "--config", tmp_path / "absent.config")
    no_traceback(proc)
    assert proc.returncode == 2 and proc.stderr.count("error:") == 1
    assert "run_id '../escape' is not a safe name" in proc.stderr
    assert tree_digest(tmp_path) == before


def test_planted_link_is_not_written_through(tmp_path):
    results, elsewhere = _hostile_names_dir(tmp_path / "results"), tmp_path / "elsewhere"
    elsewhere.mkdir()
    (results / "graphs").symlink_to(elsewhere)
    with pytest.raises(UserError, match="a symbolic link"):
        write_reports(load_results(results), results, "x", graphs=False)
    assert list(elsewhere.iterdir()) == []


# 3. the Makefile hands values over literally ----------------------------------

@pytest.mark.slow  # runs make
def test_make_report_takes_paths_with_shell_syntax_literally(tmp_path):
    name = "we ird $(touch pwnA) `touch pwnB` \"q\" 's' $HOME $$x"
    results = _hostile_names_dir(tmp_path / name)
    out = tmp_path / f"out {name}"
    proc = subprocess.run(["make", "-s", "report", f"RESULTS={results}", f"OUT={out}"], cwd=ROOT,
                          capture_output=True, text=True)
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert (out / "summary_report.txt").is_file()
    assert not list(tmp_path.glob("pwn*")) and not list(ROOT.glob("pwn*"))


# 4. processes die with the runner; a stale sampler writes nothing -------------

# The trainer ignores SIGTERM and SIGHUP (the kernel HUPs a stopped, orphaned group), so only
# SIGKILL ends it: what a trainer stuck in a driver call or a signal handler would need.
TRAINER = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
           "signal.signal(signal.SIGHUP, signal.SIG_IGN); time.sleep(120)")
RUNNER = f"""
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from lib.run.process import run_attempt
run_attempt([sys.executable, "-c", {TRAINER!r}], Path(sys.argv[2]), sample_interval_s=0.05)
"""


def _children(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _started(pid: int) -> list:
    """Children of `pid` that run their own program (past lib/lifeline's shim)."""
    import psutil

    started = []
    for child in _children(pid):
        try:
            if "-S" not in child.cmdline()[1:3]:  # the shim runs as `python -S -c SHIM ...`
                started.append(child)
        except psutil.NoSuchProcess:
            pass
    return started


def test_stopped_trainer_and_sampler_die_with_a_killed_runner(tmp_path):
    import psutil

    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(ROOT), str(tmp_path)])
    deadline = time.monotonic() + 30
    # Wait until both have left the exec shim (which sets the death signal): a process stopped
    # inside the shim, a few milliseconds after its start, is a race of this test, not of users.
    while len(_started(runner.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    children = _started(runner.pid)
    assert len(children) >= 2, "trainer and sampler did not start"
    trainer = next(c for c in children if TRAINER in c.cmdline())
    os.kill(trainer.pid, signal.SIGSTOP)
    runner.kill()
    runner.wait()
    gone, alive = psutil.wait_procs(children, timeout=5)
    for process in alive:  # clean up before failing: a stopped trainer would linger otherwise
        process.kill()
    assert not alive, "still alive 5 s after the runner was killed"


def test_sampler_without_the_owner_token_never_writes(tmp_path):
    target = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        results = {}
        for token, owner in (("old", "new"), ("same", "same")):  # a stale sampler, then the owner
            out = tmp_path / token / "gpu_stats.json"
            out.parent.mkdir()
            (out.parent / ".gpu_stats.json.owner").write_text(owner + "\n")
            sampler = subprocess.Popen([sys.executable, "-m", "lib.gpu_monitor.sampler", "--pid", str(target.pid),
                                        "--out", str(out), "--interval", "0.05", "--flush-every", "0.1",
                                        "--token", token], cwd=ROOT)
            time.sleep(1.5)
            sampler.send_signal(signal.SIGTERM)
            sampler.wait(10)
            results[token] = out.exists()
        assert results == {"old": False, "same": True}
    finally:
        target.kill()


# 5. one runner per result directory --------------------------------------------

def test_second_runner_on_a_locked_directory_exits_2_naming_the_holder(tmp_path):
    results = tmp_path / "results"
    write_matrix(results, [GOOD])
    write(results / "config.txt", "")
    with locked(results):
        proc = run_script(MATRIX, "continue", "--results", results, "--config", tmp_path / "absent.config")
    no_traceback(proc)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {results} is being run by process {os.getpid()}; "
                                                f"wait for it to finish or stop it, then `make continue`"]
    with locked(results):  # released when the holder let go
        pass


def test_timestamped_directories_never_collide(tmp_path):
    made = [new_timestamped_dir(tmp_path) for _ in range(5)]
    assert len(set(made)) == 5 and all(p.is_dir() for p in made)


# 6. the report never crashes ---------------------------------------------------

def _run(root: Path, status: str = "success", **files: str | bytes) -> dict:
    s = spec("lenet5", "sgd", "none", 0)
    write_matrix(root, [s])
    write_run(root, s, status, classifier_metrics(s, [90.0, 91.0], 0.0), gpu_stats(10, 20), ["boom"])
    for name, text in files.items():
        target = root / s["run_id"] / name.replace("_json", ".json")
        target.unlink(missing_ok=True)
        if text == "DIR":
            target.mkdir()
        elif text == "FIFO":  # opening it for reading would block forever
            os.mkfifo(target)
        elif isinstance(text, bytes):
            target.write_bytes(text)
        else:
            target.write_text(text)
    return s


HOSTILE = {
    "deep nesting": lambda root: _run(root, result_json="[" * 100_000 + "]" * 100_000),
    "5000-digit number": lambda root: _run(root, result_json='{"status": "success", "x": ' + "9" * 5000 + "}"),
    "result.json is a directory": lambda root: _run(root, result_json="DIR"),
    "metrics.json is a FIFO": lambda root: _run(root, metrics_json="FIFO", result_json="FIFO"),
    "non-finite numbers": lambda root: _run(root, metrics_json='{"best_accuracy_pct": Infinity, '
                                                               '"final_accuracy_pct": NaN, "epochs": [1, {}]}'),
    "wrong types": lambda root: write(root / "matrix.json", {"runs": [
        {"run_id": {"a": 1}}, {"run_id": "lenet5_sgd_none", "model": {"x": 1}, "optimizer": 5, "seed": 10**30,
                               "target_sparsity_pct": 10**400}]}),
    "binary garbage": lambda root: _run(root, metrics_json=b"\xff\xfe\x00", gpu_stats_json=b"\x00\x01"),
    "memory device not a string": lambda root: _run(root, gpu_stats_json=json.dumps(
        {**gpu_stats(10, 20), "device": {"kind": "cuda"}, "source": ["nvml"]})),
    "no matrix, run.json corrupt": lambda root: (_run(root, run_json=b"\xff"), (root / "matrix.json").unlink()),
    "all failed": lambda root: _run(root, status="failed"),
    "all missing": lambda root: write_matrix(root, [spec("lenet5", "sgd", "none", 0)]),
    "zero runs": lambda root: write_matrix(root, []),
    "upstream empty list": lambda root: write(root / "all_results.json", []),
    "upstream junk": lambda root: write(root / "all_results.json", [
        {"test_id": "lenet5_sgd_none", "best_accuracy": "high", "target_sparsity": math.inf, "error": {"x": [1]}},
        {"test_id": "gpt2_adamw_none", "best_val_loss": 800.0, "config": {"eval_interval": 10**50}}, 7, "x"]),
}


CLEAN = {"all failed", "all missing", "zero runs", "upstream empty list"}  # odd, but nothing damaged


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_report_of_a_damaged_directory_is_written(case, tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    HOSTILE[case](results)
    before = tree_digest(results)
    out = tmp_path / "out"
    write_reports(load_results(results), out, case, graphs=False)
    assert (out / "summary_report.txt").is_file() and (out / "report.html").is_file()
    json.loads((out / "all_results.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert tree_digest(results) == before
    if case not in CLEAN:  # each damage is a warning naming the file
        assert f"warning: {results}" in capsys.readouterr().err


def test_all_failed_matrix_reports_every_failure_with_its_log_tail(tmp_path):
    """Through the CLI: a report, no traceback, each failure listed with its log tail."""
    failed = [spec("lenet5", o, "none", 0) for o in ("sgd", "adam", "adamw")]
    write_matrix(tmp_path / "r", failed)
    for s in failed:
        write_run(tmp_path / "r", s, "failed", None, None, [f"{s['optimizer']} blew up"])
    proc = run_script(REPORT, tmp_path / "r", "--out", tmp_path / "out")
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    summary = (tmp_path / "out" / "summary_report.txt").read_text()
    failures = summary[summary.index("Failed Runs:"):]
    for s in failed:
        assert f"{s['run_id']}: " in failures and f"| {s['optimizer']} blew up" in failures


def test_upstream_infinite_perplexity_is_null_in_json(tmp_path):
    write(tmp_path / "in" / "all_results.json", [{"test_id": "gpt2_adamw_none", "best_val_loss": 800.0}])
    write_reports(load_results(tmp_path / "in"), tmp_path / "out", "x", graphs=False)
    (row,) = json.loads((tmp_path / "out" / "all_results.json").read_text())["runs"]
    assert row["best_perplexity"] is None


# 7. validation, disk full -------------------------------------------------------

def test_seed_above_numpy_range_is_refused():
    assert parse_seeds(f"0 {2**32 - 1}") == (0, 2**32 - 1)
    with pytest.raises(UserError, match="CONFIG_SEEDS"):
        parse_seeds(str(2**32))


def test_slurm_extra_with_an_unbalanced_quote_is_refused():
    with pytest.raises(UserError, match="not valid shell syntax"):
        parse_slurm_extra("account='proj")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:3"])
def test_cuda_on_a_machine_without_one_says_so(device):
    with pytest.raises(UserError, match="no CUDA device"):
        check_device(device)


def test_cuda_index_beyond_the_devices_present_is_refused():
    with pytest.raises(UserError, match=r'CONFIG_DEVICE="cuda:99" but this machine has'):
        check_device("cuda:99")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="checks a machine without MPS")
def test_mps_on_a_machine_without_one_is_refused():
    with pytest.raises(UserError, match="no MPS device"):
        check_device("mps")


def test_data_dir_tilde_is_expanded(isolated_config):
    from lib.config import load_settings

    settings = load_settings(isolated_config("lenet5-quick", DATA_DIR='"~/mnist-here"'), warn=lambda _: None)
    assert settings.training.data_dir == os.path.expanduser("~/mnist-here")


def test_empty_config_is_treated_as_none_with_a_warning(tmp_path):
    config = tmp_path / ".config"
    config.write_text("\n# nothing here\n")
    proc = run_script(MATRIX, "dry-run", "--config", config)
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert f"warning: {config} sets nothing" in proc.stderr
    assert "CONFIG_" in config.read_text()  # the default took its place


def test_disk_full_is_one_line_naming_the_path_and_nothing_half_written(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    write_json_atomic(target, {"status": "success"})

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteError) as caught:
        write_json_atomic(target, {"status": "failed"})
    assert str(caught.value) == f"{target}: cannot write (No space left on device)"
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC
    assert json.loads(target.read_text()) == {"status": "success"}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary file left
