"""The test matrix: Settings -> RunSpecs with upstream-shaped run IDs.

Rules (DESIGN.md "The test matrix"): pruning `none` is one run at sparsity 0;
`state` pruning exists only inside AdamWPrune, which takes only `none` or
`state` (and gets `state` whenever another method is enabled); magnitude and
movement pair with every other optimizer; GPT-2 state runs multiply by the
enabled bitter variants; seeds multiply every run and tag the ID only when
there is more than one.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from lib.config import Settings, load_settings
from lib.errors import UserError
from lib.matrix import RunSpec, expand, format_sparsity, make_run_id

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = ROOT / "tests/fixtures/upstream-defconfigs"


def quiet_settings(path: Path) -> Settings:
    return load_settings(path, warn=lambda message: None)


@pytest.fixture(scope="module")
def base() -> Settings:
    """lenet5-quick: LeNet-5, SGD/Adam/AdamW, none + magnitude at 50/70/90%."""
    return quiet_settings(ROOT / "defconfigs/lenet5-quick")


def ids(settings: Settings) -> list[str]:
    return [run.run_id for run in expand(settings)]


def make(base: Settings, **changes) -> Settings:
    return dataclasses.replace(base, **changes)


# --- run IDs -------------------------------------------------------------------------------


@pytest.mark.parametrize("args, run_id", [
    (("resnet18", "adam", "none", None, 0.0, None), "resnet18_adam_none"),
    (("resnet18", "adam", "movement", None, 70.0, None), "resnet18_adam_movement_70"),
    (("gpt2", "adamwprune", "state", "bitter7", 50.0, None), "gpt2_adamwprune_bitter7_state_50"),
    (("lenet5", "sgd", "magnitude", None, 92.5, 3), "lenet5_sgd_magnitude_92.5_s3"),
    (("lenet5", "sgd", "none", None, 0.0, 0), "lenet5_sgd_none_s0"),
])
def test_run_ids_keep_the_upstream_shape(args, run_id):
    assert make_run_id(*args) == run_id


def test_format_sparsity_drops_a_trailing_zero():
    assert (format_sparsity(70.0), format_sparsity(92.5), format_sparsity(65.0)) == ("70", "92.5", "65")


# --- expansion rules -----------------------------------------------------------------------


def test_pruning_none_is_one_run_at_zero(base):
    runs = expand(make(base, optimizers=("adam",), pruning_methods=("none",)))
    assert [(r.run_id, r.pruning, r.target_sparsity_pct, r.variant) for r in runs] == [
        ("lenet5_adam_none", "none", 0.0, None)]


def test_magnitude_and_movement_pair_with_every_other_optimizer(base):
    settings = make(base, optimizers=("sgd", "adamwspam"), pruning_methods=("magnitude", "movement"),
                    sparsities_pct=(50.0, 90.0))
    assert ids(settings) == [
        "lenet5_sgd_magnitude_50", "lenet5_sgd_magnitude_90", "lenet5_sgd_movement_50", "lenet5_sgd_movement_90",
        "lenet5_adamwspam_magnitude_50", "lenet5_adamwspam_magnitude_90",
        "lenet5_adamwspam_movement_50", "lenet5_adamwspam_movement_90"]


def test_adamwprune_takes_only_none_and_state(base):
    settings = make(base, optimizers=("adamwprune",), pruning_methods=("none", "magnitude", "movement"),
                    adamwprune_sparsities_pct=(50.0, 70.0))
    runs = expand(settings)
    assert {r.pruning for r in runs} == {"none", "state"}
    assert [r.run_id for r in runs] == ["lenet5_adamwprune_none", "lenet5_adamwprune_state_50",
                                        "lenet5_adamwprune_state_70"]


def test_adamwprune_gets_state_automatically_when_magnitude_is_enabled(base):
    settings = make(base, optimizers=("adamwprune",), pruning_methods=("magnitude",),
                    adamwprune_sparsities_pct=(90.0,))
    assert ids(settings) == ["lenet5_adamwprune_state_90"]


def test_adamwprune_state_uses_its_own_sparsity_levels(base):
    settings = make(base, optimizers=("sgd", "adamwprune"), pruning_methods=("magnitude",),
                    sparsities_pct=(50.0,), adamwprune_sparsities_pct=(70.0,))
    assert ids(settings) == ["lenet5_sgd_magnitude_50", "lenet5_adamwprune_state_70"]


def test_state_never_pairs_with_other_optimizers(base):
    settings = make(base, optimizers=("sgd", "adam", "adamw", "adamwadv", "adamwspam", "adamwprune"),
                    pruning_methods=("none", "magnitude", "state"))
    for run in expand(settings):
        assert (run.pruning == "state") <= (run.optimizer == "adamwprune")
    assert ids(make(settings, optimizers=("adam",))) == [
        "lenet5_adam_none", "lenet5_adam_magnitude_50", "lenet5_adam_magnitude_70", "lenet5_adam_magnitude_90"]


def test_gpt2_state_runs_multiply_by_bitter_variants(base):
    settings = make(base, models=("gpt2",), optimizers=("adamwprune",), pruning_methods=("none", "state"),
                    gpt2_variants=("bitter0", "bitter7"), adamwprune_sparsities_pct=(50.0, 70.0))
    assert ids(settings) == ["gpt2_adamwprune_none",
                             "gpt2_adamwprune_bitter0_state_50", "gpt2_adamwprune_bitter0_state_70",
                             "gpt2_adamwprune_bitter7_state_50", "gpt2_adamwprune_bitter7_state_70"]
    assert [r.variant for r in expand(settings)] == [None, "bitter0", "bitter0", "bitter7", "bitter7"]


def test_bitter_variants_do_not_multiply_other_models_or_methods(base):
    settings = make(base, models=("lenet5", "gpt2"), optimizers=("adam", "adamwprune"),
                    pruning_methods=("magnitude",), sparsities_pct=(50.0,), adamwprune_sparsities_pct=(50.0,),
                    gpt2_variants=("bitter1", "bitter7"))
    assert ids(settings) == ["lenet5_adam_magnitude_50", "lenet5_adamwprune_state_50",
                             "gpt2_adam_magnitude_50",
                             "gpt2_adamwprune_bitter1_state_50", "gpt2_adamwprune_bitter7_state_50"]


def test_gpt2_state_runs_without_any_bitter_variant_are_refused_not_defaulted(base):
    """No variant enabled: an error naming the menu, never a score nobody chose; other models are unaffected."""
    settings = make(base, models=("gpt2",), optimizers=("adamwprune",), pruning_methods=("state",),
                    gpt2_variants=())
    with pytest.raises(UserError, match="at least one bitter variant.*GPT2_ADAMWPRUNE_VARIANT_"):
        expand(settings)
    assert ids(make(settings, models=("lenet5",), adamwprune_sparsities_pct=(50.0,))) == ["lenet5_adamwprune_state_50"]
    assert ids(make(settings, pruning_methods=("none",))) == ["gpt2_adamwprune_none"]


def test_several_seeds_multiply_runs_and_tag_ids(base):
    settings = make(base, optimizers=("adam",), pruning_methods=("none", "magnitude"), sparsities_pct=(70.0,),
                    seeds=(1, 2))
    runs = expand(settings)
    assert [r.run_id for r in runs] == ["lenet5_adam_none_s1", "lenet5_adam_none_s2",
                                        "lenet5_adam_magnitude_70_s1", "lenet5_adam_magnitude_70_s2"]
    assert [r.seed for r in runs] == [1, 2, 1, 2]


def test_one_seed_leaves_ids_untagged(base):
    runs = expand(make(base, optimizers=("adam",), pruning_methods=("none",), seeds=(42,)))
    assert [(r.run_id, r.seed) for r in runs] == [("lenet5_adam_none", 42)]


def test_run_ids_are_unique(base):
    settings = make(base, models=("lenet5", "gpt2"), optimizers=("sgd", "adamwprune"),
                    pruning_methods=("none", "magnitude", "movement"), gpt2_variants=("bitter0", "bitter7"),
                    seeds=(1, 2, 3))
    run_ids = ids(settings)
    assert len(run_ids) == len(set(run_ids)) == 3 * (2 * (1 + 2 * 3) + (1 + 3) + (1 + 2 * 3))


@pytest.mark.parametrize("changes", [
    dict(optimizers=("sgd", "adam"), pruning_methods=("state",)),
    dict(pruning_methods=()),
])
def test_a_config_that_expands_to_nothing_is_a_user_error(base, changes):
    with pytest.raises(UserError, match="no runs"):
        expand(make(base, **changes))


def test_state_only_through_kconfig_with_sgd_is_a_user_error(tmp_path):
    config = tmp_path / ".config"
    config.write_text("CONFIG_OPTIMIZER_SELECT_SGD=y\nCONFIG_PRUNING_MODE_SINGLE=y\n"
                      "CONFIG_PRUNING_SELECT_STATE=y\n")
    with pytest.raises(UserError, match="AdamWPrune"):
        expand(quiet_settings(config))


# --- real configurations -------------------------------------------------------------------


def test_upstream_lenet5_full_matrix_is_39_runs():
    runs = expand(quiet_settings(UPSTREAM / "lenet5-test-matrix-full"))
    # 5 optimizers x (none + magnitude/movement x 50/70/90) + adamwprune x (none + state x 3)
    assert len(runs) == 5 * (1 + 2 * 3) + (1 + 3) == 39
    run_ids = [r.run_id for r in runs]
    for optimizer in ("sgd", "adam", "adamw", "adamwadv", "adamwspam"):
        assert f"lenet5_{optimizer}_none" in run_ids
        assert f"lenet5_{optimizer}_movement_90" in run_ids
    assert [i for i in run_ids if "adamwprune" in i] == [
        "lenet5_adamwprune_none", "lenet5_adamwprune_state_50", "lenet5_adamwprune_state_70",
        "lenet5_adamwprune_state_90"]
    assert all(r.seed == 1 for r in runs)


def test_upstream_gpt2_bitter7_is_one_run():
    runs = expand(quiet_settings(UPSTREAM / "gpt2-finewebedu-bitter7"))
    assert [r.run_id for r in runs] == ["gpt2_adamwprune_bitter7_state_50"]
    run = runs[0]
    assert (run.model, run.optimizer, run.pruning, run.variant, run.target_sparsity_pct) == (
        "gpt2", "adamwprune", "state", "bitter7", 50.0)
    assert run.optimizer_params.base == "adamwspam"
    assert run.model_params["dataset"] == "finewebedu"


def test_lenet5_quick_is_12_runs(base):
    runs = expand(base)
    assert len(runs) == 12 == 3 * (1 + 3)
    assert [r.run_id for r in runs[:4]] == ["lenet5_sgd_none", "lenet5_sgd_magnitude_50",
                                            "lenet5_sgd_magnitude_70", "lenet5_sgd_magnitude_90"]


def test_runs_carry_the_resolved_hyperparameters(base):
    run = next(r for r in expand(base) if r.run_id == "lenet5_adam_magnitude_70")
    assert run.training.batch_size == 64
    assert run.training.learning_rate == 0.002
    assert run.pruning_settings.frequency == 20
    assert run.optimizer_params.betas == (0.9, 0.999)
    assert set(run.to_json()["hyperparams"]) == {"training", "pruning", "optimizer", "model"}


# --- RunSpec as data -----------------------------------------------------------------------


def test_runspec_json_round_trip(base):
    settings = make(base, models=("gpt2",), optimizers=("adamwprune",), pruning_methods=("state",),
                    gpt2_variants=("bitter7",), adamwprune_sparsities_pct=(50.0,), seeds=(1, 2))
    for run in expand(settings):
        data = json.loads(json.dumps(run.to_json()))
        back = RunSpec.from_json(data)
        assert back == run
        assert json.loads(json.dumps(back.to_json())) == data
        assert back.training == run.training and back.variant_budget == run.variant_budget


def test_runspec_is_frozen(base):
    run = expand(base)[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.seed = 7
