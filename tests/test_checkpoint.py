"""lib/train/checkpoint.py: best.pt and last.pt written atomically, read back weights-only.

A checkpoint round-trips tensors, optimizer state and plain values; a file that
holds anything else (a pickled object, a numpy array), another format
version, lacks a required key or is no checkpoint at all is set aside with one
warning and never half-used; a crafted file runs nothing. (The crafted-object
case of a resume folder is in tests/test_hostile.py.) Under a second.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lib.train import checkpoint
from lib.train.checkpoint import (BEST, FORMAT_VERSION, LAST, load_checkpoint, load_weights, restore_rng_state, rng_state,
                            run_checkpoint, runs_with_checkpoints, save_checkpoint)
from lib.errors import UserError

CPU = torch.device("cpu")


class _Opens:
    """Unpickling this would create `marker`: the file exists only if loading ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def trained_state() -> dict:
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 5)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 7, "train_time_s": 1.5,
            "history": [{"step": 5, "val_loss": 2.5, "at_target": False, "note": None}],
            "masks": {"w": torch.rand(3, 5) > 0.5, "bits": torch.tensor([1, 255], dtype=torch.uint8)},
            "rng": rng_state(), "identity": "abc"}


def assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def test_a_checkpoint_round_trips_and_leaves_no_temporary_file(tmp_path):
    state = trained_state()
    path = tmp_path / "deeper" / LAST  # the folder is made
    save_checkpoint(path, state)
    loaded = load_checkpoint(path, CPU, required=("model", "optimizer", "rng"))
    assert loaded["format_version"] == FORMAT_VERSION
    assert_same({k: v for k, v in loaded.items() if k != "format_version"}, state)
    assert [p.name for p in path.parent.iterdir()] == [LAST]
    assert_same(load_weights(path)["model"], state["model"])  # the reader of make sample / reproduce


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / LAST
    save_checkpoint(path, {"step": 1})

    def dies_half_way(obj, f):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", dies_half_way)
    with pytest.raises(OSError):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path, CPU)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [LAST]


def test_rng_states_are_restored_and_saved_as_plain_values(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint(tmp_path / LAST, {"rng": rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(load_checkpoint(tmp_path / LAST, CPU)["rng"])
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_no_file_is_none_without_a_warning(tmp_path, capsys):
    assert load_checkpoint(tmp_path / LAST, CPU) is None
    assert capsys.readouterr().err == ""


def rejected(path: Path) -> list[Path]:
    return list(path.parent.glob(f"{path.name}.rejected-*"))


@pytest.mark.parametrize("payload, why", [
    (lambda tmp: _Opens(tmp / "pwned"), "holds objects other than tensors and plain values (refused, not run)"),
    (lambda tmp: np.arange(3), "holds objects other than tensors and plain values (refused, not run)"),
], ids=["object", "numpy-array"])
def test_a_pickle_that_is_not_weights_only_is_refused_and_set_aside(tmp_path, capsys, payload, why):
    path = tmp_path / LAST
    torch.save({"format_version": FORMAT_VERSION, "step": 3, "payload": payload(tmp_path)}, path)
    assert load_checkpoint(path, CPU, required=("step",)) is None
    assert not (tmp_path / "pwned").exists()
    assert not path.exists() and len(rejected(path)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: {path}: {why}; kept as {rejected(path)[0].name}; starting the run afresh"]
    with pytest.raises(UserError, match=r"unreadable checkpoint"):
        load_weights(rejected(path)[0])  # make sample / reproduce refuse it as well
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("content, required, why", [
    ({"format_version": 1, "step": 3}, (), "checkpoint format 1 is not 2"),
    ({"step": 3}, (), "checkpoint format None is not 2"),
    ({"format_version": 2, "step": 3}, ("model", "step", "rng"), "checkpoint lacks model, rng"),
], ids=["old-format", "no-format", "missing-keys"])
def test_a_checkpoint_of_another_format_or_lacking_keys_is_set_aside(tmp_path, capsys, content, required, why):
    path = tmp_path / LAST
    torch.save(content, path)
    assert load_checkpoint(path, CPU, required) is None
    assert len(rejected(path)) == 1 and not path.exists()
    assert f": {why}; kept as" in capsys.readouterr().err


def test_a_damaged_file_is_set_aside_naming_the_error(tmp_path, capsys):
    path = tmp_path / LAST
    save_checkpoint(path, trained_state())
    path.write_bytes(path.read_bytes()[:100])  # truncated
    assert load_checkpoint(path, CPU) is None
    assert len(rejected(path)) == 1
    assert ": not a loadable checkpoint (" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"no such checkpoint"):
        load_weights(path)
    with pytest.raises(UserError, match=r"unreadable checkpoint"):
        load_weights(rejected(path)[0])


def test_run_checkpoint_prefers_the_finished_best_then_the_resume_folder(tmp_path):
    results = tmp_path / "results"
    (results / "run_a").mkdir(parents=True)
    with pytest.raises(UserError, match=r"no checkpoint .*runs with one here: none"):
        run_checkpoint(results, "run_a")
    last = results / ".resume" / "run_a" / LAST
    save_checkpoint(last, {"step": 1})
    assert run_checkpoint(results, "run_a") == last
    resume_best = last.with_name(BEST)
    save_checkpoint(resume_best, {"step": 1})
    assert run_checkpoint(results, "run_a") == resume_best
    best = results / "run_a" / "checkpoints" / BEST
    save_checkpoint(best, {"step": 1})
    assert run_checkpoint(results, "run_a") == best
    assert runs_with_checkpoints(results) == ["run_a"]
    with pytest.raises(UserError, match=r"RESULTS=.*no such result directory"):
        run_checkpoint(tmp_path / "nowhere", "run_a")
    with pytest.raises(UserError):
        run_checkpoint(results, "../run_a")  # a name, never a path


def test_runs_with_checkpoints_skips_names_that_are_not_safe(tmp_path):
    for name in ("b_run", "a_run", "a run", ".hidden"):
        save_checkpoint(tmp_path / name / "checkpoints" / BEST, {"step": 1})
    (tmp_path / "no_ckpt").mkdir()
    assert runs_with_checkpoints(tmp_path) == ["a_run", "b_run"]
