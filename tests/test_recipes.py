"""Our defconfigs named after an upstream experiment hold upstream's values (docs/recipes.md).

For each file in defconfigs/ with an upstream file of the same name in
tests/fixtures/upstream-defconfigs/, every symbol upstream's file sets and
our Kconfig defines must have upstream's value in ours, or a row in the
recipe table of that experiment saying why not. Two views: the files as
written (a tiny parser of its own, independent of lib/config) and the
values a user gets after loading ours (kconfiglib, defaults filled in).
"""
from __future__ import annotations

import re
from pathlib import Path

import kconfiglib
import pytest

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = ROOT / "tests/fixtures/upstream-defconfigs"
RECIPES = ROOT / "docs/recipes.md"
NAMES = sorted(p.name for p in (ROOT / "defconfigs").iterdir() if (UPSTREAM / p.name).is_file())


def assignments(path: Path) -> dict[str, str]:
    """CONFIG_NAME=value lines -> {NAME: value}, quotes stripped; comments and `is not set` ignored."""
    values = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and name.startswith("CONFIG_"):
            values[name.removeprefix("CONFIG_")] = value.strip().strip('"')
    return values


def same(ours: str, upstream: str) -> bool:
    """Equal as text, or as numbers ("50" and "50.0")."""
    if ours == upstream:
        return True
    try:
        return float(ours) == float(upstream)
    except ValueError:
        return False


def documented(name: str) -> set[str]:
    """Symbols in the first column of the table of the section that names defconfigs/<name>."""
    for section in RECIPES.read_text().split("\n## ")[1:]:
        if f"`defconfigs/{name}`" in section:
            rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
            return {symbol for cell in rows for symbol in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell)}
    raise AssertionError(f"docs/recipes.md has no section naming `defconfigs/{name}`")


@pytest.fixture(scope="module")
def kconf() -> kconfiglib.Kconfig:
    return kconfiglib.Kconfig(str(ROOT / "Kconfig"), warn_to_stderr=False)


def defined(kconf: kconfiglib.Kconfig, name: str) -> bool:
    return name in kconf.syms and bool(kconf.syms[name].nodes)


def test_the_experiments_with_upstream_names_are_checked():
    assert {"gpt2-finewebedu-bitter7", "gpt2-finewebedu-baseline-bitter7-bitter8"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_shared_assignments_hold_upstreams_values(name, kconf):
    ours, upstream = assignments(ROOT / "defconfigs" / name), assignments(UPSTREAM / name)
    differing = {s: (ours[s], upstream[s]) for s in ours.keys() & upstream.keys()
                 if defined(kconf, s) and not same(ours[s], upstream[s])}
    assert not {s: v for s, v in differing.items() if s not in documented(name)}


@pytest.mark.parametrize("name", NAMES)
def test_loaded_values_hold_upstreams_values(name, kconf):
    kconf.load_config(str(ROOT / "defconfigs" / name))
    differing = {s: (kconf.syms[s].str_value, v) for s, v in assignments(UPSTREAM / name).items()
                 if defined(kconf, s) and not same(kconf.syms[s].str_value, v)}
    assert not {s: v for s, v in differing.items() if s not in documented(name)}


def test_the_table_parser_sees_documented_rows():
    assert {"GPT2_MAX_TIME", "DATA_DIR"} <= documented("gpt2-finewebedu-bitter7")
    assert "ADAMWPRUNE_FREQUENCY" not in documented("gpt2-finewebedu-bitter7")


# Upstream's own Kconfig fills in what its file leaves out (docs/recipes.md: "or from upstream's Kconfig
# default when the defconfig leaves the symbol out"): the upstream file evaluated by upstream's Kconfig tree.
UPSTREAM_FILES = {name: UPSTREAM / name for name in NAMES if name.startswith("gpt2-")}


@pytest.mark.parametrize("name", sorted(UPSTREAM_FILES))
def test_loaded_values_hold_upstreams_effective_values(name, kconf):
    """Every symbol both Kconfigs define has, after loading ours, the value upstream's Kconfig gives
    upstream's file (its defaults included), or a row saying why not.

    Reference: ../shared/upstream/kconfig (copied to tests/fixtures/upstream/kconfig) evaluating
    ../shared/upstream/defconfigs/gpt2--<name>, through tests/test_upstream_defconfigs.py's
    upstream_config (kconfiglib on upstream's tree, not lib/config). E.g. upstream gpt2/Kconfig:
    `config GPT2_DROPOUT` ... `default "0.1"`, which neither GPT-2 file sets.
    """
    from tests.test_upstream_defconfigs import upstream_config

    effective = upstream_config(UPSTREAM_FILES[name])
    kconf.load_config(str(ROOT / "defconfigs" / name))
    differing = {s: (kconf.syms[s].str_value, v) for s, v in effective.items()
                 if defined(kconf, s) and not same(kconf.syms[s].str_value, v)}
    assert not {s: v for s, v in differing.items() if s not in documented(name)}


def test_upstream_effective_values_include_kconfig_defaults():
    """The reference above is upstream's evaluation, not the file: GPT2_DROPOUT is absent from the
    file and "0.1" in upstream gpt2/Kconfig."""
    from tests.test_upstream_defconfigs import upstream_config

    path = UPSTREAM / "gpt2-finewebedu-bitter7"
    assert "GPT2_DROPOUT" not in assignments(path)
    assert upstream_config(path)["GPT2_DROPOUT"] == "0.1"


# ../shared/upstream/adamwprune_variants.md, "Variant Comparison Table", column "Sparsity Schedule":
# | bitter0 | Hybrid momentum-stability | Linear | ... | bitter1 | Pure magnitude | Linear | ...
# | bitter2 | Pure magnitude | Linear | ...; "Cubic Schedule (bitter3/bitter4)": progress ** 3.
UPSTREAM_VARIANT_CURVE = {"bitter0": lambda p: p, "bitter1": lambda p: p, "bitter2": lambda p: p,
                          "bitter3": lambda p: p ** 3, "bitter4": lambda p: p ** 3}


def test_bitter_lesson_state_runs_ramp_as_upstream_ran_bitter0_1_2():
    """gpt2-bitter-lesson (seed 003's bitter0/1/2 runs): each state run's sparsity at 1/4, 1/2 and
    3/4 of its ramp is the variants table's curve for its variant (Linear for bitter0-2)."""
    from lib.config import load_settings
    from lib.matrix import expand
    from lib.pruning.schedules import curve_for, target_fraction

    runs = [r for r in expand(load_settings(ROOT / "defconfigs/gpt2-bitter-lesson", warn=lambda message: None))
            if r.pruning == "state"]
    assert sorted(r.variant for r in runs) == ["bitter0", "bitter1", "bitter2"]
    for run in runs:
        curve = curve_for(run.pruning_settings.schedule, run.pruning)
        for p in (0.25, 0.5, 0.75):
            got = target_fraction(curve, 1000 + round(p * 1000), 1000, 2000, 0.5)
            assert got == pytest.approx(0.5 * UPSTREAM_VARIANT_CURVE[run.variant](p)), (run.variant, p)


# An upstream ResNet-18 CIFAR-10 result directory (2025-09-03; tests/fixtures/legacy is a copy of
# ../shared/fixtures/legacy): its all_results.json records, per run and epoch, the learning rate and the
# measured sparsity upstream's trainer actually had, and config.txt the .config it ran from.
LEGACY_RESNET18 = ROOT / "tests/fixtures/legacy/test_matrix_results_20250903_180836"


def _legacy_runs() -> dict[str, dict]:
    import json

    return {r["test_id"]: r for r in json.loads((LEGACY_RESNET18 / "all_results.json").read_text())}


def test_resnet18_recipe_trains_adam_family_at_upstreams_effective_rate():
    """Upstream's ResNet-18 trainer scales LEARNING_RATE by 0.001 for Adam-family optimizers
    (../shared/upstream/kconfig/Kconfig, LEARNING_RATE help: "ResNet-18: Auto-scales for Adam
    optimizers ... Multiplies by 0.001 ... Set to 0.1 to get SGD=0.1, Adam-based=0.0001"). The fixture
    ran from CONFIG_LEARNING_RATE="0.1" and recorded 0.0001 as the first-epoch rate of its Adam and
    AdamWPrune runs; defconfigs/resnet18-adamw-vs-adamwprune (seed 001) peaks there too."""
    from lib.config import load_settings
    from lib.matrix import expand
    from lib.optim.lr_schedules import peak_lr

    file_lr = float(assignments(LEGACY_RESNET18 / "config.txt")["LEARNING_RATE"])
    recorded = {r["optimizer"]: r["learning_rate"][0] for r in _legacy_runs().values()}
    assert recorded == {"adam": pytest.approx(file_lr * 0.001), "adamwprune": pytest.approx(file_lr * 0.001)}
    runs = expand(load_settings(ROOT / "defconfigs/resnet18-adamw-vs-adamwprune", warn=lambda message: None))
    assert {r.optimizer for r in runs} == {"adamw", "adamwprune"}
    for run in runs:
        assert peak_lr(run.optimizer_params, run.training) == pytest.approx(recorded["adam"]), run.run_id


def test_resnet18_recipe_state_runs_ramp_linearly_as_upstreams_did():
    """The fixture's AdamWPrune state run (bitter0, ResNet-18, 70%) measured these sparsities at the ends
    of epochs 3-8, equal steps as its magnitude run's: upstream ramped state pruning linearly then
    (../shared/fixtures/legacy/.../all_results.json, `sparsity`). Our seed-001 recipe's state runs
    follow the same curve: at 1/4, 1/2 and 3/4 of their ramp they are at 1/4, 1/2, 3/4 of the target."""
    from lib.config import load_settings
    from lib.matrix import expand
    from lib.pruning.schedules import curve_for, target_fraction

    legacy = _legacy_runs()
    state, magnitude = (legacy[k]["sparsity"][2:8] for k in ("resnet18_adamwprune_state_70",
                                                                "resnet18_adam_magnitude_70"))
    assert state == pytest.approx(magnitude, abs=1e-6)
    steps = [b - a for a, b in zip(state, state[1:-1])]  # the last epoch is clipped at the target
    assert steps == pytest.approx([steps[0]] * len(steps), abs=1e-6) and steps[0] == pytest.approx(0.14, abs=1e-6)
    runs = [r for r in expand(load_settings(ROOT / "defconfigs/resnet18-adamw-vs-adamwprune", warn=lambda m: None))
            if r.pruning != "none"]
    assert {r.pruning for r in runs} == {"magnitude", "movement", "state"}
    for run in runs:
        curve = curve_for(run.pruning_settings.schedule, run.pruning)
        for p in (0.25, 0.5, 0.75):
            got = target_fraction(curve, 1000 + round(p * 1000), 1000, 2000, 0.7)
            assert got == pytest.approx(0.7 * p), (run.run_id, p)


RESNET18_RECIPES = sorted(p for p in (ROOT / "defconfigs").iterdir() if p.name.startswith("resnet18-"))


@pytest.mark.parametrize("path", RESNET18_RECIPES, ids=lambda p: p.name)
def test_resnet18_recipes_ramp_as_they_say_not_as_upstreams_trainer(path):
    """Only an upstream file gets upstream's ResNet-18 trainer's fixed ramp (step 3000, every 100
    steps) and no clipping: our recipes ramp from their PRUNING_WARMUP to the end of their
    PRUNING_RAMP_END_EPOCH (state runs: ADAMWPRUNE_WARMUP_STEPS, ADAMWPRUNE_FREQUENCY) every
    PRUNING_FREQUENCY steps, as docs/recipes.md and configuration.md list them, and keep the model's clip."""
    from lib.config import load_settings
    from lib.matrix import expand
    from lib.pruning.schedules import pruning_ramp
    from lib.train.harness import grad_clip_norm

    values = assignments(path)
    steps_per_epoch = 391  # CIFAR-10 at batch 128
    assert values["BATCH_SIZE"] == "128"
    total = int(values["NUM_EPOCHS"]) * steps_per_epoch
    runs = expand(load_settings(path, warn=lambda message: None))
    assert {r.pruning for r in runs} > {"none"}
    for run in runs:
        assert run.training.grad_clip_norm is None and grad_clip_norm(run) == 0.0, run.run_id
        if run.pruning == "none":
            continue
        state = run.pruning == "state"
        warmup = int(values["ADAMWPRUNE_WARMUP_STEPS" if state else "PRUNING_WARMUP"])
        frequency = int(values["ADAMWPRUNE_FREQUENCY" if state else "PRUNING_FREQUENCY"])
        assert run.pruning_timing() == (warmup, 0, frequency), run.run_id
        ramp = pruning_ramp(run, total, steps_per_epoch)
        assert (ramp.warmup_steps, ramp.ramp_end_step) == (
            warmup, int(values["PRUNING_RAMP_END_EPOCH"]) * steps_per_epoch), run.run_id


def test_a_resnet18_file_of_ours_clips_as_it_says(tmp_path):
    """GRADIENT_CLIP_NORM in a file of ours is obeyed for ResNet-18 (upstream's files: see
    tests/test_upstream_defconfigs.py), and so is its PRUNING_FREQUENCY."""
    from lib.config import load_settings
    from lib.matrix import expand
    from lib.train.harness import grad_clip_norm

    config = tmp_path / "config"
    config.write_text((ROOT / "defconfigs/resnet18-sgd-strong-baseline").read_text()
                      + 'CONFIG_GRADIENT_CLIP_NORM="1.0"\nCONFIG_PRUNING_FREQUENCY=50\n')
    runs = expand(load_settings(config, warn=lambda message: None))
    assert {grad_clip_norm(run) for run in runs} == {1.0}
    assert {run.pruning_timing() for run in runs if run.pruning == "magnitude"} == {(2000, 0, 50)}
