"""Readers of other labs' result directories under a seeded fuzzer (tests/hostile_fuzz.py), and one
regression test for each defect the fuzzing found. Each damage ends in a report (the bad run marked
by a warning naming its file) or one `error:` line, never a traceback, a hang or a large read, and
the input stays byte-identical."""
from __future__ import annotations

import shutil

from conftest import ROOT
from result_dirs import tree_digest

from lib.results.reader import load_results

OWN = ROOT / "tests/fixtures/own/20261130_225800"
RUN = "lenet5_adamw_magnitude_50"


def _own(tmp_path):
    return shutil.copytree(OWN, tmp_path / "results")


def _sparse(path, size: int, head: bytes = b"") -> None:
    """A file of `size` bytes that costs no disk: `head`, then zeros."""
    with open(path, "wb") as handle:
        handle.write(head)
        handle.truncate(size)


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
