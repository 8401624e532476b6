"""Hostile inputs beyond tests/test_hostile.py: output folders inside the input, links out of a
result directory, damaged or crafted checkpoints for `make sample`, a damaged config.txt for
`make continue`. Each ends in a report (damage labelled) or one `error:` line with exit code 2,
runs nothing from the input and leaves it byte-identical."""
from __future__ import annotations

import shutil

import pytest
from conftest import ROOT, no_traceback, run_script
from result_dirs import classifier_metrics, gpu_stats, spec, tree_digest, write_matrix, write_run

REPORT = ROOT / "scripts" / "report.py"
UPSTREAM = ROOT / "tests" / "fixtures" / "legacy" / "test_matrix_results_20250903_180836"


def _own_dir(root):
    s = spec("lenet5", "sgd", "none", 0)
    write_matrix(root, [s])
    write_run(root, s, "success", classifier_metrics(s, [90.0, 91.0], 0.0), gpu_stats(10, 20))
    return root


# OUT of `make report` ------------------------------------------------------------

@pytest.mark.parametrize("layout, out", [("upstream", "."), ("upstream", "sub"), ("own", "lenet5_sgd_none")])
def test_report_out_inside_the_input_is_refused(tmp_path, layout, out):
    """OUT=RESULTS on an upstream directory overwrote its all_results.json and summary_report.txt."""
    results = tmp_path / "results"
    if layout == "upstream":
        shutil.copytree(UPSTREAM, results)
    else:
        _own_dir(results)
    before = tree_digest(results)
    proc = run_script(REPORT, results, "--out", results / out)
    no_traceback(proc)
    assert proc.returncode == 2 and proc.stderr.count("error:") == 1
    assert "which is only read" in proc.stderr
    assert tree_digest(results) == before
