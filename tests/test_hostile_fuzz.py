"""Readers of other labs' result directories under a seeded fuzzer (tests/fuzz/), and one
regression test for each defect the fuzzing found. Each damage ends in a report (the bad run marked
by a warning naming its file) or one `error:` line, never a traceback, a hang or a large read, and
the input stays byte-identical."""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import ROOT
from fuzz.as_user import in_child_as, warm_up
from fuzz.case import run_case
from fuzz.entry_damage import KINDS
from fuzz.layouts import LEGACY, OWN, gpt2_checkpoint
from fuzz.readers import CLI_READERS
from fuzz.tree import cleanup
from result_dirs import tree_digest

from lib.errors import UserError
from lib.report.summary import write_reports
from lib.results.reader import load_results

RUN = "lenet5_adamw_magnitude_50"
SUMMARY = "resnet18_adam_movement_70/gpu_stats_resnet18_adam_movement_70_20250903_191025_summary.txt"


def _own(tmp_path, name: str = "results"):
    return shutil.copytree(OWN, tmp_path / name)


def _sparse(path, size: int, head: bytes = b"") -> None:
    """A file of `size` bytes that costs no disk: `head`, then zeros."""
    with open(path, "wb") as handle:
        handle.write(head)
        handle.truncate(size)


# the fuzzer ------------------------------------------------------------------------------------

# Damaged entries where readers expect a file, each kind on each layout, the files and readers taking turns.
ENTRY_TARGETS = {
    "own": ["matrix.json", "config.txt", f"{RUN}/run.json", f"{RUN}/result.json", f"{RUN}/metrics.json",
            f"{RUN}/gpu_stats.json", RUN],
    "legacy": ["all_results.json", "config.txt", "resnet18_adam_none/gpu_stats_resnet18_adam_none_20250903_180853.json",
               SUMMARY, "resnet18_adam_none"],
    "upstream_lm": ["all_results.json", "gpt2_adamwprune_bitter7_state_50/training_metrics.json",
                    "gpt2_adamwprune_bitter7_state_50/gpu_stats_gpt2_x_20250101_000000_summary.txt",
                    "resnet50_sgd_magnitude_90/gpu_stats_resnet50_x_20250101_000000.json"],
    "own_lm": ["gpt2_adamw_none_s1/checkpoints/best.pt", "gpt2_adamw_none_s1/run.json", "matrix.json",
               "gpt2_adamw_none_s1/result.json"],
}
ENTRY_READERS = {"own": ["report", "continue", "reproduce", "dry_run"], "legacy": ["report", "compare"],
                 "upstream_lm": ["report", "compare"], "own_lm": ["sample", "report", "continue", "reproduce"]}
ENTRY_CASES = [(layout, targets[i % len(targets)], kind, ENTRY_READERS[layout][i % len(ENTRY_READERS[layout])])
               for layout, targets in ENTRY_TARGETS.items() for i, kind in enumerate(KINDS)]


@pytest.mark.parametrize("layout, target, kind, reader", ENTRY_CASES)
def test_what_is_not_a_file_where_one_belongs_keeps_the_contract(tmp_path, layout, target, kind, reader):
    """A directory, FIFO, device, link (out of the directory, looping, dangling, to /dev/zero) or a huge
    sparse file in a file's place: a warning or one error, no hang, no large read, the input untouched."""
    outcome = run_case(0, tmp_path, layout, reader, timeout_s=60, put=(target, kind))
    assert not outcome.problems, outcome.line()


@pytest.mark.parametrize("seed", range(60))
def test_a_randomly_damaged_directory_keeps_the_contract(tmp_path, seed):
    """One to three random damages (bytes, JSON values of every type at any key, literals JSON lacks,
    names, entries of the wrong kind) to a real directory, then one of the six readers."""
    outcome = run_case(seed, tmp_path, timeout_s=60)
    assert not outcome.problems, outcome.line()


@pytest.mark.slow  # about a minute: 500 cases
def test_a_longer_fuzz_keeps_the_contract(tmp_path):
    problems = []
    for seed in range(1000, 1500):
        outcome = run_case(seed, tmp_path / str(seed), timeout_s=60)
        problems += [outcome.line()] if outcome.problems else []
    assert not problems, "\n".join(problems)


@pytest.mark.slow  # a subprocess per case
@pytest.mark.parametrize("reader", sorted(CLI_READERS))
def test_the_commands_on_damaged_directories_end_in_a_report_or_one_error(tmp_path, reader):
    problems = []
    for seed in range(8):
        outcome = run_case(seed, tmp_path / str(seed), reader=reader, timeout_s=150)
        problems += [outcome.line()] if outcome.problems else []
    assert not problems, "\n".join(problems)


@pytest.mark.slow  # warms every reader up first, then a fork per case
@pytest.mark.skipif(os.geteuid() != 0, reason="reads as another user, which needs root")
def test_fuzz_with_files_we_may_not_read_keeps_the_contract():
    """As another user, so that mode-000 damage bites (root reads every file)."""
    warm_up()
    problems = []
    for seed in range(2000, 2150):
        with tempfile.TemporaryDirectory() as folder:
            outcome = run_case(seed, Path(folder), timeout_s=60, as_user=65534)
            cleanup(Path(folder))
        problems += [outcome.line()] if outcome.problems else []
    assert not problems, "\n".join(problems)


# defects found ------------------------------------------------------------------------------

def test_a_result_file_over_the_size_limit_is_refused_unread(tmp_path, capsys):
    """A 3 GiB sparse result.json was read whole (6 GiB of memory, 30 s) before json refused it."""
    results = _own(tmp_path)
    path = results / RUN / "result.json"
    _sparse(path, 200 << 20, b'{"status": "success", "x": "')
    before = tree_digest(results)
    table = load_results(results)
    assert table.loc[0, "status"] == "missing"
    assert f"warning: {path}: 209,715,200 bytes, more than the 128 MiB a result file may have; not read" \
        in capsys.readouterr().err
    assert tree_digest(results) == before


@pytest.mark.parametrize("damage, says", [
    (lambda path, secret: _sparse(path, 200 << 20, path.read_bytes()),
     "209,715,200 bytes, more than the 1 MiB a result file may have; not read"),
    (lambda path, secret: (path.unlink(), path.symlink_to(secret)),
     "a symbolic link out of the result directory; not read"),
], ids=["too large", "linked out"])
def test_upstream_memory_summary_too_large_or_linked_out_is_not_read(tmp_path, capsys, damage, says):
    """An upstream gpu_stats summary text was read whole whatever its size (a 3 GiB one: 6 GiB of
    memory), and through a link out of the directory, whose figures then showed as the run's."""
    results = shutil.copytree(LEGACY, tmp_path / "results")
    secret = tmp_path / "elsewhere.txt"
    secret.write_text("Memory Usage:\n  Average: 777.0 MiB\n  Maximum: 999.0 MiB\n")
    damage(results / SUMMARY, secret)
    before = tree_digest(results)
    table = load_results(results).set_index("run_id")
    assert table.loc["resnet18_adam_movement_70", "memory_source"] is None
    assert f"warning: {results / SUMMARY}: {says}" in capsys.readouterr().err
    assert tree_digest(results) == before


def test_continue_refuses_a_config_txt_larger_than_any_configuration(tmp_path):
    """kconfiglib read a 3 GiB config.txt whole (3 GiB of memory) when `make continue` loaded it."""
    from lib.config import load_kconfig

    results = _own(tmp_path)
    _sparse(results / "config.txt", 200 << 20, (OWN / "config.txt").read_bytes())
    with pytest.raises(UserError, match=r"config.txt: 209,715,200 bytes, more than the 1 MiB a configuration "
                                        "file may have; not read"):
        load_kconfig(results / "config.txt")


@pytest.mark.parametrize("damage, says", [
    (lambda path: _sparse(path, 200 << 20, path.read_bytes()), "more than the 1 MiB a result file may have"),
    (lambda path: (path.unlink(), os.mkfifo(path)), "not a regular file"),
], ids=["too large", "FIFO"])
def test_reproduce_copies_no_config_txt_that_is_not_one(tmp_path, damage, says):
    """make reproduce copied config.txt into its new directory whatever its size (3 GiB read into memory
    and written again); now a note says it is not copied, before the new directory exists."""
    from lib.reproduce import prepare, read_recorded_run, recorded_config

    results = _own(tmp_path)
    damage(results / "config.txt")
    before = tree_digest(results)
    notes = []
    assert recorded_config(results, notes.append) is None
    assert len(notes) == 1 and notes[0].startswith(f"note: {results / 'config.txt'}: ") and says in notes[0]
    assert notes[0].endswith("; the rerun gets no config.txt")
    new_dir = tmp_path / "rerun"
    new_dir.mkdir()
    prepare(results, read_recorded_run(results, RUN), new_dir, None)
    assert sorted(p.name for p in new_dir.iterdir()) == ["matrix.json"]
    assert tree_digest(results) == before


@pytest.mark.parametrize("layout, name", [("own", "matrix.json"), ("own", f"{RUN}/run.json"),
                                          ("upstream", "all_results.json")])
def test_directory_files_linked_out_of_it_are_not_read(tmp_path, capsys, layout, name):
    """matrix.json, all_results.json and run.json (read for provenance) were read through a link out of
    the result directory: another file's runs, test IDs or git commit showed in the report as this one's."""
    results = _own(tmp_path) if layout == "own" else shutil.copytree(LEGACY, tmp_path / "results")
    elsewhere = tmp_path / "elsewhere.json"
    if name == "all_results.json":
        elsewhere.write_text(json.dumps([{"test_id": "resnet18_sgd_none", "best_accuracy": 12.5}]))
    else:
        spec = {**json.loads((OWN / "matrix.json").read_text())["runs"][0], "run_id": "lenet5_sgd_none"}
        elsewhere.write_text(json.dumps({"runs": [spec], "spec": spec, "git_commit": "PRIVATE"}))
    (results / name).unlink()
    (results / name).symlink_to(elsewhere)
    before = tree_digest(results)
    write_reports(load_results(results), tmp_path / "out", "x", graphs=False)
    written = "".join(p.read_text() for p in (tmp_path / "out").iterdir() if p.is_file())
    assert "PRIVATE" not in written and "lenet5_sgd_none" not in written and "resnet18_sgd_none" not in written
    assert f"warning: {results / name}: a symbolic link out of the result directory; not read" \
        in capsys.readouterr().err
    assert tree_digest(results) == before


@pytest.mark.parametrize("name", ["matrix.json", f"{RUN}/result.json", f"{RUN}/run.json"])
def test_continue_and_reproduce_read_no_link_out_of_the_directory(tmp_path, name):
    """make continue took its runs from a matrix.json linked elsewhere and counted a run done by a
    result.json linked elsewhere; make reproduce reran the spec of a run.json linked elsewhere."""
    from lib.reproduce import read_recorded_run
    from lib.run.runner import load_matrix, pending

    results = _own(tmp_path)
    elsewhere = tmp_path / "elsewhere.json"
    spec = json.loads((OWN / "matrix.json").read_text())["runs"][0]
    elsewhere.write_text(json.dumps({"runs": [spec], "spec": spec, "status": "success"}))
    (results / name).unlink()
    (results / name).symlink_to(elsewhere)
    refused = f"{results / name}: a symbolic link out of the result directory; not read"
    if name == "matrix.json":
        with pytest.raises(UserError, match=re.escape(refused)):
            load_matrix(results)
    elif name.endswith("result.json"):
        assert [s.run_id for s in pending(results, load_matrix(results))] == [RUN]
    else:
        with pytest.raises(UserError, match=re.escape(refused)):
            read_recorded_run(results, RUN)


@pytest.mark.parametrize("key, value, says", [
    ("target_sparsity_pct", -(10**400), "target_sparsity_pct {} is not a number"),
    ("learning_rate", 10**400, "hyperparams.training.learning_rate: {} is not a finite number"),
    ("epochs", -(10**400), "hyperparams.training.epochs {} is not at least 1"),
], ids=["target", "learning rate", "epochs"])
def test_an_integer_too_large_for_a_float_in_a_matrix_is_one_error(key, value, says):
    """math.isfinite(10**400) raises OverflowError: make continue and make reproduce ended in a traceback
    on a matrix.json or run.json with such a number where a float belongs."""
    from lib.matrix import spec_from_entry

    entry = json.loads((OWN / "matrix.json").read_text())["runs"][0]
    if key in entry:
        entry[key] = value
    else:
        entry["hyperparams"]["training"][key] = value
    with pytest.raises(UserError) as caught:
        spec_from_entry(entry, "matrix.json: run 1")
    assert str(caught.value) == f"matrix.json: run 1 ({RUN}): " + says.format(repr(value)[:57] + "...")


@pytest.mark.parametrize("where, value", [
    ("duration_s", "abc"), ("duration_s", [1, 2]), ("duration_s", 10**400), ("duration_s", 1e308),
    ("duration_s", -5), ("status", {"a": 1}), ("spec.epochs", 10**400), ("spec.learning_rate", 10**400),
    ("spec", [1]), ("result", [1]),
], ids=lambda v: v if isinstance(v, str) else type(v).__name__)
def test_dry_run_estimate_skips_past_runs_that_make_no_sense(tmp_path, where, value):
    """The time estimate of `make test-matrix-dry-run` reads every result.json and run.json under the
    results root, other labs' directories included: a duration that was a string or a list, or a spec with
    an integer too large for a float, ended the dry run in a traceback."""
    from lib.run.plan import estimate_lines, find_past_runs
    from lib.spec import RunSpec

    good = _own(tmp_path / "root", "good")  # a sane past run beside the damaged one
    bad = _own(tmp_path / "root", "bad")
    result_path, run_path = bad / RUN / "result.json", bad / RUN / "run.json"
    result, record = json.loads(result_path.read_text()), json.loads(run_path.read_text())
    if where == "result":
        result = value
    elif where.startswith("spec."):
        record["spec"]["hyperparams"]["training"][where[5:]] = value
    elif where == "spec":
        record["spec"] = value
    else:
        result[where] = value
    result_path.write_text(json.dumps(result))
    run_path.write_text(json.dumps(record))
    past = find_past_runs(tmp_path / "root", {"lenet5"})
    assert past.count == (2 if where == "spec.epochs" else 1)  # the good run alone, or a sane run with odd epochs
    spec = RunSpec.from_json(json.loads((good / "matrix.json").read_text())["runs"][0])
    assert estimate_lines([spec], tmp_path / "root", 1)[0].startswith("Estimated time: 0:00:07 ")


def test_figures_near_the_float_limit_do_not_stop_the_report(tmp_path, capsys):
    """A curve of accuracies near +-1e308 (finite, so the reader keeps them) made the report's
    standard deviation raise OverflowError ((v - mean) ** 2), a traceback in make report."""
    from lib.report.stats import Estimate

    results = _own(tmp_path)
    path = results / RUN / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["epochs"] = [{**metrics["epochs"][0], "epoch": i, "test_accuracy_pct": v}
                         for i, v in enumerate([1e308, -1e308, 1e308], 1)]
    path.write_text(json.dumps(metrics))
    write_reports(load_results(results), tmp_path / "out", "x", graphs=False)
    assert (tmp_path / "out" / "report.md").is_file()
    assert Estimate.of([1e308, 1e308]).mean == 1e308 and Estimate.of([1e200, -1e200]).std == math.inf
    assert Estimate.of([1.0, 2.0, 4.0]) == Estimate(7 / 3, math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2
                                                                         + (4 - 7 / 3) ** 2) / 2), 3)


def _outcome(call) -> dict:
    """call()'s stderr and its UserError's message (None when it returned), or the type of any other exception."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            call()
        error = None
    except UserError as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
        error = f"{type(exc).__name__}: {exc}"
    return {"error": error, "stderr": stderr.getvalue()}


def _as_another_user(call) -> dict:
    """_outcome(call) as an unprivileged user: root reads every file, so mode 000 bites only others."""
    if os.geteuid() != 0:
        return _outcome(call)
    from lib.provenance import package_versions

    package_versions()  # its first call imports email.parser, from a folder the other user may not read
    return in_child_as(65534, lambda: _outcome(call))


@pytest.fixture
def shared_tmp():
    """A temporary folder another user may enter (pytest's tmp_path is root's alone when run as root)."""
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o777)
        yield Path(folder)


@pytest.mark.parametrize("layout, locked", [("own", RUN), ("upstream", "resnet18_adam_none"), ("own", ".")],
                         ids=["own run folder", "upstream run folder", "the directory"])
def test_folders_we_may_not_read_are_a_warning_or_one_error(shared_tmp, layout, locked):
    """Python 3.11's Path.is_file and Path.exists raise PermissionError inside a folder the user may not
    read: a run folder (or the whole directory) of mode 000 ended make report in a traceback."""
    results = shutil.copytree(OWN if layout == "own" else LEGACY, shared_tmp / "results")
    for path in [results, *results.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    (results / locked).chmod(0)
    out = shared_tmp / "out"
    out.mkdir()
    out.chmod(0o777)
    outcome = _as_another_user(lambda: write_reports(load_results(results), out, "x", graphs=False))
    (results / locked).chmod(0o755)
    if locked == ".":
        assert outcome["error"] == f"{results}: unreadable (Permission denied)"
    else:
        assert outcome["error"] is None and (out / "summary_report.txt").is_file()
        assert f"{results / locked}/" in outcome["stderr"] and "unreadable (Permission denied)" in outcome["stderr"]
        assert locked in (out / "summary_report.txt").read_text()  # the run is listed, its cells empty


@pytest.mark.parametrize("command", ["continue", "reproduce", "sample"])
def test_continue_reproduce_and_sample_on_files_we_may_not_read_are_one_error(shared_tmp, command):
    """The same PermissionError (or kconfiglib's _KconfigIOError for config.txt) in make continue,
    make reproduce and make sample."""
    from lib.config import load_kconfig
    from lib.reproduce import read_recorded_run
    from lib.train.checkpoint import load_weights, run_checkpoint

    results = shutil.copytree(OWN, shared_tmp / "results")
    for path in [results, *results.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    locked = results / ("config.txt" if command == "continue" else RUN)
    locked.chmod(0)
    call = {"continue": lambda: load_kconfig(locked), "reproduce": lambda: read_recorded_run(results, RUN),
            "sample": lambda: load_weights(run_checkpoint(results, RUN))}[command]
    outcome = _as_another_user(call)
    locked.chmod(0o755)
    says = {"continue": f"{locked}: unreadable (Permission denied)",
            "reproduce": f"{locked}/run.json: unreadable (Permission denied)",
            "sample": f"{locked}/checkpoints/best.pt: unreadable checkpoint (PermissionError: "}[command]
    assert outcome["error"].startswith(says)


@pytest.mark.parametrize("name", ["lenet5_x\x1b[2J\nwarning: forged", "lenet5_\u202ex_enon"])
def test_a_folder_name_cannot_forge_or_reorder_warning_lines(tmp_path, name):
    """The folder name went raw into its `warning:` line (and into `error:` lines): a newline added a
    line of its own, an ESC sequence drove the terminal, U+202E showed the rest of the line reversed."""
    from conftest import no_traceback, run_script

    results = _own(tmp_path)
    (results / "matrix.json").unlink()
    (results / RUN).rename(results / name)
    proc = run_script(ROOT / "scripts" / "report.py", results, "--out", tmp_path / "out")
    no_traceback(proc)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert [line.split(":")[0] for line in lines] == ["warning", "error"]
    assert not re.search("[\x00-\x1f\x7f-\x9f\u202e]", proc.stderr.replace("\n", ""))
    assert "\\x0awarning: forged" in lines[0] or "\\u202ex_enon" in lines[0]


def test_continue_without_results_passes_over_a_folder_we_may_not_read(shared_tmp):
    """`make continue` without RESULTS looks for the newest matrix directory; one of mode 000 among them
    (a copy from elsewhere) raised PermissionError from Path.is_file."""
    from lib.run.runner import newest_matrix_dir

    older = shutil.copytree(OWN, shared_tmp / "20250101_000000")
    newer = shutil.copytree(OWN, shared_tmp / "20250202_000000")
    for path in [older, *older.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    newer.chmod(0)
    def newest() -> None:
        print(newest_matrix_dir(shared_tmp), file=sys.stderr)  # the other user's answer comes back as stderr

    outcome = _as_another_user(newest)
    newer.chmod(0o755)
    assert outcome == {"error": None, "stderr": f"{older}\n"}


def test_lone_surrogates_in_json_or_in_a_folder_name_do_not_stop_a_report(tmp_path, capsys):
    """JSON may write a lone surrogate ("\\ud800"), which no UTF-8 text holds: in a gpu_stats source it
    stopped pandas (pyarrow strings), in a log line or a setting the UTF-8 write of the report; a folder
    named with bytes that are not UTF-8 gives one too (Python's surrogateescape)."""
    from lib.report.compare import compare_tables
    from lib.report.compare_render import write_compare

    name = os.fsdecode(b"lab-\xff")  # 'lab-\udcff'
    results = _own(tmp_path, name)
    for rel, key, value in ((f"{RUN}/gpu_stats.json", "source", "nvml\ud800"),
                            (f"{RUN}/result.json", "log_tail", ["boom \udfff"])):
        data = json.loads((results / rel).read_text())
        (results / rel).write_text(json.dumps({**data, key: value, "status": "failed"}))
    matrix = json.loads((results / "matrix.json").read_text())
    matrix["runs"][0]["hyperparams"]["model"]["odd\ud800"] = "\ud800"
    (results / "matrix.json").write_text(json.dumps(matrix))
    before = tree_digest(results)
    table = load_results(results)
    assert table.loc[0, "memory_source"] == "nvml\ufffd" and table.loc[0, "log_tail"] == ["boom \ufffd"]
    write_reports(table, tmp_path / "out", str(results), graphs=False)
    write_compare(compare_tables(table, load_results(OWN), "a", "b"), tmp_path / "compare")
    summary = (tmp_path / "out" / "summary_report.txt").read_text()
    assert f"From: {tmp_path}/lab-\\udcff" in summary and "| boom \ufffd" in summary
    assert tree_digest(results) == before


@pytest.mark.parametrize("name", ["lab\nWarnings", os.fsdecode(b"lab-\xff")], ids=["newline", "not UTF-8"])
def test_warnings_listed_in_the_summary_are_escaped(tmp_path, name):
    """summary_report.txt lists every warning, each naming a path: a result directory named with a newline
    added lines to it, one named with bytes that are not UTF-8 stopped its UTF-8 write."""
    results = _own(tmp_path, name)
    (results / RUN / "gpu_stats.json").write_text("{")
    write_reports(load_results(results), tmp_path / "out", "x", graphs=False)
    summary = (tmp_path / "out" / "summary_report.txt").read_text()
    (warning,) = [line for line in summary.splitlines() if "gpu_stats.json: not valid JSON" in line]
    assert warning.startswith(f"  {tmp_path}/lab") and ("lab\\x0aWarnings" in warning or "lab-\\udcff" in warning)


def test_a_memory_device_name_reaches_no_report_raw(tmp_path):
    """gpu_stats.json's device string went raw into summary_report.txt (memory by optimizer and
    device), ESC sequences and U+202E included."""
    results = _own(tmp_path)
    path = results / RUN / "gpu_stats.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "device": "gpu\x1b[2J\u202e" + "x" * 100}))
    table = load_results(results)
    assert table.loc[0, "memory_device"] == "gpu\\x1b[2J\\u202e" + "x" * 32  # 40 characters, escaped
    write_reports(table, tmp_path / "out", "x", graphs=False)
    for name in ("summary_report.txt", "report.md"):
        assert not re.search("[\x1b\u202e]", (tmp_path / "out" / name).read_text())


def test_compare_with_absurd_memory_figures_prints_nothing_raw(tmp_path):
    """A memory figure of -1e308 and a device named with an ESC sequence in one side's gpu_stats.json:
    numpy's overflow warnings from drawing the delta graph reached the terminal as lines of their own
    (the comparison drew its graph without the report's guard), and the device name went raw into
    compare.md and compare.txt."""
    import warnings

    from lib.report.compare import compare_tables
    from lib.report.compare_render import write_compare

    results = _own(tmp_path)
    path = results / RUN / "gpu_stats.json"
    stats = json.loads(path.read_text())
    stats["summary"]["peak_mib"] = stats["summary"]["mean_mib"] = -1e308
    stats["device"] = "gpu\x1b[2J"
    path.write_text(json.dumps(stats))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_compare(compare_tables(load_results(results), load_results(OWN), "a", "b"), tmp_path / "out")
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []
    for name in ("compare.md", "compare.txt"):
        text = (tmp_path / "out" / name).read_text()
        assert "\x1b" not in text and "gpu\\x1b[2J" in text


def test_reproduce_prints_no_control_characters_from_run_json():
    """make reproduce prints the recorded git commit and package versions before it reruns: a run.json
    from elsewhere with an ESC sequence or a newline in them reached the terminal raw."""
    from lib.provenance import recorded
    from lib.reproduce import RecordedRun, differences
    from lib.spec import RunSpec

    spec = RunSpec.from_json(json.loads((OWN / "matrix.json").read_text())["runs"][0])
    provenance = recorded({"git_commit": "abc\x1b[2J", "host": "lab\nnote: forged", "python": "3.11\u202e",
                           "packages": {"torch": "2.0\x1b]0;title\x07", "numpy": "\ud800", "scipy": "1.0"}})
    assert provenance == {"git_commit": None, "git_dirty": None, "host": None, "packages": {"scipy": "1.0"}}
    lines = differences(RecordedRun(spec, provenance, None, None))
    assert not any(re.search("[\x00-\x1f\x7f-\x9f\u202e\ud800-\udfff]", line) for line in lines)
    assert "git commit: not recorded by the run" in lines


def test_continue_shows_a_recorded_setting_without_its_control_characters(tmp_path):
    """make continue names the settings where .config differs from the recorded config.txt: a string
    value there with ESC sequences (a terminal title, a screen clear) was printed raw."""
    from lib.run.runner import config_changes

    results = _own(tmp_path)
    text = (results / "config.txt").read_text()
    (results / "config.txt").write_text(text.replace('CONFIG_DATA_DIR="/tmp/lab/data"',
                                                     'CONFIG_DATA_DIR="/x\x1b[2J\x1b]0;pwn\x07' + "y" * 100 + '"'))
    (change,) = config_changes(OWN / "config.txt", results / "config.txt")
    assert change == "DATA_DIR: /x\\x1b[2J\\x1b]0;pwn\\x07" + "y" * 63 + "... -> /tmp/lab/data"


@pytest.mark.parametrize("iter_num", ["3\x1b[2J\nnote: forged", 10**40, True, -1])
def test_sample_shows_no_text_of_the_checkpoint_as_its_step(tmp_path, capsys, iter_num):
    """make sample prints the step a checkpoint was saved at: a checkpoint from elsewhere whose iter_num was
    a string (weights-only loading allows strings) put its ESC sequences and newlines on the terminal."""
    import torch
    from conftest import script_module

    ckpt = tmp_path / "ckpt.pt"
    gpt2_checkpoint(ckpt)
    torch.save({**torch.load(ckpt, weights_only=True), "iter_num": iter_num}, ckpt)
    script_module("sample").main({"CKPT": str(ckpt), "MAX_NEW_TOKENS": "1", "PROMPT": "!", "DEVICE": "cpu"})
    assert capsys.readouterr().err.splitlines() == [f"checkpoint: {ckpt} (step ?, 3,416 parameters)"]
