"""A seeded mutator of result directories, and the contract every reader of them keeps.

Result directories and checkpoints come from other labs (docs/results-format.md,
"Reading directories from elsewhere"). This module starts from real ones (the
upstream fixture under tests/fixtures/legacy, a directory our own runner wrote
under tests/fixtures/own, and small language-model ones built with
tests/result_dirs) and damages them the way a copy, a disk or a stranger can:
truncated and invalid UTF-8 bytes, invalid JSON, a hostile value of every JSON
type at any key, NaN/Infinity literals, duplicate keys, deep nesting, huge and
sparse files, long and odd names, directories, FIFOs, devices and symbolic links
(out of the directory, looping, dangling) where files are expected.

Each reader (`make report`, `make compare`, the reading half of `make continue`
and `make reproduce`, `make sample`, the time estimate of `make
test-matrix-dry-run`) must then keep one contract: no exception but UserError
(one line), no hang, no large read, only `warning:`/`note:` lines on stderr, and
the input tree byte-identical afterwards.

tests/test_hostile_fuzz.py runs a fixed set of seeds; for a longer search:

    .venv/bin/python tests/hostile_fuzz.py --seconds 600 [--seed N] [--readers report,continue]

which prints every case that breaks the contract with the seed that repeats it.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import random
import re
import shutil
import signal
import stat
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from result_dirs import gpu_stats, lm_metrics, spec, upstream_lm_dir, write, write_matrix, write_run  # noqa: E402

LEGACY = ROOT / "tests/fixtures/legacy/test_matrix_results_20250903_180836"
OWN = ROOT / "tests/fixtures/own/20261130_225800"
HUGE_BYTES = 3 << 30  # a sparse file this large costs no disk; reading it whole would cost 3 GiB of memory
MAX_RSS_GROWTH = 400 << 20  # a reader whose memory grows more than this read something whole it should not


# seed directories ------------------------------------------------------------------

TINY_GPT = {"block_size": 16, "vocab_size": 300, "n_layer": 1, "n_head": 2, "n_embd": 8, "dropout": 0.0,
            "bias": True}


def _gpt2_checkpoint(path: Path) -> None:
    import torch

    from gpt2.model import GPT, GPTConfig

    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_args": TINY_GPT, "model": GPT(GPTConfig(**TINY_GPT)).state_dict(), "iter_num": 3}, path)


def seed_legacy(root: Path) -> Path:
    shutil.copytree(LEGACY, root, symlinks=True)
    return root


def seed_own(root: Path) -> Path:
    shutil.copytree(OWN, root, symlinks=True)
    return root


def seed_own_lm(root: Path) -> Path:
    """Our layout: a GPT-2 run with a checkpoint (for `make sample`) and a failed one, two seeds."""
    specs = [spec("gpt2", "adamw", "none", 0, seed=s, tag_seed=True) for s in (1, 2)]
    specs.append(spec("gpt2", "adamwprune", "state", 50, variant="bitter7"))
    write_matrix(root, specs)
    write_run(root, specs[0], "success", lm_metrics(specs[0], [4.0, 3.5, 3.4], 0.0), gpu_stats(900, 1000))
    write_run(root, specs[1], "success", lm_metrics(specs[1], [4.1, 3.6, 3.5], 0.0), gpu_stats(910, 1010))
    write_run(root, specs[2], "failed", None, None, ["Traceback (most recent call last):", "boom"])
    shutil.copy(OWN / "config.txt", root / "config.txt")
    _gpt2_checkpoint(root / specs[0]["run_id"] / "checkpoints" / "best.pt")
    return root


def seed_upstream_lm(root: Path) -> Path:
    """Upstream's other layout: an empty all_results.json, figures in training_metrics.json."""
    upstream_lm_dir(root)
    write(root / "resnet50_sgd_magnitude_90" / "gpu_stats_resnet50_x_20250101_000000.json",
          [{"memory_used": 100.0 + i, "elapsed_seconds": float(i), "gpu_type": "nvidia"} for i in range(5)])
    return root


SEEDS: dict[str, Callable[[Path], Path]] = {
    "legacy": seed_legacy, "own": seed_own, "own_lm": seed_own_lm, "upstream_lm": seed_upstream_lm}


# the input's digest ---------------------------------------------------------------

def tree_digest(root: Path) -> dict[str, str]:
    """Every entry under `root` (links not followed, FIFOs and devices never opened) with its kind,
    mode and, for a regular file, size and content hash; equal digests mean an untouched tree."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(folder) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                found[rel] = "link:" + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                found[rel] = f"{st.st_mode:o}:{st.st_size}:{_file_hash(path, st.st_size)}"
            else:
                found[rel] = f"{stat.S_IFMT(st.st_mode):o}:{st.st_mode & 0o7777:o}"
    return found


def _file_hash(path: Path, size: int) -> str:
    if size > 64 << 20:  # the sparse huge files: their size says enough, reading them here would be slow
        return "huge"
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except PermissionError:  # a mode-000 file when not root: its mode is in the digest
        return "unreadable"
    return digest.hexdigest()


# mutations ------------------------------------------------------------------------------

HOSTILE_NAMES = ["..", ".", "a/b", "x" * 300, "lenet5_sgd_none\n# forged", "lenet5_\u202esgd_none", "CON",
                 "aux.json", "-rf", "lenet5_sgd_none\x1b[2J", " lenet5 ", "lenet5_sgd_none\x00", "é" * 80,
                 "resnet18_adam_none/../../x", "", "NUL", "lenet5_sgd_none_s99999999999",
                 os.fsdecode(b"lenet5_\xff_none")]  # bytes that are not UTF-8: a lone surrogate in Python
# Names of the result directory itself (it comes from elsewhere too), each a valid file name.
ROOT_NAMES = ["run_dir", "run dir $(touch x) `y`", "run\ndir", "run\x1b[2Jdir", "run\u202edir",
              os.fsdecode(b"run\xffdir"), "-run_dir", "r" * 200]
HOSTILE_VALUES: list[Any] = [
    None, True, False, 0, -1, -(10**18), 10**400, -(10**400), 1e308, -1e308, 5e-324, math.nan, math.inf,
    -math.inf, "", "x" * 100_000, "high", "NaN", "1e999", "\x00\x1b[2J\n", "\ud800", "\u202e", [], {}, [None],
    [1, "a", None, [], {}], {"": None}, {"a": {"b": {"c": [1]}}}, list(range(2000)), 3.5, 100.0, 2**63,
    *HOSTILE_NAMES[:6]]


def _files(root: Path, predicate: Callable[[Path], bool] = lambda p: True) -> list[Path]:
    out = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink() and predicate(path):
                out.append(path)
    return out


def _dirs(root: Path) -> list[Path]:
    return sorted(Path(folder) / d for folder, dirs, _ in os.walk(root) for d in dirs
                  if not (Path(folder) / d).is_symlink())


def _json_files(root: Path) -> list[Path]:
    return _files(root, lambda p: p.suffix == ".json" and p.stat().st_size < 1 << 20)


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (ValueError, RecursionError):
        return None


def _locations(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a JSON value (capped, so large sample lists do not dominate)."""
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found += _locations(value, prefix + (key,))
    elif isinstance(data, list):
        for i, value in enumerate(data[:6]):
            found += _locations(value, prefix + (i,))
    return found


def _set(data: Any, where: tuple, value: Any) -> Any:
    if not where:
        return value
    data[where[0]] = _set(data[where[0]], where[1:], value)
    return data


def _dump(path: Path, data: Any, rng: random.Random) -> None:
    # NaN and Infinity as Python writes them: literals JSON lacks but many writers emit
    text = json.dumps(data, allow_nan=True, ensure_ascii=rng.random() < 0.5)
    path.write_text(text, errors="surrogatepass")


def m_json_value(root: Path, rng: random.Random) -> str:
    paths = [p for p in _json_files(root) if _load(p) is not None]
    if not paths:
        return m_bytes(root, rng)
    path = rng.choice(paths)
    data = _load(path)
    where = rng.choice(_locations(data))
    value = rng.choice(HOSTILE_VALUES)
    _dump(path, _set(data, where, value), rng)
    return f"{path.relative_to(root)} at {list(where)} = {_short(value)}"


def m_json_drop(root: Path, rng: random.Random) -> str:
    paths = [p for p in _json_files(root) if _load(p) is not None]
    if not paths:
        return m_bytes(root, rng)
    path = rng.choice(paths)
    data = _load(path)
    where = [w for w in _locations(data) if w]
    if not where:
        return m_bytes(root, rng)
    at = rng.choice(where)
    parent = data
    for key in at[:-1]:
        parent = parent[key]
    del parent[at[-1]]
    _dump(path, data, rng)
    return f"{path.relative_to(root)}: {list(at)} removed"


def m_json_text(root: Path, rng: random.Random) -> str:
    """Changes a JSON writer would not make: literals, duplicate keys, huge numbers, nesting."""
    paths = _json_files(root)
    if not paths:
        return m_bytes(root, rng)
    path = rng.choice(paths)
    text = path.read_text(errors="replace")
    kind = rng.choice(["literal", "duplicate", "digits", "nest", "nest_object", "bom", "trailing"])
    if kind == "literal":
        numbers = list(re.finditer(r"(?<![\w.\"])-?\d+(\.\d+)?([eE][-+]?\d+)?", text))
        if numbers:
            m = rng.choice(numbers)
            text = text[:m.start()] + rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "-0", "1E400"]) \
                + text[m.end():]
    elif kind == "duplicate":
        keys = list(re.finditer(r'"(\w+)":\s*', text))
        if keys:
            m = rng.choice(keys)
            text = text[:m.start()] + f'"{m.group(1)}": {json.dumps(rng.choice(HOSTILE_VALUES[:20]))}, ' \
                + text[m.start():]
    elif kind == "digits":
        numbers = list(re.finditer(r"(?<![\w.\"])\d+", text))
        if numbers:
            m = rng.choice(numbers)
            text = text[:m.start()] + "9" * rng.choice([400, 4300, 5000, 100_000]) + text[m.end():]
    elif kind == "nest":
        text = "[" * 200_000 + "]" * 200_000
    elif kind == "nest_object":
        text = '{"a":' * 50_000 + "1" + "}" * 50_000
    elif kind == "bom":
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
        return f"{path.relative_to(root)}: BOM"
    else:
        text = text + rng.choice(["garbage", "}", "\x00", "\n{}"])
    path.write_text(text, errors="surrogatepass")
    return f"{path.relative_to(root)}: {kind}"


def m_bytes(root: Path, rng: random.Random) -> str:
    paths = _files(root, lambda p: p.stat().st_size < 1 << 22)
    if not paths:
        return "nothing"
    path = rng.choice(paths)
    data = bytearray(path.read_bytes())
    kind = rng.choice(["truncate", "flip", "utf8", "empty", "nul", "crlf"])
    if kind == "truncate" and data:
        del data[rng.randrange(len(data)):]
    elif kind == "flip" and data:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == "utf8":
        at = rng.randrange(len(data) + 1)
        data[at:at] = rng.choice([b"\xff\xfe", b"\xed\xa0\x80", b"\xc3", b"\xf4\x90\x80\x80", b"\x80"])
    elif kind == "empty":
        data = bytearray()
    elif kind == "nul":
        data = bytearray(b"\x00" * max(len(data), 1))
    else:
        data = bytearray(bytes(data).replace(b"\n", b"\r\n"))
    path.write_bytes(bytes(data))
    return f"{path.relative_to(root)}: {kind}"


def _secret(root: Path) -> Path:
    """A private file beside the result directory: its content must never reach a report."""
    secret = root.parent / "private"
    secret.mkdir(exist_ok=True)
    (secret / "id_rsa").write_text("PRIVATE KEY")
    # read as a result.json, a matrix.json or a run.json, each would show PRIVATE somewhere in a report
    (secret / "result.json").write_text(json.dumps({
        "status": "failed", "log_tail": ["PRIVATE LOG"], "test_id": "PRIVATE", "config_name": "PRIVATE",
        "runs": [{**spec("lenet5", "sgd", "none", 0), "run_id": "lenet5_PRIVATE_none"}],
        "spec": {**spec("lenet5", "sgd", "none", 0), "run_id": "lenet5_PRIVATE_none"}, "git_commit": "PRIVATE"}))
    (secret / "list.json").write_text(json.dumps([{"test_id": "resnet18_PRIVATE_none", "best_accuracy": 1.0}]))
    fifo = secret / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    return secret


def _target(root: Path, rng: random.Random) -> Path:
    """An existing file, or a name readers look for in an existing folder."""
    candidates = _files(root) + [d / name for d in [root, *_dirs(root)] for name in
                                 ("result.json", "metrics.json", "gpu_stats.json", "run.json", "matrix.json",
                                  "config.txt", "all_results.json", "training_metrics.json",
                                  "gpu_stats_x_20250101_000000.json", "gpu_stats_x_20250101_000000_summary.txt",
                                  "checkpoints/best.pt")]
    return rng.choice(candidates)


def _replace(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):  # a file, link, FIFO or device
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)


SKIP_KINDS: set[str] = set()  # the driver's --skip-kinds
KINDS = ("dir", "fifo", "device", "link_out", "link_out_json", "link_out_list", "link_fifo_out", "link_loop",
         "link_dangling", "link_dev_zero", "link_in", "huge", "huge_json", "huge_line")


def m_kind(root: Path, rng: random.Random) -> str:
    """A directory, FIFO, device, symbolic link or huge sparse file where a file is expected."""
    path = _target(root, rng)
    return put_kind(root, path.relative_to(root), rng.choice([k for k in KINDS if k not in SKIP_KINDS]), rng)


def put_kind(root: Path, rel: Path | str, kind: str, rng: random.Random) -> str:
    """Replace root/rel (a file or not yet anything) by an entry of `kind` (KINDS)."""
    path = root / rel
    secret = _secret(root)
    _replace(path)
    if kind == "dir":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        try:
            os.mknod(path, stat.S_IFCHR | 0o644, os.makedev(1, 5))  # /dev/zero: endless bytes
        except OSError:
            path.symlink_to("/dev/zero")
    elif kind == "link_out":
        path.symlink_to(secret / "id_rsa")
    elif kind == "link_out_json":
        path.symlink_to(secret / "result.json")
    elif kind == "link_out_list":
        path.symlink_to(secret / "list.json")
    elif kind == "link_fifo_out":
        path.symlink_to(secret / "fifo")
    elif kind == "link_loop":
        path.symlink_to(path.name)
    elif kind == "link_dangling":
        path.symlink_to("does-not-exist")
    elif kind == "link_dev_zero":
        path.symlink_to("/dev/zero")
    elif kind == "link_in":
        others = [p for p in _files(root) if p != path]
        path.symlink_to(os.path.relpath(rng.choice(others), path.parent) if others else ".")
    elif kind.startswith("huge"):
        with open(path, "wb") as handle:
            if kind == "huge_json":
                handle.write(b'{"runs": [' if path.name == "matrix.json" else b'[{"a": "')
            elif kind == "huge_line":
                handle.write(b"CONFIG_X=y\n# " if path.suffix == ".txt" else b'{"status": "success", "x": "')
            handle.truncate(HUGE_BYTES)  # sparse: no disk, all zeros
    else:
        raise ValueError(kind)
    return f"{rel}: {kind}"


def m_names(root: Path, rng: random.Random) -> str:
    """A run folder renamed, or a stray entry with a hostile name, or a name field set to one."""
    name = rng.choice(HOSTILE_NAMES)
    kind = rng.choice(["rename", "stray", "field"])
    folders = [d for d in root.iterdir() if d.is_dir() and not d.is_symlink()]
    if kind == "rename" and folders and _fs_name(name):
        folder = rng.choice(folders)
        folder.rename(root / name)
        return f"{folder.name} renamed {name!r}"
    if kind == "stray" and _fs_name(name):
        stray = root / rng.choice([name, f"resnet18_{name}", f"lenet5_{name}"])[:250]
        if not stray.exists():
            rng.choice([stray.mkdir, lambda: os.mkfifo(stray), lambda: stray.write_text("{}")])()
        return f"stray {stray.name!r}"
    paths = [p for p in _json_files(root) if isinstance(_load(p), (dict, list))]
    if not paths:
        return "nothing"
    path = rng.choice(paths)
    data = _load(path)
    where = [w for w in _locations(data) if w and w[-1] in ("run_id", "test_id", "model", "optimizer",
                                                           "pruning", "pruning_method", "variant", "gpu_type",
                                                           "device", "source")]
    if not where:
        return "nothing"
    at = rng.choice(where)
    _dump(path, _set(data, at, name), rng)
    return f"{path.relative_to(root)} at {list(at)} = {name!r}"


def _fs_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\x00" not in name \
        and len(os.fsencode(name)) < 250


def m_remove(root: Path, rng: random.Random) -> str:
    paths = _files(root)
    if not paths:
        return "nothing"
    path = rng.choice(paths)
    path.unlink()
    return f"{path.relative_to(root)} removed"


def m_mode(root: Path, rng: random.Random) -> str:
    """A file or folder nobody may read (only bites when the reader is not root)."""
    paths = _files(root) + _dirs(root)
    if not paths:
        return "nothing"
    path = rng.choice(paths)
    path.chmod(0)
    return f"{path.relative_to(root)}: mode 000"


MUTATIONS: dict[str, Callable[[Path, random.Random], str]] = {
    "json_value": m_json_value, "json_drop": m_json_drop, "json_text": m_json_text, "bytes": m_bytes,
    "kind": m_kind, "names": m_names, "remove": m_remove, "mode": m_mode}
WEIGHTS = {"json_value": 5, "json_drop": 2, "json_text": 3, "bytes": 3, "kind": 4, "names": 2, "remove": 1,
           "mode": 1}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


def mutate(root: Path, rng: random.Random, count: int, allow_mode: bool = False) -> list[str]:
    """`count` random damages; mode 000 only when allowed (the reader runs as another user)."""
    names = [n for n in MUTATIONS if allow_mode or n != "mode"]
    chosen = rng.choices(names, weights=[WEIGHTS[n] for n in names], k=count)
    done = []
    for name in chosen:
        done.append(f"{name}: {MUTATIONS[name](root, rng)}")
    return done


# readers -------------------------------------------------------------------------------

CLEAN_CONFIG = OWN / "config.txt"


def read_report(root: Path, work: Path, rng: random.Random) -> None:
    from lib.report.summary import write_reports
    from lib.results.reader import load_results

    write_reports(load_results(root), work / "report", str(root), graphs=rng.random() < 0.15)


def read_compare(root: Path, work: Path, rng: random.Random) -> None:
    from lib.report.compare import compare_tables
    from lib.report.compare_render import write_compare
    from lib.results.reader import load_results

    other = SEEDS[rng.choice(list(SEEDS))](work / "clean")
    tables = [load_results(root), load_results(other)]
    if rng.random() < 0.5:
        tables.reverse()
    write_compare(compare_tables(*tables, "a", "b"), work / "compare")


def read_continue(root: Path, work: Path, rng: random.Random) -> None:
    """What `make continue` reads before it runs anything (scripts/matrix.py continue_matrix)."""
    from lib.config import load_settings
    from lib.names import RESUME_DIR, SUPERSEDED_DIR, check_no_links
    from lib.run.runner import config_changes, failure_lines, load_matrix, pending

    runs = load_matrix(root)
    load_settings(root / "config.txt", warn=lambda _: None)
    config_changes(CLEAN_CONFIG, root / "config.txt")
    check_no_links(root, [RESUME_DIR, SUPERSEDED_DIR, *(s.run_id for s in runs)])
    pending(root, runs)
    failure_lines(root, runs)


def _entries(root: Path) -> list[str]:
    """Names a user could give as RUN= (the folder's entries; "x" when there are none or it is unreadable)."""
    try:
        return sorted(p.name for p in root.iterdir()) or ["x"]
    except OSError:
        return ["x"]


def read_reproduce(root: Path, work: Path, rng: random.Random) -> None:
    """What `make reproduce` reads and copies before the rerun (lib/reproduce.py), for one run."""
    from lib.reproduce import _row, differences, prepare, read_recorded_run, recorded_config

    run_id = rng.choice(_entries(root))
    run = read_recorded_run(root, run_id)
    differences(run)
    new_dir = work / "reproduce"
    new_dir.mkdir()
    prepare(root, run, new_dir, recorded_config(root, print))
    _row(root, run_id)


def read_sample(root: Path, work: Path, rng: random.Random) -> None:
    """`make sample RESULTS=root RUN=id` up to the model (sampling itself reads nothing more)."""
    import torch

    from gpt2.sample import check_gpt2_run, load_model
    from lib.names import check_name
    from lib.train.checkpoint import run_checkpoint

    names = _entries(root)
    run_id = rng.choice([n for n in names if n.startswith("gpt2")] or names)
    check_name(run_id, "RUN", str(root))
    check_gpt2_run(root / run_id)
    load_model(run_checkpoint(root, run_id), torch.device("cpu"))


def read_dry_run(root: Path, work: Path, rng: random.Random) -> None:
    """The dry run's time estimate reads result.json and run.json of every directory under the results root."""
    from lib.run.plan import find_past_runs

    find_past_runs(root.parent, {"lenet5", "resnet18", "resnet50", "gpt2"})


READERS: dict[str, Callable[[Path, Path, random.Random], None]] = {
    "report": read_report, "compare": read_compare, "continue": read_continue, "reproduce": read_reproduce,
    "sample": read_sample, "dry_run": read_dry_run}


def _script(*args: Any, env: Optional[dict] = None) -> None:
    """Run scripts/<args> as users do; AssertionError unless it ends in a report (0) or one `error:`
    line (2), with only warning/note/error lines on stderr and no traceback."""
    import subprocess

    proc = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env={**os.environ, **(env or {})})
    lines = proc.stderr.splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode in (0, 2), f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert all(re.match(r"(warning|note|error|checkpoint): ", line) for line in lines), proc.stderr[-2000:]
    assert sum(line.startswith("error: ") for line in lines) == (proc.returncode == 2), proc.stderr[-2000:]


def cli_report(root: Path, work: Path, rng: random.Random) -> None:
    _script(ROOT / "scripts" / "report.py", root, "--out", work / "report")


def cli_compare(root: Path, work: Path, rng: random.Random) -> None:
    other = SEEDS[rng.choice(list(SEEDS))](work / "clean")
    _script(ROOT / "scripts" / "compare.py", *([root, other] if rng.random() < 0.5 else [other, root]),
            "--out", work / "compare")


def cli_sample(root: Path, work: Path, rng: random.Random) -> None:
    names = _entries(root)
    run_id = rng.choice([n for n in names if n.startswith("gpt2")] or names)
    _script(ROOT / "scripts" / "sample.py", env={"RESULTS": str(root), "RUN": run_id, "MAX_NEW_TOKENS": "2",
                                                 "PROMPT": "!", "DEVICE": "cpu", "CKPT": ""})


# The commands themselves, in a subprocess each (seconds a case, so the driver runs them with --cli only).
CLI_READERS: dict[str, Callable[[Path, Path, random.Random], None]] = {
    "cli_report": cli_report, "cli_compare": cli_compare, "cli_sample": cli_sample}


# one case ---------------------------------------------------------------------------------

class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


@dataclass
class Outcome:
    seed: int
    layout: str
    reader: str
    mutations: list[str]
    problems: list[str] = field(default_factory=list)
    error: Optional[str] = None  # the UserError's message, when the reader stopped with one

    def line(self) -> str:
        return (f"seed {self.seed} {self.layout}/{self.reader}: {'; '.join(self.mutations)}\n    "
                + "\n    ".join(self.problems))


def _rss() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _peak_rss() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+): the peak then says what this case used."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _call(reader: str, root: Path, work: Path, rng: random.Random, timeout_s: float) -> tuple[list[str], Optional[str]]:
    """Run one reader under a timer: (problems, the UserError's message or None)."""
    from lib.errors import UserError, escaped

    problems: list[str] = []
    error = None
    stderr, stdout = io.StringIO(), io.StringIO()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    measured = _reset_peak()
    start_rss = _rss()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            {**READERS, **CLI_READERS}[reader](root, work, rng)
    except Hang:
        problems.append(f"hang: still reading after {timeout_s} s")
    except UserError as exc:
        error = str(exc)
        if re.search(r"[\n\r\x1b]", escaped(error)):  # as run_cli prints it
            problems.append(f"error of more than one line: {error[:300]!r}")
    except Exception:  # noqa: BLE001 - every other exception breaks the contract; show it
        problems.append(traceback.format_exc(limit=-8))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    if measured and _peak_rss() - start_rss > MAX_RSS_GROWTH:
        problems.append(f"memory grew by {(_peak_rss() - start_rss) >> 20} MiB: something was read whole")
    for line in stderr.getvalue().splitlines():
        if not re.match(r"(warning|note): ", line):
            problems.append(f"stderr line that is not a warning: {line[:200]!r}")
    for name, text in (("stderr", stderr.getvalue()), ("stdout", stdout.getvalue())):
        for line in text.splitlines():
            if re.search(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", line):
                problems.append(f"control character on {name}: {line[:200]!r}")
    return problems, error


def _call_as(uid: int, reader: str, root: Path, work: Path, rng: random.Random,
             timeout_s: float) -> tuple[list[str], Optional[str]]:
    """_call as `uid` (root reads every file; mode 000 bites only others). The caller has run the reader
    once before, so no module is imported from a folder `uid` cannot read."""
    result = in_child_as(uid, lambda: _call(reader, root, work, rng, timeout_s))
    return tuple(result) if result is not None else (["the unprivileged reader died without a word"], None)


def in_child_as(uid: int, call: Callable[[], Any]) -> Any:
    """call() in a forked child running as user and group `uid`, its JSON-able result sent back through a
    pipe; None if the child died without one. The child leaves without running the parent's cleanup."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.write(write_end, json.dumps(call()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as handle:
        data = handle.read()
    os.waitpid(pid, 0)
    return json.loads(data) if data else None


def _open_to(work: Path, uid: int) -> None:
    """Let `uid` walk the tree and write into `work` (it stays root's; modes only)."""
    work.chmod(0o777)
    for folder, dirs, files in os.walk(work):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o777:
                path.chmod(0o777 if "results_root" not in path.parts else 0o755)
            elif stat.S_ISREG(st.st_mode) and st.st_mode & 0o777:
                path.chmod(0o644)
    parent = work
    while parent != parent.parent:  # the folders above must be passable too (pytest's tmp_path is 0700)
        parent = parent.parent
        if parent.stat().st_uid == os.getuid() and not parent.stat().st_mode & 0o001:
            parent.chmod(parent.stat().st_mode | 0o001)


def run_case(seed: int, work: Path, layout: Optional[str] = None, reader: Optional[str] = None,
             mutations: Optional[int] = None, timeout_s: float = 30.0, as_user: Optional[int] = None,
             put: Optional[tuple[str, str]] = None) -> Outcome:
    """Build a seed directory in `work`, damage it, run one reader on it, check the contract.
    `as_user`: a uid to read as (needs root; lets mode-000 damage count)."""
    rng = random.Random(seed)
    layout = layout or rng.choice(sorted(SEEDS))
    reader = reader or rng.choice(sorted(READERS))
    parent = work / "results_root"
    parent.mkdir(parents=True)
    root = SEEDS[layout](parent / (rng.choice(ROOT_NAMES) if rng.random() < 0.2 else "run_dir"))
    if put is not None:  # one chosen damage: (path under the seed directory, KINDS entry)
        done = [f"kind: {put_kind(root, put[0], put[1], rng)}"]
    else:
        done = mutate(root, rng, mutations or rng.choice([1, 1, 1, 2, 3]), as_user is not None)
    outcome = Outcome(seed, layout, reader, done)
    before = tree_digest(parent)
    if as_user is None:
        problems, outcome.error = _call(reader, root, work, rng, timeout_s)
    else:
        _open_to(work, as_user)
        before = tree_digest(parent)
        problems, outcome.error = _call_as(as_user, reader, root, work, rng, timeout_s)
    outcome.problems += problems
    after = tree_digest(parent)
    if after != before:
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        outcome.problems.append(f"input changed: {changed[:5]}")
    outcome.problems += _check_outputs(work)
    return outcome


def warm_up() -> None:
    """Run every reader once on undamaged directories, graphs and Welch's test included, so that
    each module imported lazily is loaded before a reader runs as a user who cannot read the
    interpreter's own folders (as_user)."""
    from scipy.stats import ttest_ind

    from lib.provenance import package_versions
    from lib.report.summary import write_reports
    from lib.results.reader import load_results

    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        for layout in SEEDS:
            with tempfile.TemporaryDirectory(prefix="warm-") as tmp:
                root = SEEDS[layout](Path(tmp) / "results_root" / "run_dir")
                write_reports(load_results(root), Path(tmp) / "graphs", "x", graphs=True)
                for reader in READERS:
                    (Path(tmp) / reader).mkdir()
                    _call(reader, root, Path(tmp) / reader, random.Random(0), 60)
        with tempfile.TemporaryDirectory(prefix="warm-") as tmp:  # a model built as from_checkpoint builds it
            import torch

            from gpt2.sample import load_model

            _gpt2_checkpoint(Path(tmp) / "best.pt")
            load_model(Path(tmp) / "best.pt", torch.device("cpu"))
        ttest_ind([1.0, 2.0], [1.0, 3.0], equal_var=False)
        package_versions()  # importlib.metadata imports email.parser on its first call


def _check_outputs(work: Path) -> list[str]:
    """What was written must not carry the private file's content or raw control characters."""
    problems = []
    for path in _files(work, lambda p: p.suffix in (".txt", ".md", ".html", ".json")
                       and "results_root" not in p.parts and "clean" not in p.parts):
        text = path.read_text(errors="replace")
        if "PRIVATE" in text:
            problems.append(f"{path.name}: holds content of a file outside the result directory")
        if path.suffix in (".txt", ".md") and path.name != "config.txt" \
                and re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", text):
            problems.append(f"{path.name}: a raw control character")
        if path.suffix == ".json" and path.name in ("all_results.json", "matrix.json"):
            try:
                json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
            except ValueError as exc:
                problems.append(f"{path.name}: not strict JSON ({str(exc)[:80]})")
    return problems


def cleanup(work: Path) -> None:
    """Remove `work`, mode-000 entries included (for a reader that is not root)."""
    for folder, dirs, files in os.walk(work):
        for name in dirs + files:
            path = Path(folder) / name
            if not path.is_symlink():
                with contextlib.suppress(OSError):
                    path.chmod(0o700)
    shutil.rmtree(work, ignore_errors=True)


def main(argv: Optional[list[str]] = None) -> int:
    import argparse
    import time

    parser = argparse.ArgumentParser(description="fuzz the readers of result directories for a bounded time")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=0, help="first case seed")
    parser.add_argument("--cases", type=int, default=None, help="stop after this many cases")
    parser.add_argument("--readers", default=",".join(READERS), help=f"of {','.join({**READERS, **CLI_READERS})}")
    parser.add_argument("--layouts", default=",".join(SEEDS))
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--skip-kinds", default="", help=f"leave out these of {','.join(KINDS)}")
    parser.add_argument("--as-user", type=int, default=None,
                        help="read as this uid (run as root): adds mode-000 damage")
    args = parser.parse_args(argv)
    SKIP_KINDS.update(filter(None, args.skip_kinds.split(",")))
    if args.as_user is not None:
        warm_up()
    readers, layouts = args.readers.split(","), args.layouts.split(",")
    deadline = time.monotonic() + args.seconds
    seed, failures, counts = args.seed, 0, {}
    while time.monotonic() < deadline and (args.cases is None or seed - args.seed < args.cases):
        rng = random.Random(seed)
        with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
            outcome = run_case(seed, Path(tmp), rng.choice(layouts), rng.choice(readers), timeout_s=args.timeout,
                               as_user=args.as_user)
            cleanup(Path(tmp))
        counts[outcome.reader] = counts.get(outcome.reader, 0) + 1
        if outcome.problems:
            failures += 1
            print(outcome.line(), flush=True)
        seed += 1
    print(f"{seed - args.seed} cases ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}), "
          f"{failures} broke the contract", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
