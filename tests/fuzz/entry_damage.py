"""Damages to the entries themselves: a directory, FIFO, device, symbolic link or huge sparse file where a
file belongs (put_kind, one of KINDS), hostile names, files removed, mode 000. A private folder beside
the result directory gives the links out of it a target whose content must never reach a report."""
from __future__ import annotations

import json
import os
import random
import shutil
import stat
from pathlib import Path

from result_dirs import spec

from fuzz.hostile_values import HOSTILE_NAMES, HUGE_BYTES
from fuzz.json_edit import dump, json_files, load, locations, set_at
from fuzz.tree import dirs, files

SKIP_KINDS: set[str] = set()  # the driver's --skip-kinds
KINDS = ("dir", "fifo", "device", "link_out", "link_out_json", "link_out_list", "link_fifo_out", "link_loop",
         "link_dangling", "link_dev_zero", "link_in", "huge", "huge_json", "huge_line")


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
    candidates = files(root) + [d / name for d in [root, *dirs(root)] for name in
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
        others = [p for p in files(root) if p != path]
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
    paths = [p for p in json_files(root) if isinstance(load(p), (dict, list))]
    if not paths:
        return "nothing"
    path = rng.choice(paths)
    data = load(path)
    where = [w for w in locations(data) if w and w[-1] in ("run_id", "test_id", "model", "optimizer",
                                                          "pruning", "pruning_method", "variant", "gpu_type",
                                                          "device", "source")]
    if not where:
        return "nothing"
    at = rng.choice(where)
    dump(path, set_at(data, at, name), rng)
    return f"{path.relative_to(root)} at {list(at)} = {name!r}"


def _fs_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\x00" not in name \
        and len(os.fsencode(name)) < 250


def m_remove(root: Path, rng: random.Random) -> str:
    paths = files(root)
    if not paths:
        return "nothing"
    path = rng.choice(paths)
    path.unlink()
    return f"{path.relative_to(root)} removed"


def m_mode(root: Path, rng: random.Random) -> str:
    """A file or folder nobody may read (only bites when the reader is not root)."""
    paths = files(root) + dirs(root)
    if not paths:
        return "nothing"
    path = rng.choice(paths)
    path.chmod(0)
    return f"{path.relative_to(root)}: mode 000"
