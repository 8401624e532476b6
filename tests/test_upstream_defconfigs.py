"""Every upstream AdamWPrune defconfig loads and expands to the runs upstream gives it.

The reference is independent of lib/: each file is evaluated with upstream's
own Kconfig tree (tests/fixtures/upstream/kconfig, read by kconfiglib), and the
evaluated configuration is expanded by a transcription of upstream's
scripts/run_test_matrix.py (get_test_matrix + generate_combinations, as
published at 55de90e): models, optimizers and methods from the mode symbols,
sparsity levels from TEST_SPARSITY_N, else TARGET_SPARSITY, else 0.9;
AdamWPrune only with none/state, state only with AdamWPrune, GPT-2 AdamWPrune
runs once per enabled bitter variant.
"""
from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path

import kconfiglib
import pytest

from lib.config import load_kconfig, load_settings, new_kconfig
from lib.matrix import expand
from lib.optim.lr_schedules import peak_lr
from lib.upstream_aliases import UPSTREAM_ONLY_SYMBOLS

FIXTURES = Path(__file__).resolve().parent / "fixtures/upstream"
DEFCONFIGS = sorted((FIXTURES / "defconfigs").iterdir())
MODELS = ("lenet5", "resnet18", "resnet50", "gpt2")
OPTIMIZERS = ("sgd", "adam", "adamw", "adamwadv", "adamwspam", "adamwprune")
METHODS = ("none", "magnitude", "movement", "state")


def upstream_config(path: Path) -> dict[str, str]:
    """The .config upstream's Kconfig writes for `path`, as upstream's runner parses it."""
    old = os.environ.get("srctree")
    os.environ["srctree"] = str(FIXTURES / "kconfig")
    try:
        kconf = kconfiglib.Kconfig(str(FIXTURES / "kconfig/Kconfig"), warn=False)
        kconf.load_config(str(path))
        text = kconf._config_contents(None)  # what write_config() would write
    finally:
        if old is None:
            os.environ.pop("srctree")
        else:
            os.environ["srctree"] = old
    config = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, value = line.split("=", 1)
            config[key[len("CONFIG_"):]] = value.strip('"')
    return config


def _first(config: dict[str, str], prefix: str, names: tuple[str, ...]) -> list[str]:
    return next(([n] for n in names if config.get(f"{prefix}{n.upper()}") == "y"), [])


def upstream_runs(config: dict[str, str]) -> set[tuple]:
    """(model, optimizer, method, sparsity %, variant) of each run upstream's runner starts."""
    if config.get("MODEL_MODE_MULTIPLE") == "y":
        models = [m for m in MODELS if "y" in (config.get(f"MODEL_ENABLE_{m.upper()}"),
                                              config.get(f"TEST_MODEL_{m.upper()}"))]
    else:
        models = _first(config, "MODEL_SELECT_", MODELS)
    models = models or [m.strip() for m in config.get("TEST_MODELS", "").split(",") if m.strip()] or ["lenet5"]
    if config.get("OPTIMIZER_MODE_MULTIPLE") == "y":
        optimizers = [o for o in OPTIMIZERS if config.get(f"OPTIMIZER_ENABLE_{o.upper()}") == "y"]
    else:
        optimizers = _first(config, "OPTIMIZER_SELECT_", OPTIMIZERS)
    if config.get("PRUNING_MODE_MULTIPLE") == "y":
        methods = [p for p in METHODS if config.get(f"PRUNING_ENABLED_{p.upper()}") == "y"]
    elif config.get("PRUNING_MODE_SINGLE") == "y":
        methods = _first(config, "PRUNING_SELECT_", METHODS)
    else:
        methods = ["none"]
    methods = methods or ["none"]
    variants = [f"bitter{i}" for i in range(10) if config.get(f"GPT2_ADAMWPRUNE_VARIANT_BITTER{i}") == "y"]
    levels = [level for level in (50, 70, 90, 95, 99) if config.get(f"TEST_SPARSITY_{level}") == "y"]
    if not levels and config.get("TARGET_SPARSITY"):
        levels = [round(float(config["TARGET_SPARSITY"]) * 100)]
    levels = levels or [90]
    runs = set()
    for model, optimizer, method in itertools.product(models, optimizers, methods):
        if optimizer == "adamwprune" and method not in ("none", "state"):
            continue  # AdamWPrune prunes by its state only
        if optimizer != "adamwprune" and method == "state":
            continue
        for variant in (variants or ["bitter0"]) if optimizer == "adamwprune" else [None]:
            for level in [0] if method == "none" else levels:
                runs.add((model, optimizer, method, level, variant if model == "gpt2" else None))
    return runs


def our_runs(path: Path) -> set[tuple]:
    runs = expand(load_settings(path, warn=lambda message: None))
    return {(r.model, r.optimizer, r.pruning, round(r.target_sparsity_pct), r.variant) for r in runs}


def test_there_are_39_upstream_defconfigs():
    assert len(DEFCONFIGS) == 39


@pytest.mark.parametrize("path", DEFCONFIGS, ids=[p.name for p in DEFCONFIGS])
def test_upstream_defconfig_expands_to_upstreams_runs(path):
    expected = upstream_runs(upstream_config(path))
    assert expected  # the reference itself found runs
    assert our_runs(path) == expected


def test_reference_reads_upstream_semantics_not_the_raw_file():
    """The reference is not a copy of the file: TARGET_SPARSITY=0.7 unquoted is ignored by upstream's
    Kconfig (0.9 stays), and MODEL="resnet18" (no prompt upstream) leaves upstream's default LeNet-5."""
    config = upstream_config(FIXTURES / "defconfigs/resnet18--resnet18-movement-pruning-compare")
    assert config["MODEL_SELECT_LENET5"] == "y" and config["SPAM_INTERVAL"] == "1000"
    runs = upstream_runs(config)
    assert ("lenet5", "adamw", "movement", 90, None) in runs and not any(r[0] == "resnet18" for r in runs)


def test_the_upstream_symbol_list_is_what_upstreams_tree_defines_or_sets_and_we_do_not():
    """lib/upstream_symbols.txt (which decides that a file is upstream's) against the fixture tree."""
    names: set[str] = set()
    for kconfig in (FIXTURES / "kconfig").rglob("Kconfig*"):
        names |= set(re.findall(r"^\s*(?:menu)?config\s+([A-Z0-9_]+)", kconfig.read_text(), re.M))
    for path in DEFCONFIGS:
        names |= set(re.findall(r"^(?:# )?CONFIG_([A-Z0-9_]+)(?:=| is not set)", path.read_text(), re.M))
    assert UPSTREAM_ONLY_SYMBOLS == names - set(new_kconfig().syms)


@pytest.mark.parametrize("path", DEFCONFIGS, ids=[p.name for p in DEFCONFIGS])
def test_every_upstream_defconfig_is_recognised_as_upstreams(path):
    assert load_kconfig(path).upstream


# Upstream's Kconfig, LEARNING_RATE help (tests/fixtures/upstream/kconfig/Kconfig):
#   LeNet-5: Uses this value directly for all optimizers
#   ResNet-18: Auto-scales for Adam optimizers (resnet18/train.py line ~130)
#   - SGD: Uses the configured value directly
#   - Adam/AdamW/AdamWPrune: Multiplies by 0.001
#   - Example: Set to 0.1 to get SGD=0.1, Adam-based=0.0001
UPSTREAM_LR_SCALE = {"resnet18": {"sgd": 1.0, "other": 0.001}, "lenet5": {"sgd": 1.0, "other": 1.0}}


def upstream_learning_rate(config: dict[str, str], model: str, optimizer: str) -> float:
    scale = UPSTREAM_LR_SCALE[model]["sgd" if optimizer == "sgd" else "other"]
    return float(config["LEARNING_RATE"]) * scale


LR_FILES = [p for p in DEFCONFIGS if upstream_config(p).get("MODEL_SELECT_RESNET18") == "y"
            or p.name.startswith("lenet5--")]


@pytest.mark.parametrize("path", LR_FILES, ids=[p.name for p in LR_FILES])
def test_upstream_defconfig_runs_get_the_learning_rate_upstreams_trainer_used(path):
    """Each run's peak rate is the one upstream's trainer derives from the file's LEARNING_RATE:
    LeNet-5 uses it as is, ResNet-18 for SGD too, and x0.001 for every Adam-family optimizer."""
    config = upstream_config(path)
    runs = expand(load_settings(path, warn=lambda message: None))
    for run in runs:
        assert peak_lr(run.optimizer_params, run.training) == pytest.approx(
            upstream_learning_rate(config, run.model, run.optimizer)), run.run_id


def test_upstream_resnet18_files_are_among_those_checked():
    names = {p.name for p in LR_FILES}
    assert {"resnet18--resnet18-full-pruning-compare", "resnet18--resnet18-adamwprune", "lenet5--lenet5-sgd"} <= names


def test_the_legacy_results_config_gives_each_run_the_rate_it_recorded():
    """tests/fixtures/legacy/...20250903_180836 is an upstream ResNet-18 result directory: loading its
    config.txt gives its five runs, each at the learning rate its all_results.json recorded for epoch 1
    (0.0001 for Adam and AdamWPrune from LEARNING_RATE="0.1")."""
    legacy = Path(__file__).resolve().parent / "fixtures/legacy/test_matrix_results_20250903_180836"
    recorded = {r["test_id"].removesuffix("_0"): r["learning_rate"][0]
                for r in json.loads((legacy / "all_results.json").read_text())}
    runs = {r.run_id: peak_lr(r.optimizer_params, r.training)
            for r in expand(load_settings(legacy / "config.txt", warn=lambda message: None))}
    assert runs == pytest.approx(recorded)


# Upstream's ResNet-18 trainer (resnet18/train.py, mcgrof/AdamWPrune) builds its pruners as
# MagnitudePruning(model, target_sparsity=..., warmup_steps=args.pruning_warmup) and MovementPruning(...)
# alike, so they keep their constructors' ramp_end_step=3000 and pruning_frequency=100 (lib/magnitude_pruning.py,
# lib/movement_pruning.py) whatever PRUNING_RAMP_END_EPOCH and PRUNING_FREQUENCY say; it discards the clip norm
# create_optimizer returns and never clips. Its AdamWPrune state pruning reads ADAMWPRUNE_WARMUP_STEPS and
# ADAMWPRUNE_FREQUENCY (lib/optimizers.py, update_adamprune_masks).
UPSTREAM_RESNET18_PRUNER = {"ramp_end_step": 3000, "frequency": 100}
RESNET18_STEPS_PER_EPOCH = 391  # CIFAR-10's 50,000 images at batch 128, the last batch partial


@pytest.mark.parametrize("path", DEFCONFIGS, ids=[p.name for p in DEFCONFIGS])
def test_upstream_resnet18_runs_get_what_upstreams_trainer_hard_codes(path):
    """Every ResNet-18 run of an upstream file: magnitude and movement ramp from the file's PRUNING_WARMUP
    to step 3000 with a mask update every 100 steps, state runs on AdamWPrune's own settings, and nothing
    clips gradients. Other models' runs keep the file's ramp and frequency."""
    from lib.train.harness import grad_clip_norm

    config = upstream_config(path)
    for run in expand(load_settings(path, warn=lambda message: None)):
        if run.pruning in ("magnitude", "movement"):
            warmup, frequency = int(config["PRUNING_WARMUP"]), int(config["PRUNING_FREQUENCY"])
            upstream = UPSTREAM_RESNET18_PRUNER if run.model == "resnet18" else {"ramp_end_step": 0,
                                                                                  "frequency": frequency}
            assert run.pruning_timing() == (warmup, upstream["ramp_end_step"], upstream["frequency"]), run.run_id
        elif run.pruning == "state" and run.model == "resnet18":
            assert run.pruning_timing() == (int(config["ADAMWPRUNE_WARMUP_STEPS"]), 0,
                                            int(config["ADAMWPRUNE_FREQUENCY"])), run.run_id
        if run.model == "resnet18":
            assert grad_clip_norm(run) == 0.0, run.run_id
            assert run.optimizer_params.adv is None or run.optimizer_params.adv.grad_clip == 0.0, run.run_id


def test_an_upstream_resnet18_file_ramps_and_clips_as_upstreams_trainer_did():
    """resnet18-full-pruning-compare asks for a ramp to epoch 75 and clipping at 1.0; upstream's trainer
    ignored both: its pruners reached the target at step 3000 (epoch 8 at 391 steps per epoch) and no
    gradient was clipped, AdamWAdv's included (upstream's trainer applies that clip, and this one drops it)."""
    from lib.pruning.schedules import pruning_ramp
    from lib.train.harness import grad_clip_norm

    path = FIXTURES / "defconfigs/resnet18--resnet18-full-pruning-compare"
    assert re.search(r'^CONFIG_PRUNING_RAMP_END_EPOCH=75$', path.read_text(), re.M)
    assert re.search(r'^CONFIG_GRADIENT_CLIP_NORM="1.0"$', path.read_text(), re.M)
    runs = {r.run_id: r for r in expand(load_settings(path, warn=lambda message: None))}
    total = 100 * RESNET18_STEPS_PER_EPOCH
    for run_id in ("resnet18_adamw_magnitude_70", "resnet18_sgd_movement_90"):
        ramp = pruning_ramp(runs[run_id], total, RESNET18_STEPS_PER_EPOCH)
        assert (ramp.warmup_steps, ramp.ramp_end_step, ramp.fitted_from) == (1000, 3000, None)
        assert runs[run_id].pruning_settings.frequency == 100
    assert {grad_clip_norm(run) for run in runs.values()} == {0.0}
    assert runs["resnet18_adamwadv_none"].optimizer_params.adv.grad_clip == 0.0


def test_the_legacy_results_config_reproduces_its_recorded_sparsity_ramp():
    """tests/fixtures/legacy/...20250903_180836 holds what upstream's ResNet-18 trainer measured at the end
    of each epoch: its magnitude and movement runs at 70% went 0, 0, 3.5%, 17.5%, ... 70% from epoch 8 on.
    The runs its config.txt expands to, pruned step by step with our pruner, measure the same."""
    import torch

    from lib.train.harness import build_pruner

    legacy = Path(__file__).resolve().parent / "fixtures/legacy/test_matrix_results_20250903_180836"
    recorded = {r["test_id"]: r["sparsity"] for r in json.loads((legacy / "all_results.json").read_text())}
    runs = {r.run_id: r for r in expand(load_settings(legacy / "config.txt", warn=lambda message: None))}
    epochs = 10
    for run_id in ("resnet18_adam_magnitude_70", "resnet18_adam_movement_70"):
        model = torch.nn.Linear(100, 100, bias=False)  # 10,000 weights: sparsity in steps of 0.01%
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        pruner = build_pruner(runs[run_id], model, optimizer, 100 * RESNET18_STEPS_PER_EPOCH,
                              RESNET18_STEPS_PER_EPOCH)
        measured = []
        for step in range(1, epochs * RESNET18_STEPS_PER_EPOCH + 1):
            if pruner.score.tracks == "movement":
                model.weight.grad = torch.ones_like(model.weight)
                pruner.before_optimizer_step()
            pruner.after_optimizer_step(step)
            if step % RESNET18_STEPS_PER_EPOCH == 0:
                measured.append(float((model.weight == 0).float().mean()))
        assert measured == pytest.approx(recorded[run_id][:epochs], abs=1e-4), run_id
