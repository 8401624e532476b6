"""all_results.json describes itself (config, git commit, versions, host, standard errors), and run.json
records what a rerun needs; old and upstream directories still read."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import ROOT
from result_dirs import seeded_matrix

from lib.provenance import PACKAGES, package_versions
from lib.report.summary import write_reports
from lib.results.reader import load_results
from lib.run.task import prepare_run_dir
from tests.specs import make_spec

LEGACY = ROOT / "tests" / "fixtures" / "legacy" / "test_matrix_results_20250903_180836"
CONFIG = "CONFIG_MODEL_SELECT_LENET5=y\nCONFIG_SEEDS=\"1 2 3\"\n"


def _with_provenance(root: Path) -> Path:
    seeded_matrix(root, optimizers=("sgd",), sparsities=(50,))
    (root / "config.txt").write_text(CONFIG)
    for path in root.glob("*/run.json"):
        run = json.loads(path.read_text())
        run.update(git_commit="a" * 40, git_dirty=False, host="node1",
                   packages={"python": "3.11.7", "torch": "2.13.0+cpu", "numpy": "2.4.6"})
        path.write_text(json.dumps(run))
    return root


def test_all_results_records_config_commit_versions_host_and_standard_errors(tmp_path):
    table = load_results(_with_provenance(tmp_path / "r"))
    write_reports(table, tmp_path / "out", "r", graphs=False)
    data = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert data["config"] == CONFIG and data["git_commit"] == "a" * 40 and data["git_commit_note"] is None
    assert data["versions"] == {"python": "3.11.7", "torch": "2.13.0+cpu", "numpy": "2.4.6"}
    assert data["host"] == "node1" and data["git_dirty"] is False
    assert set(data["report"]["versions"]) == {"python", *PACKAGES}
    (stats,) = [c for c in data["configurations"] if c["config"] == "lenet5_sgd_magnitude_50"]
    best = [r["best_accuracy_pct"] for r in data["runs"] if r["run_id"].startswith("lenet5_sgd_magnitude_50_")]
    mean = sum(best) / 3
    std = math.sqrt(sum((b - mean) ** 2 for b in best) / 2)
    assert stats["metrics"]["best_accuracy_pct"] == pytest.approx({"mean": mean, "std": std,
                                                                    "stderr": std / math.sqrt(3), "n": 3})
    assert "target_sparsity_pct" not in stats["metrics"]
    assert len(data["runs"]) == 6  # the rows as before: readers of "runs" are unchanged


def test_runs_with_different_versions_list_each_and_upstream_says_why_no_commit(tmp_path):
    root = _with_provenance(tmp_path / "r")
    first = root / "lenet5_sgd_none_s1" / "run.json"
    run = json.loads(first.read_text())
    run["packages"]["torch"] = "2.12.0"
    run["git_commit"] = {"not": "a string"}  # hostile: ignored
    first.write_text(json.dumps(run))
    provenance = load_results(root).attrs["provenance"]
    assert provenance["versions"]["torch"] == ["2.12.0", "2.13.0+cpu"] and provenance["git_commit"] == "a" * 40
    upstream = tmp_path / "up"
    shutil.copytree(LEGACY, upstream)
    provenance = load_results(upstream).attrs["provenance"]
    assert provenance["git_commit"] is None and "upstream" in provenance["git_commit_note"]
    assert provenance["config"] == (LEGACY / "config.txt").read_text()


def test_a_directory_with_our_new_all_results_json_still_reads(tmp_path):
    root = _with_provenance(tmp_path / "r")
    write_reports(load_results(root), root, "r", graphs=False)  # into the directory, as `make` does
    again = load_results(root)
    assert again.attrs["layout"] == "own" and len(again) == 6


def test_run_json_records_packages_commit_state_and_host(tmp_path):
    spec = make_spec("lenet5_sgd_none")
    prepare_run_dir(tmp_path / "run", spec, ["python"], commit="b" * 40)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["git_commit"] == "b" * 40 and run["packages"] == package_versions()
    assert run["packages"]["torch"] and isinstance(run["git_dirty"], bool) and run["host"]
