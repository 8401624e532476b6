"""Experiment trackers (lib/trackers/backends.py): a failing tracker never fails a run; TRACKER= picks them;
W&B online without a login stops first; a tiny LeNet-5 run lands in W&B's offline files and
Trackio's local store with its per-step loss and final metrics."""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_script, write_config
from result_dirs import tree_digest

from lib.errors import UserError
from lib.trackers.backends import Tracker, Trackers, check_trackers
from lib.trackers.settings import TrackerSettings

RUN = "lenet5_adamw_magnitude_50"
HAVE_WANDB = importlib.util.find_spec("wandb") is not None
HAVE_TRACKIO = importlib.util.find_spec("trackio") is not None
NOT_INSTALLED = "not installed (requirements-trackers.txt; `make test` installs it)"


class RaisingTracker(Tracker):
    """A test double of our Tracker interface: raises on the chosen call, counts the others."""

    name = "raising"

    def __init__(self, fail_in: str) -> None:
        self.fail_in, self.calls = fail_in, []

    def _maybe_fail(self, what: str) -> None:
        self.calls.append(what)
        if what == self.fail_in:
            raise ConnectionError("network down")

    def start(self, run, config, group):
        self._maybe_fail("start")

    def log(self, step, metrics):
        self._maybe_fail("log")

    def finish(self):
        self._maybe_fail("finish")


@pytest.mark.parametrize("fail_in", ["start", "log", "finish"])
def test_a_failing_tracker_is_one_warning_then_off_and_the_others_go_on(fail_in):
    warnings: list[str] = []
    failing, healthy = RaisingTracker(fail_in), RaisingTracker("never")
    trackers = Trackers([failing, healthy], warn=warnings.append)
    trackers.start("run", {"lr": 0.1}, "group")
    for step in (1, 2, 3):
        trackers.log(step, {"train/loss": 1.0 / step, "note": "text is not a curve", "none": None})
    trackers.finish()
    assert len(warnings) == 1 and f"raising tracker failed in {fail_in} (ConnectionError: network down)" in warnings[0]
    assert "metrics.json stays its record" in warnings[0]
    assert failing.calls[-1] == fail_in  # nothing reached it after its failure
    assert healthy.calls == ["start", "log", "log", "log", "finish"]


def test_tracker_choice_sets_the_symbols_and_a_bad_one_is_one_error_line(tmp_path):
    config = tmp_path / ".config"

    def defconfig(tracker: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "kconfig.py"), "--config", str(config),
                               "defconfig", "lenet5-quick"], capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "TRACKER": tracker})

    assert defconfig("wandb,trackio").returncode == 0
    assert {"CONFIG_ENABLE_WANDB=y", "CONFIG_ENABLE_TRACKIO=y"} <= set(config.read_text().splitlines())
    assert defconfig("none").returncode == 0
    assert "# CONFIG_ENABLE_WANDB is not set" in config.read_text()
    bad = defconfig("tensorboard")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: TRACKER='tensorboard' is not valid; allowed: wandb, trackio, wandb,trackio or none"]


def test_tracker_project_defaults_to_model_and_checksum(tmp_path):
    from lib.config import load_settings

    tracking = load_settings(write_config(tmp_path, "lenet5-quick", ENABLE_TRACKIO="y")).runner.tracking
    assert tracking.trackio and not tracking.wandb
    model, checksum = tracking.project.split("-")
    assert model == "lenet5" and len(checksum) == 8
    assert load_settings(write_config(tmp_path, "lenet5-quick")).runner.tracking == TrackerSettings()


@pytest.mark.skipif(not HAVE_WANDB, reason=f"wandb {NOT_INSTALLED}")
def test_online_wandb_without_a_login_stops_before_any_run(tmp_path):
    online = TrackerSettings(wandb=True, project="p")
    no_login = {"HOME": str(tmp_path), "NETRC": str(tmp_path / "none")}
    with pytest.raises(UserError, match="no W&B login found"):
        check_trackers(online, no_login)
    check_trackers(online, {**no_login, "WANDB_MODE": "offline"})
    check_trackers(TrackerSettings(wandb=True, wandb_offline=True), no_login)
    check_trackers(online, {**no_login, "WANDB_API_KEY": "x" * 40})


# -- a real run into both local stores -------------------------------------------------------

def _wandb_records(path: Path):
    """The protobuf records of a .wandb file: wandb's own Record type inside LevelDB's log
    format (32 KiB blocks of crc32, length, kind-framed fragments) after a 7-byte header."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf, pos = buf + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL or LAST fragment: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """One tiny LeNet-5 run (4 steps) logged offline to every tracker installed here."""
    if not (HAVE_WANDB or HAVE_TRACKIO):
        pytest.skip(f"neither wandb nor trackio is {NOT_INSTALLED}")
    tmp = tmp_path_factory.mktemp("tracked")
    config = write_config(tmp, "ci-quick", LENET5_TRAIN_LIMIT="256", LENET5_TEST_LIMIT="128", NUM_EPOCHS="1",
                          OPTIMIZER_MODE_SINGLE="y", OPTIMIZER_SELECT_ADAMW="y", PRUNING_MODE_SINGLE="y",
                          PRUNING_SELECT_MAGNITUDE="y", TARGET_SPARSITY='"0.5"', SPARSITY_ENABLE_90="n",
                          PRUNING_RAMP_FIT="y", PRUNING_WARMUP="1", PRUNING_FREQUENCY="1",
                          ENABLE_WANDB="y" if HAVE_WANDB else "n", ENABLE_TRACKIO="y" if HAVE_TRACKIO else "n",
                          WANDB_OFFLINE="y", TRACKER_PROJECT='"tiny"',
                          RESULTS_ROOT=f'"{tmp / "results"}"', DATA_DIR=f'"{tmp / "data"}"')
    proc = run_script(ROOT / "scripts" / "matrix.py", "run", "--config", config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (results,) = [p for p in (tmp / "results").iterdir() if (p / "matrix.json").is_file()]
    assert "tracker failed" not in (results / RUN / "output.log").read_text()
    return results, json.loads((results / RUN / "metrics.json").read_text())


@pytest.mark.slow  # a matrix run with trackers (tracked_run)
@pytest.mark.skipif(not HAVE_WANDB, reason=f"wandb {NOT_INSTALLED}")
def test_wandb_offline_files_hold_config_steps_and_final_metrics(tracked_run):
    results, metrics = tracked_run
    (wandb_file,) = glob.glob(str(results / RUN / "wandb" / "offline-run-*" / "*.wandb"))
    records = list(_wandb_records(Path(wandb_file)))
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.display_name, run.run_group) == ("tiny", RUN, results.name)
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["run_id"] == RUN and config["seed"] == 1 and config["hyperparams"]["training"]["epochs"] == 1
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    losses = {h["_step"]: h["train/loss"] for h in history if "train/loss" in h}
    assert sorted(losses) == [1, 2, 3, 4]  # every step (no LOG_EVERY), sent at the evaluation
    final = history[-1]
    assert final["final/best_accuracy_pct"] == pytest.approx(metrics["best_accuracy_pct"])
    assert final["final/sparsity_pct"] == pytest.approx(metrics["sparsity"]["global_pct"])
    assert final["eval/test_accuracy_pct"] == pytest.approx(metrics["final_accuracy_pct"])
    assert "memory/weights_bytes" in final
    assert not (ROOT / "wandb").exists()  # offline files under the run folder, never the working directory


@pytest.mark.slow  # a matrix run with trackers (tracked_run)
@pytest.mark.skipif(not HAVE_TRACKIO, reason=f"trackio {NOT_INSTALLED}")
def test_trackio_local_store_holds_config_steps_and_final_metrics(tracked_run):
    results, metrics = tracked_run
    with sqlite3.connect(results / "trackio" / "tiny.db") as db:
        rows = [(step, json.loads(blob)) for step, blob in
                db.execute("SELECT step, metrics FROM metrics WHERE run_name = ? ORDER BY id", (RUN,))]
        (config,) = [json.loads(blob) for (blob,) in db.execute("SELECT config FROM configs WHERE run_name = ?",
                                                                 (RUN,))]
    assert config["run_id"] == RUN and config["_Group"] == results.name
    assert sorted(step for step, row in rows if "train/loss" in row) == [1, 2, 3, 4]
    final = {k: v for _, row in rows for k, v in row.items()}
    assert final["final/best_accuracy_pct"] == pytest.approx(metrics["best_accuracy_pct"])
    assert final["eval/sparsity_pct"] == pytest.approx(metrics["sparsity"]["global_pct"])


@pytest.mark.slow  # a matrix run with trackers (tracked_run)
@pytest.mark.skipif(not HAVE_TRACKIO, reason=f"trackio {NOT_INSTALLED}")
def test_trackio_colour_codes_stay_out_of_output_log(tracked_run):
    """Trackio prints `ESC[1mESC[38;5;208mtrackio show ...ESC[0m` whatever the terminal; the runner drops
    escape sequences on the way to output.log (lib/run/output_log.py), and the line itself stays."""
    results, _ = tracked_run
    log = (results / RUN / "output.log").read_bytes()
    assert b'trackio show --project "tiny"' in log and b"\x1b" not in log


# -- make continue on a directory from elsewhere ----------------------------------------------

def _foreign_dir(tmp_path: Path, **trackers: str) -> Path:
    """A finished one-run result directory whose config.txt logs to trackers another lab named."""
    from result_dirs import classifier_metrics, gpu_stats, write_matrix, write_run
    from specs import make_spec

    (tmp_path / "theirs").mkdir()
    theirs = write_config(tmp_path / "theirs", "lenet5-quick", **trackers)
    results = tmp_path / "results"
    run = make_spec("lenet5_sgd_none").to_json()
    write_matrix(results, [run])
    write_run(results, run, "success", classifier_metrics(run, [90.0], 0.0), gpu_stats(300, 350, "cpu"))
    # a terminal escape and a bidirectional override where the caller wrote ESC and RLO
    (results / "config.txt").write_text(theirs.read_text().replace("ESC", "\x1b[2J").replace("RLO", "\u202e"))
    return results


@pytest.fixture
def continued(tmp_path, monkeypatch, capsys):
    """`make continue` of a directory up to the runner: the settings it would run with, and what it printed."""
    from conftest import script_module

    matrix_cli = script_module("matrix")
    taken: list = []
    monkeypatch.setattr(matrix_cli, "run_then_report", lambda results_dir, runs, settings: taken.append(settings))
    monkeypatch.setattr(matrix_cli, "check_trackers", lambda settings, env: None)

    def run(results: Path, config: Path) -> tuple[TrackerSettings, str]:
        taken.clear()
        matrix_cli.continue_matrix(str(results), config)
        out = capsys.readouterr()
        run.settings = taken[0]  # all the runner settings it would use
        return taken[0].tracking, out.out + out.err
    return run


def test_continue_never_logs_to_the_trackers_of_a_result_directory_from_elsewhere(tmp_path, continued):
    """config.txt of a downloaded directory named its W&B project and entity: continuing it without a
    .config sent our runs there. Trackers now come only from our own .config, and one note says which."""
    results = _foreign_dir(tmp_path, ENABLE_WANDB="y", ENABLE_TRACKIO="y",
                           TRACKER_PROJECT='"their-projectESCRLO"', WANDB_ENTITY='"their-lab"')
    assert "their-lab" in (results / "config.txt").read_text()
    before = tree_digest(results)

    used, printed = continued(results, tmp_path / "no-config-here")
    assert used == TrackerSettings()
    (note,) = [line for line in printed.splitlines() if "trackers recorded in" in line]
    assert note.startswith(f"note: experiment trackers recorded in {results / 'config.txt'}: wandb and trackio, "
                           'project "their-project\\x1b[2J\\u202e", W&B entity "their-lab"; not used: continuing '
                           "with none (no .config here")
    assert "\x1b" not in printed and "\u202e" not in printed

    ours = write_config(tmp_path, "lenet5-quick", ENABLE_TRACKIO="y", TRACKER_PROJECT='"ours"')
    used, printed = continued(results, ours)
    assert used == TrackerSettings(trackio=True, project="ours")
    (note,) = [line for line in printed.splitlines() if "trackers recorded in" in line]
    assert note.endswith('not used: continuing with those of .config: trackio, project "ours"')

    used, printed = continued(results, write_config(tmp_path, "lenet5-quick"))
    assert used == TrackerSettings() and printed.count("continuing with those of .config: none") == 1
    assert tree_digest(results) == before


def test_continue_with_the_recorded_trackers_in_our_own_config_says_nothing_about_them(tmp_path, continued):
    config = write_config(tmp_path, "lenet5-quick", ENABLE_TRACKIO="y", TRACKER_PROJECT='"ours"')
    results = _foreign_dir(tmp_path, ENABLE_TRACKIO="y", TRACKER_PROJECT='"ours"')
    used, printed = continued(results, config)
    assert used == TrackerSettings(trackio=True, project="ours") and "trackers recorded" not in printed


def test_continue_never_submits_where_a_result_directory_from_elsewhere_says(tmp_path, continued):
    """Without a .config, continuing took the executor and the Slurm settings of the directory's config.txt:
    another lab's account, partition and sbatch options (an `output=` path is a file Slurm writes). Now only
    the timeout and retries are the directory's; the rest is Kconfig's defaults, and one note says so."""
    from lib.config import default_runner

    results = _foreign_dir(tmp_path, EXECUTOR_SLURM="y", SLURM_PARTITION='"their-gpus"', RUN_TIMEOUT="777",
                           SLURM_EXTRA='"account=theirs output=/home/you/.bashrcESC"')
    recorded = (results / "config.txt").read_text()
    assert "CONFIG_EXECUTOR_SLURM=y" in recorded and "account=theirs" in recorded
    _, printed = continued(results, tmp_path / "no-config-here")
    used, defaults = continued.settings, default_runner()
    assert (used.executor, used.slurm_partition, used.slurm_extra) == (defaults.executor, "", defaults.slurm_extra)
    assert used.timeout_s == 777  # the experiment's own, kept
    (note,) = [line for line in printed.splitlines() if "not used: without a .config" in line]
    assert "executor 'slurm'" in note and "slurm_partition 'their-gpus'" in note
    assert "'account=theirs output=/home/you/.bashrc\\x1b[2J'" in note and "\x1b" not in printed

    ours = write_config(tmp_path, "lenet5-quick", EXECUTOR_SLURM="y", SLURM_PARTITION='"ours"')
    _, printed = continued(results, ours)
    assert (continued.settings.executor, continued.settings.slurm_partition) == ("slurm", "ours")
    assert continued.settings.slurm_extra == "" and "not used: without a .config" not in printed
