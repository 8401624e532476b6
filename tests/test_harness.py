"""The trainer side of a run folder (lib/train/harness.py): what a trainer leaves there when it stops."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from lib.errors import NON_FINITE_MARKER, NonFiniteError
from lib.trackers.backends import Trackers
from lib.train.batch_plan import BatchPlan
from lib.train.distributed import Dist
from lib.train.harness import train_and_record
from tests.specs import make_spec


def _plan(dist: Dist) -> BatchPlan:
    return BatchPlan(micro_batch=4, grad_accum=1, world_size=dist.world_size, mode="manual", reason="test")


def _diverging_loop() -> SimpleNamespace:
    def run() -> None:
        raise NonFiniteError("loss became nan at step 3 (lr 10)")
    return SimpleNamespace(run=run, tracker=Trackers([]))


@pytest.mark.parametrize("dist", [Dist(), Dist(rank=1, world_size=2, local_rank=1)], ids=["one process", "rank 1"])
def test_a_trainer_stopped_non_finite_leaves_the_marker_and_keeps_its_error(tmp_path, dist):
    """Any rank that stops writes the marker: under torchrun it is how the runner learns what the exit
    code (torchrun's 1) hides. The error still propagates, so the process exits NON_FINITE_EXIT."""
    spec, plan = make_spec("lenet5_sgd_none"), _plan(dist)
    if dist.is_main:  # rank 0 starts the trackers run.json names (none here)
        (tmp_path / "run.json").write_text(json.dumps({"tracking": None}))
    with pytest.raises(NonFiniteError, match="loss became nan at step 3"):
        train_and_record(tmp_path, spec, _diverging_loop(), started=0.0, note=None, plan=plan, dataset={}, dist=dist)
    marker = json.loads((tmp_path / NON_FINITE_MARKER).read_text())
    assert marker["rank"] == dist.rank and marker["world_size"] == dist.world_size
    assert marker["error"] == "loss became nan at step 3 (lr 10)"


def test_a_marker_that_cannot_be_written_does_not_replace_the_non_finite_error(tmp_path, capsys):
    """A full disk, say (here a file where the run folder should be): the trainer still ends on its
    NonFiniteError (exit 3), with a warning naming the marker it could not write."""
    not_a_folder = tmp_path / "run"
    not_a_folder.write_text("")
    dist = Dist(rank=1, world_size=2, local_rank=1)
    with pytest.raises(NonFiniteError):
        train_and_record(not_a_folder, make_spec("lenet5_sgd_none"), _diverging_loop(), started=0.0, note=None,
                         plan=_plan(dist), dataset={}, dist=dist)
    assert f"warning: {not_a_folder / NON_FINITE_MARKER}: cannot write" in capsys.readouterr().out
