"""The model registry (lib/models.py) and the name lists that must agree with it.

A toy model from tests/toy_model goes through the dry run, a real matrix of
training processes and the report without any file of lib/ naming it; the
Kconfig tree, the optimizer and score registries, the config's name lists and
the report's run-ID parser are checked against each other.
"""
from __future__ import annotations

import ast
import dataclasses
import os
from pathlib import Path

import kconfiglib
import pytest

from conftest import ROOT, write_config
from lib import config, models
from lib.config import load_settings, symbol_suffix
from lib.matrix import expand
from lib.optim import OPTIMIZERS as OPTIMIZER_BUILDERS
from lib.pruning.scores import SCORES, STATE_SCORES
from lib.report.summary import write_reports
from lib.results.reader import load_results
from lib.results.run_files import PRUNING_METHODS as RUN_ID_METHODS
from lib.results.run_files import parse_run_id
from lib.run.plan import plan_lines
from lib.run.runner import create_results_dir, run_matrix

REAL_MODELS = ("lenet5", "resnet18", "resnet50", "gpt2")


@pytest.fixture(scope="module")
def kconf() -> kconfiglib.Kconfig:
    os.environ["srctree"] = str(ROOT)
    return kconfiglib.Kconfig(str(ROOT / "Kconfig"), warn_to_stderr=False)


@pytest.fixture
def toy():
    import tests.toy_model  # registers "toy"

    yield tests.toy_model.TOY
    models.unregister("toy")


def _prompt(kconf: kconfiglib.Kconfig, name: str) -> str:
    return kconf.syms[name].nodes[0].prompt[0]


# --- the toy model: one folder plus one registry entry -----------------------------------


@pytest.mark.slow  # a matrix of four training processes
def test_a_toy_model_runs_through_dry_run_matrix_and_report(tmp_path, toy):
    base = load_settings(write_config(tmp_path, "lenet5-quick"), warn=lambda message: None)
    settings = dataclasses.replace(
        base, models=("toy",), optimizers=("adamw", "adamwprune"), pruning_methods=("none", "magnitude"),
        sparsities_pct=(50.0,), adamwprune_sparsities_pct=(50.0,), seeds=(1,),
        training=dataclasses.replace(base.training, epochs=3, batch_size=64, device="cpu"),
        pruning=dataclasses.replace(base.pruning, ramp_end_epoch=2, warmup_steps=0, frequency=2),
        # AdamWPrune prunes by its own warm-up and frequency (ADAMWPRUNE_*), not the Pruning menu's
        optimizer_params={**base.optimizer_params, "adamwprune": dataclasses.replace(
            base.optimizer_params["adamwprune"], warmup_steps=0, frequency=2, ramp_end_step=0)},
        model_params={**base.model_params, "toy": {}})
    runs = expand(settings)
    assert [run.run_id for run in runs] == ["toy_adamw_none", "toy_adamw_magnitude_50", "toy_adamwprune_none",
                                            "toy_adamwprune_state_50"]
    plan = "\n".join(plan_lines(settings.runner, runs, tmp_path / "results"))
    assert all(run.run_id in plan for run in runs) and " constant)" in plan  # the registry's LR decay

    results_dir = create_results_dir(tmp_path / "results", tmp_path / ".config", "toy", runs)
    counts = run_matrix(results_dir, runs, settings.runner, out=lambda line: None)
    logs = {p.parent.name: p.read_text()[-2000:] for p in results_dir.glob("*/output.log")}
    assert counts.get("success") == 4, logs

    table = load_results(results_dir)
    assert sorted(table["run_id"]) == sorted(run.run_id for run in runs)
    assert set(table["model"]) == {"toy"} and set(table["task"]) == {"classification"}
    assert (table["final_accuracy_pct"] > 80).all(), table[["run_id", "final_accuracy_pct"]]
    pruned = table[table["pruning"] != "none"]
    assert ((pruned["sparsity_pct"] - 50).abs() < 1).all(), pruned[["run_id", "sparsity_pct"]]  # measured
    write_reports(table, results_dir, "toy")
    summary = (results_dir / "summary_report.txt").read_text()
    assert all(run.run_id in summary for run in runs)


def test_an_unregistered_model_is_a_user_error():
    with pytest.raises(config.UserError, match="'nope' is not registered.*lenet5"):
        models.model_entry("nope")


# --- the registry agrees with the Kconfig tree and the model folders ------------------


@pytest.mark.parametrize("name", REAL_MODELS)
def test_every_model_has_its_menu_entries_and_folder(kconf, name):
    entry = models.model_entry(name)
    suffix = symbol_suffix(name)
    for symbol in (f"MODEL_SELECT_{suffix}", f"MODEL_ENABLE_{suffix}", f"MODEL_{suffix}"):
        assert symbol in kconf.syms, symbol
    assert _prompt(kconf, f"MODEL_SELECT_{suffix}") == entry.title == _prompt(kconf, f"MODEL_ENABLE_{suffix}")
    assert str(Path(name) / "Kconfig") in {Path(f).relative_to(ROOT).as_posix() if os.path.isabs(f) else f
                                          for f in kconf.kconfig_filenames}
    trainer = ROOT / (entry.trainer.replace(".", "/") + ".py")
    functions = {node.name for node in ast.walk(ast.parse(trainer.read_text())) if isinstance(node, ast.FunctionDef)}
    names = {target.id for node in ast.walk(ast.parse(trainer.read_text())) if isinstance(node, ast.Assign)
             for target in node.targets if isinstance(target, ast.Name)}
    assert "prepare_data" in functions | names and "__main__" in trainer.read_text()


@pytest.mark.parametrize("name", REAL_MODELS)
def test_every_model_parameter_names_a_kconfig_symbol(kconf, name):
    for param in models.model_entry(name).params:
        if param.kind == "choice" and not param.choices:
            entries = [s for s in kconf.syms if s.startswith(param.symbol) and kconf.syms[s].choice]
            assert len(entries) >= 2, param
        else:
            for symbol in [s for _, s in param.choices] or [param.symbol]:
                assert symbol in kconf.syms, (name, param.name, symbol)
                want = {"bool": kconfiglib.BOOL, "int": kconfiglib.INT, "string": kconfiglib.STRING,
                        "number": kconfiglib.STRING, "choice": kconfiglib.BOOL}[param.kind]
                assert kconf.syms[symbol].orig_type == want, (name, param.name, symbol)


def test_every_model_in_the_menu_is_registered(kconf):
    in_menu = {s[len("MODEL_SELECT_"):] for s in kconf.syms if s.startswith("MODEL_SELECT_")}
    assert in_menu == {symbol_suffix(name) for name in REAL_MODELS} == {symbol_suffix(n) for n in models.model_names()}


def test_gpt2_sizes_in_the_menu_are_the_model_s_sizes(kconf):
    from gpt2.sizes import SIZES
    from lib.upstream_aliases import choice_entries_by_prompt

    assert set(choice_entries_by_prompt(kconf, "GPT2_SIZE_")) == set(SIZES)


def test_registry_holds_upstream_s_per_model_recipe():
    """Transcribed from upstream: LeNet-5 trains at a constant rate, the others decay by cosine;
    only GPT-2 clips gradients (1.0, nanoGPT) and is a language model."""
    assert {n: models.model_entry(n).lr_schedule for n in REAL_MODELS} == {
        "lenet5": "constant", "resnet18": "cosine", "resnet50": "cosine", "gpt2": "cosine"}
    assert {n: models.model_entry(n).grad_clip_norm for n in REAL_MODELS} == {
        "lenet5": 0.0, "resnet18": 0.0, "resnet50": 0.0, "gpt2": 1.0}
    assert {n for n in REAL_MODELS if models.task_of(n) == models.LANGUAGE_MODELING} == {"gpt2"}


# --- optimizer, pruning and bitter names agree everywhere -----------------------------


def test_optimizer_names_agree(kconf):
    assert config.OPTIMIZERS == tuple(OPTIMIZER_BUILDERS)
    for name in config.OPTIMIZERS:
        assert f"OPTIMIZER_SELECT_{symbol_suffix(name)}" in kconf.syms
        assert f"OPTIMIZER_ENABLE_{symbol_suffix(name)}" in kconf.syms
    assert {s[len("OPTIMIZER_SELECT_"):] for s in kconf.syms if s.startswith("OPTIMIZER_SELECT_")} == {
        symbol_suffix(n) for n in config.OPTIMIZERS}


def test_pruning_method_names_agree(kconf):
    external = set(config.PRUNING_METHODS) - {"none", "state"}
    assert external == {name for name in SCORES if not name.startswith("bitter")}
    assert set(RUN_ID_METHODS) == set(config.PRUNING_METHODS)
    for name in config.PRUNING_METHODS:
        assert f"PRUNING_SELECT_{symbol_suffix(name)}" in kconf.syms
        assert f"PRUNING_ENABLE_{symbol_suffix(name)}" in kconf.syms


def test_bitter_variant_names_agree(kconf):
    assert config.BITTER_VARIANTS == STATE_SCORES
    for name in STATE_SCORES:
        assert f"GPT2_ADAMWPRUNE_VARIANT_{symbol_suffix(name)}" in kconf.syms


@pytest.mark.parametrize("method", ["none", "magnitude", "movement", "movement-upstream", "state"])
def test_report_reads_back_every_run_id_the_matrix_makes(method):
    """Each (model, method) run ID the matrix writes is taken apart by the report's parser."""
    from lib.matrix import make_run_id

    for model in REAL_MODELS:
        variant = "bitter7" if method == "state" and model == "gpt2" else None
        run_id = make_run_id(model, "adamwprune" if method in ("none", "state") else "adamw", method, variant, 70.0, 3)
        cells = parse_run_id(run_id)
        assert (cells["model"], cells["pruning"], cells["variant"]) == (model, method, variant), run_id
