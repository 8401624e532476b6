"""lib/spec.py: the RunSpec, typed, in the JSON every matrix.json and run.json has had.

Round trips through JSON for every run of the defconfigs (and upstream's), a
matrix.json written before lib/spec.py existed read back and written again
byte for byte, files of earlier versions that lack later keys, type errors
named by key, and the import boundary: lib.spec imports no other lib module,
and a trainer process imports neither lib.config nor kconfiglib.
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from lib.config import load_settings
from lib.matrix import expand, spec_from_entry
from lib.errors import UserError
from lib.spec import (LEGACY_OPTIMIZER, LEGACY_PRUNING, LEGACY_SPAM, LEGACY_TRAINING, OptimizerParams, RunSpec,
                      SpecError, TrainingSettings)

ROOT = Path(__file__).resolve().parent.parent
OLD_MATRIX = ROOT / "tests/fixtures/spec/matrix-20d62bf.json"
DEFCONFIGS = sorted(p.name for p in (ROOT / "defconfigs").iterdir())
UPSTREAM = sorted(p.name for p in (ROOT / "tests/fixtures/upstream-defconfigs").iterdir() if p.suffix != ".md")


def as_json(data) -> str:
    return json.dumps(data)  # key order matters: the files keep theirs


def old_runs() -> list[dict]:
    return json.loads(OLD_MATRIX.read_text())["runs"]


@pytest.mark.parametrize("path", [ROOT / "defconfigs" / n for n in DEFCONFIGS] +
                         [ROOT / "tests/fixtures/upstream-defconfigs" / n for n in UPSTREAM], ids=lambda p: p.name)
def test_every_run_of_every_defconfig_survives_json(path):
    runs = expand(load_settings(path, warn=lambda message: None))
    for run in runs:
        text = as_json(run.to_json())
        back = RunSpec.from_json(json.loads(text))
        assert back == run, run.run_id
        assert as_json(back.to_json()) == text, run.run_id


def test_the_json_layout_is_that_of_every_earlier_matrix():
    """A matrix.json written by the code before lib/spec.py reads back typed and is written again
    identically (keys, their order, values), every optimizer's block included."""
    runs = old_runs()
    assert {run["optimizer"] for run in runs} == {"sgd", "adam", "adamw", "adamwadv", "adamwspam", "adamwprune"}
    assert any("budget" in run["hyperparams"]["model"] for run in runs)
    for entry in runs:
        spec = spec_from_entry(entry, "matrix.json")
        assert as_json(spec.to_json()) == as_json(entry), entry["run_id"]


def test_typed_fields_hold_the_files_values():
    runs = {run["run_id"]: spec_from_entry(run, "matrix.json") for run in old_runs()}
    prune = runs["lenet5_adamwprune_state_50"]
    assert isinstance(prune.training, TrainingSettings) and isinstance(prune.optimizer_params, OptimizerParams)
    assert prune.optimizer_params.base == "adamw" and prune.optimizer_params.betas == (0.9, 0.999)
    assert prune.optimizer_params.spam.interval >= 0 and prune.optimizer_params.adv.grad_clip >= 0
    adv = runs["lenet5_adamwadv_none"].optimizer_params
    assert (adv.amsgrad, adv.weight_decay) == (adv.adv.amsgrad, adv.adv.weight_decay)  # flat in its JSON
    assert runs["lenet5_adamwspam_none"].optimizer_params.spam.theta > 0
    assert runs["lenet5_sgd_none"].optimizer_params.momentum is not None
    budgeted = runs["gpt2_adamwprune_bitter2_state_50"]
    assert budgeted.variant_budget.extra_pct == 21 and "budget" not in budgeted.model_params
    assert budgeted.model_params["max_iters"] == budgeted.variant_budget.base_max_iters * 121 // 100
    assert runs["gpt2_adamw_none"].gpus == 1 and runs["lenet5_sgd_none"].gpus == 1


def test_files_of_earlier_versions_read_with_the_values_those_runs_had():
    """Keys added after the first version are filled from LEGACY_*; every other key is required."""
    entry = copy.deepcopy(next(r for r in old_runs() if r["run_id"] == "lenet5_adamwprune_state_50"))
    hp = entry["hyperparams"]
    for block, legacy in (("training", LEGACY_TRAINING), ("pruning", LEGACY_PRUNING)):
        for key in legacy:
            hp[block].pop(key, None)  # ramp_end_step is written only when set: this file never had it
    for key in LEGACY_OPTIMIZER:
        del hp["optimizer"][key]
    for key in LEGACY_SPAM:
        del hp["optimizer"]["spam"][key]
    spec = spec_from_entry(entry, "matrix.json")
    assert (spec.training.tf32, spec.training.grad_clip_norm, spec.training.grad_accum, spec.training.resume) == (
        True, None, 1, True)
    assert (spec.pruning_settings.ramp_fit, spec.pruning_settings.mask_storage) == (False, "bool")
    assert spec.pruning_settings.ramp_end_step == 0 and spec.pruning_timing() == (60, 0, 20)  # AdamWPrune's own
    assert (spec.optimizer_params.learning_rate, spec.optimizer_params.state_score) == (None, "bitter0")
    assert spec.optimizer_params.spam.clip_delay_steps == 20
    written = spec.to_json()["hyperparams"]  # written back in today's layout, every key present
    assert list(written["training"]) == [f.name for f in dataclasses.fields(TrainingSettings)]
    del hp["training"]["batch_size"]
    with pytest.raises(UserError, match=r"hyperparams.training: lacks 'batch_size'"):
        spec_from_entry(entry, "matrix.json")


def test_a_pruning_ramp_end_step_is_written_only_where_a_run_has_one():
    """hyperparams.pruning.ramp_end_step (upstream's ResNet-18 trainer's fixed ramp end) came after the
    layout was fixed: a run with one writes it and reads it back; every other run's JSON, and so the
    identity of its resume checkpoint, is what it was without the key (0: the ramp ends with its epoch)."""
    path = ROOT / "tests/fixtures/upstream/defconfigs/resnet18--resnet18-full-pruning-compare"
    runs = {r.run_id: r for r in expand(load_settings(path, warn=lambda message: None))}
    pruned, state = runs["resnet18_adamw_magnitude_70"], runs["resnet18_adamwprune_state_70"]
    written = pruned.to_json()["hyperparams"]["pruning"]
    assert written["ramp_end_step"] == 3000 and list(written)[-1] == "ramp_end_step"
    assert RunSpec.from_json(json.loads(as_json(pruned.to_json()))) == pruned
    for run in (state, runs["resnet18_adamw_none"]):
        assert "ramp_end_step" not in run.to_json()["hyperparams"]["pruning"], run.run_id
        assert RunSpec.from_json(run.to_json()) == run
    entry = copy.deepcopy(pruned.to_json())
    entry["hyperparams"]["pruning"]["ramp_end_step"] = -1
    with pytest.raises(UserError, match=r"hyperparams.pruning.ramp_end_step -1 is not at least 0"):
        spec_from_entry(entry, "matrix.json")


@pytest.mark.parametrize("change, says", [
    (lambda hp: hp["training"].update(epochs=2.5), r"hyperparams.training.epochs: 2.5 is not an integer"),
    (lambda hp: hp["training"].update(mixed_precision="yes"), r"mixed_precision: 'yes' is not true or false"),
    (lambda hp: hp["pruning"].update(frequency=True), r"hyperparams.pruning.frequency: True is not an integer"),
    (lambda hp: hp["optimizer"].update(betas=[0.9]), r"hyperparams.optimizer.betas: \[0.9\] is not a pair"),
    (lambda hp: hp["optimizer"].update(adv=None), r"hyperparams.optimizer.adv: not an object"),
    (lambda hp: hp["optimizer"]["spam"].update(theta=None), r"hyperparams.optimizer.spam.theta: None is not"),
    (lambda hp: hp["model"].update(budget={"variant": "bitter2"}), r"budget: lacks 'base_max_iters'"),
])
def test_a_value_of_the_wrong_type_is_named(change, says):
    entry = copy.deepcopy(next(r for r in old_runs() if r["run_id"] == "lenet5_adamwprune_state_50"))
    change(entry["hyperparams"])
    with pytest.raises(UserError, match=says):
        spec_from_entry(entry, "matrix.json")
    with pytest.raises(SpecError):
        RunSpec.from_json(entry)


@pytest.mark.parametrize("change, says", [
    (lambda e: e.update(target_sparsity_pct=-50), r"target_sparsity_pct -50.0 is not from 0 to below 100"),
    (lambda e: e.update(target_sparsity_pct=100), r"target_sparsity_pct 100.0 is not from 0 to below 100"),
    (lambda e: e["hyperparams"]["training"].update(epochs=-3), r"hyperparams.training.epochs -3 is not at least 1"),
    (lambda e: e["hyperparams"]["training"].update(learning_rate=0), r"learning_rate 0.0 is not above 0"),
    (lambda e: e["hyperparams"]["pruning"].update(frequency=0), r"hyperparams.pruning.frequency 0 is not at least 1"),
])
def test_a_value_no_configuration_can_give_is_refused(change, says):
    """A stranger's matrix.json may be well typed and still absurd; `make continue` must not train it."""
    entry = copy.deepcopy(next(r for r in old_runs() if r["run_id"] == "lenet5_adamwprune_state_50"))
    change(entry)
    with pytest.raises(UserError, match=says):
        spec_from_entry(entry, "matrix.json")


def test_a_spec_is_frozen_and_its_model_params_read_only():
    spec = spec_from_entry(old_runs()[0], "matrix.json")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.training = None
    with pytest.raises(TypeError):
        spec.model_params["train_limit"] = 5
    assert hash(spec) == hash(dataclasses.replace(spec))


def test_a_spec_pickles_for_submitit():
    spec = spec_from_entry(next(r for r in old_runs() if "budget" in r["hyperparams"]["model"]), "matrix.json")
    back = pickle.loads(pickle.dumps(spec))
    assert back == spec and as_json(back.to_json()) == as_json(spec.to_json())
    assert copy.deepcopy(spec) == spec


def _imported(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_lib_spec_imports_no_other_lib_module():
    modules = _imported("import json, sys, lib.spec; "
                        "print(json.dumps(sorted(m for m in sys.modules if m == 'lib' or m.startswith('lib.'))))")
    assert modules == ["lib", "lib.spec"]
    tree = ast.parse((ROOT / "lib/spec.py").read_text())  # lazy imports too: the standard library only
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


@pytest.mark.parametrize("trainer", ["lenet5.train", "resnet18.train", "resnet50.train", "gpt2.train"])
def test_a_trainer_reads_its_spec_without_the_configuration_code(trainer):
    modules = _imported(f"import json, sys, {trainer}; "
                        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('lib', 'kconfiglib'))))")
    assert "lib.spec" in modules
    assert not {"kconfiglib", "lib.config", "lib.matrix", "lib.upstream_aliases"} & set(modules)
