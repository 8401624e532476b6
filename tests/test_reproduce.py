"""make reproduce: a tiny ci-quick-like LeNet-5 run rerun from its folder is bit-identical on CPU,
and what differs from its record (commit, package versions) is named before it starts."""
from __future__ import annotations

import json

import pytest

from conftest import ROOT, make, run_script, write_config

REPRODUCE = ROOT / "scripts" / "reproduce.py"
RUN = "lenet5_adamw_magnitude_50"
TIMING = {"elapsed_s", "wall_time_s", "train_time_s", "eval_time_s", "throughput_samples_per_s", "tokens_per_s",
          "environment", "dataset"}  # clocks, and the data path of this test's temp folder


def _figures(metrics: dict) -> dict:
    """metrics.json without its clocks: every figure a rerun must repeat bit for bit."""
    keep = {k: v for k, v in metrics.items() if k not in TIMING}
    keep["epochs"] = [{k: v for k, v in e.items() if k not in TIMING} for e in metrics["epochs"]]
    keep["train_log"] = [{k: v for k, v in e.items() if k not in TIMING} for e in metrics.get("train_log", [])]
    return keep


@pytest.mark.slow  # a matrix run, then make reproduce
def test_reproduce_is_bit_identical_on_cpu_and_names_differences_first(tmp_path):
    config = write_config(tmp_path, "ci-quick", LENET5_TRAIN_LIMIT="256", LENET5_TEST_LIMIT="128", NUM_EPOCHS="1",
                          OPTIMIZER_MODE_SINGLE="y", OPTIMIZER_SELECT_ADAMW="y", PRUNING_MODE_SINGLE="y",
                          PRUNING_SELECT_MAGNITUDE="y", TARGET_SPARSITY='"0.5"', SPARSITY_ENABLE_90="n",
                          PRUNING_RAMP_FIT="y", PRUNING_WARMUP="1", PRUNING_FREQUENCY="1",
                          RESULTS_ROOT=f'"{tmp_path / "results"}"', DATA_DIR=f'"{tmp_path / "data"}"')
    first = run_script(ROOT / "scripts" / "matrix.py", "run", "--config", config)
    assert first.returncode == 0, first.stdout + first.stderr
    (results,) = [p for p in (tmp_path / "results").iterdir() if (p / "matrix.json").is_file()]
    assert json.loads((results / "matrix.json").read_text())["runs"][0]["run_id"] == RUN
    run_json = results / RUN / "run.json"
    record = json.loads(run_json.read_text())
    assert record["packages"]["torch"] and record["git_commit"]
    record.update(git_commit="0" * 40)
    record["packages"]["numpy"] = "0.0.1"  # what a run made elsewhere would record; figures do not depend on it
    run_json.write_text(json.dumps(record))
    before = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}

    out = tmp_path / "rerun"
    proc = make(ROOT, "reproduce", f"RESULTS={results}", f"RUN={RUN}", f"OUT={out}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "1 to run" in line)
    named = "\n".join(lines[:start])
    assert f"git commit: recorded {'0' * 40}" in named and "numpy: recorded 0.0.1, here" in named
    original = json.loads((results / RUN / "metrics.json").read_text())
    rerun = json.loads((out / RUN / "metrics.json").read_text())
    assert _figures(rerun) == _figures(original)  # bit-identical, curves and masks' sparsity included
    assert any(line.startswith("best_accuracy_pct") and line.endswith("identical") for line in lines)
    assert lines[-1] == "identical"
    assert {p: p.read_bytes() for p in results.rglob("*") if p.is_file()} == before  # the original is only read
    assert json.loads((out / "matrix.json").read_text())["reproduces"] == str(results / RUN)


def test_reproduce_refuses_a_bad_run_name_and_an_out_inside_the_original(tmp_path):
    bad = run_script(REPRODUCE, str(tmp_path), "../etc")
    assert bad.returncode == 2 and bad.stderr.startswith("error: make reproduce: RUN '../etc' is not a safe name")
    (tmp_path / "r" / "x").mkdir(parents=True)
    for other in ("lenet5_sgd_none", "lenet5_adam_none", "bad name"):  # the runs it could rerun are named
        (tmp_path / "r" / other).mkdir()
        (tmp_path / "r" / other / "run.json").write_text("{}")
    missing = run_script(REPRODUCE, str(tmp_path / "r"), "x")
    assert missing.returncode == 2 and "no run.json" in missing.stderr and "Traceback" not in missing.stderr
    assert missing.stderr.rstrip().endswith("runs here: lenet5_adam_none, lenet5_sgd_none"), missing.stderr
    assert not (tmp_path / "r" / "x").joinpath("matrix.json").exists()
    nowhere = run_script(REPRODUCE, str(tmp_path / "nowhere"), "x")
    assert nowhere.returncode == 2 and nowhere.stderr == f"error: RESULTS={tmp_path / 'nowhere'}: no such result directory\n"
