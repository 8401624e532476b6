"""Configuration: a `.config` goes through kconfiglib and lib/config into one
frozen, typed Settings; bad numbers stop with one line naming the symbol, the
value and the allowed range; upstream AdamWPrune defconfigs load (unknown
symbols listed, not fatal) with their idioms translated; and the commands
behind `make defconfig-NAME`, `savedefconfig` and `listdefconfigs` work as
typed. Every .config written here lives in tmp_path.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from lib.config import (NUMBER_SYMBOLS, Settings, defconfig_name, load_kconfig, load_settings, parse_seeds,
                        settings_from_kconfig)
from lib.errors import UserError
from lib.matrix import expand

ROOT = Path(__file__).resolve().parent.parent
DEFCONFIGS = sorted(p for p in (ROOT / "defconfigs").iterdir() if p.is_file())
UPSTREAM = ROOT / "tests/fixtures/upstream-defconfigs"
KCONFIG_CLI = ROOT / "scripts/kconfig.py"

# A small valid base: LeNet-5, Adam and AdamW, magnitude pruning at one level.
BASE = """\
CONFIG_MODEL_MODE_SINGLE=y
CONFIG_MODEL_SELECT_LENET5=y
CONFIG_OPTIMIZER_MODE_MULTIPLE=y
CONFIG_OPTIMIZER_ENABLE_SGD=y
CONFIG_OPTIMIZER_ENABLE_ADAM=y
CONFIG_OPTIMIZER_ENABLE_ADAMW=y
CONFIG_PRUNING_MODE_SINGLE=y
CONFIG_PRUNING_SELECT_MAGNITUDE=y
"""


def write_config(tmp_path: Path, text: str, name: str = ".config") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def settings_of(tmp_path: Path, text: str) -> Settings:
    return load_settings(write_config(tmp_path, text), warn=lambda message: None)


def run_ids(settings: Settings) -> list[str]:
    return [run.run_id for run in expand(settings)]


# --- named defconfigs and upstream defconfigs ------------------------------------------


@pytest.mark.parametrize("path", DEFCONFIGS, ids=[p.name for p in DEFCONFIGS])
def test_every_defconfig_loads_and_validates(path):
    loaded = load_kconfig(path)
    assert loaded.unknown_symbols == ()
    assert loaded.warnings == ()
    settings = settings_from_kconfig(loaded.kconf)
    assert settings.models and settings.optimizers and settings.seeds
    assert expand(settings)


def test_upstream_lenet5_defconfig_lists_its_unknown_symbols():
    loaded = load_kconfig(UPSTREAM / "lenet5-test-matrix-full")
    assert {"NUM_WORKERS", "VERBOSE", "MOVEMENT_PRUNING_BETA", "STATE_PRUNING_STRATEGY"} <= set(
        loaded.unknown_symbols)
    # Upstream idioms with a meaning here are translated, not reported as unknown.
    assert not {"TEST_MODELS", "TEST_MODEL_LENET5"} & set(loaded.unknown_symbols)
    settings = settings_from_kconfig(loaded.kconf)
    assert settings.models == ("lenet5",)
    assert settings.training.device == "cuda"
    assert settings.training.batch_size == 512


def test_upstream_gpt2_defconfig_lists_its_unknown_symbols():
    loaded = load_kconfig(UPSTREAM / "gpt2-finewebedu-bitter7")
    assert {"NUM_WORKERS", "GPT2_FLASH_ATTENTION", "PIN_MEMORY"} <= set(loaded.unknown_symbols)
    assert "ENABLE_WANDB" not in loaded.unknown_symbols  # a tracker symbol here (lib/trackers/Kconfig)
    assert not {"MODEL", "TEST_MODELS", "OPTIMIZER", "PRUNING_METHOD", "GPT2_DATASET"} & set(
        loaded.unknown_symbols)
    settings = settings_from_kconfig(loaded.kconf)
    assert (settings.models, settings.optimizers, settings.pruning_methods) == (("gpt2",), ("adamwprune",),
                                                                                ("state",))
    assert settings.gpt2_variants == ("bitter7",)
    assert settings.training.learning_rate == pytest.approx(6e-4)
    assert settings.optimizer_params["adamwprune"].base == "adamwspam"
    assert settings.model_params["gpt2"]["max_time_s"] == 7200
    assert settings.model_params["gpt2"]["model_size"] == "124M"  # upstream's string, onto our choice


def test_load_settings_warns_once_naming_the_unknown_symbols():
    messages: list[str] = []
    load_settings(UPSTREAM / "lenet5-test-matrix-full", warn=messages.append)
    assert len(messages) == 1
    assert "NUM_WORKERS" in messages[0] and "VERBOSE" in messages[0]


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such configuration file"):
        load_kconfig(tmp_path / "absent.config")


# --- numbers held in string symbols ------------------------------------------------------


def test_learning_rate_that_is_not_a_number_names_symbol_value_and_range(tmp_path):
    with pytest.raises(UserError) as err:
        settings_of(tmp_path, BASE + 'CONFIG_LEARNING_RATE="abc"\n')
    message = str(err.value)
    assert "LEARNING_RATE" in message and '"abc"' in message
    assert NUMBER_SYMBOLS["LEARNING_RATE"].describe() in message  # (0, 10]
    assert "\n" not in message


@pytest.mark.parametrize("symbol, value", [
    ("ADAM_BETA1", "1.5"),
    ("ADAMW_BETA2", "1.5"),
    ("TARGET_SPARSITY", "-0.1"),
    ("LEARNING_RATE", "0"),
    ("LEARNING_RATE", "nan"),
    ("ADAMW_EPSILON", "0"),
])
def test_out_of_range_number_names_the_symbol(tmp_path, symbol, value):
    with pytest.raises(UserError) as err:
        settings_of(tmp_path, BASE + f'CONFIG_{symbol}="{value}"\n')
    message = str(err.value)
    assert f"CONFIG_{symbol}=" in message and value in message
    assert NUMBER_SYMBOLS[symbol].describe() in message


def test_negative_adamwprune_sparsity_names_the_symbol(tmp_path):
    text = BASE + "CONFIG_OPTIMIZER_ENABLE_ADAMWPRUNE=y\nCONFIG_ADAMWPRUNE_TARGET_SPARSITY=\"-0.5\"\n"
    with pytest.raises(UserError, match="ADAMWPRUNE_TARGET_SPARSITY"):
        settings_of(tmp_path, text)


def test_number_rule_bounds():
    fraction = NUMBER_SYMBOLS["TARGET_SPARSITY"]
    assert fraction.allows(0.0) and fraction.allows(0.99)
    assert not fraction.allows(1.0) and not fraction.allows(-0.01) and not fraction.allows(float("inf"))
    assert fraction.describe() == "[0, 1)"


@pytest.mark.parametrize("value", ["0", "1000001", "-3"])
def test_batch_size_out_of_range_names_the_symbol(tmp_path, value):
    with pytest.raises(UserError) as err:
        settings_of(tmp_path, BASE + f"CONFIG_BATCH_SIZE={value}\n")
    assert "BATCH_SIZE" in str(err.value) and value in str(err.value)
    assert "[1, 1000000]" in str(err.value)


@pytest.mark.parametrize("symbol", ["BATCH_SIZE", "NUM_EPOCHS"])
def test_int_symbol_that_is_not_a_number_names_the_symbol(tmp_path, symbol):
    with pytest.raises(UserError, match=symbol):
        settings_of(tmp_path, BASE + f"CONFIG_{symbol}=abc\n")


def test_a_value_of_the_wrong_type_names_its_line_and_does_not_say_ignored(tmp_path):
    """kconfiglib names no line for "the value '12x' is invalid for BATCH_SIZE ... -- assignment ignored",
    and the load stops here: the error names the line of the last assignment (the one that counts)."""
    text = BASE + "CONFIG_BATCH_SIZE=64\nCONFIG_SEED=1\nCONFIG_BATCH_SIZE=12x\n"
    with pytest.raises(UserError) as err:
        settings_of(tmp_path, text)
    line = len(text.splitlines())
    message = str(err.value)
    assert f".config:{line}: the value '12x' is invalid for BATCH_SIZE" in message, message
    assert "ignored" not in message and "fix or remove the line" in message


def test_valid_numbers_become_floats(tmp_path):
    settings = settings_of(tmp_path, BASE + 'CONFIG_LEARNING_RATE="2e-3"\nCONFIG_ADAM_BETA2="0.98"\n')
    assert settings.training.learning_rate == 2e-3
    assert settings.optimizer_params["adam"].betas == (0.9, 0.98)


@pytest.mark.parametrize("optimizer", ["ADAMWADV", "ADAMWSPAM"])
def test_adamw_betas_reach_adamw_family_optimizers(tmp_path, optimizer):
    settings = settings_of(tmp_path, f'CONFIG_OPTIMIZER_SELECT_{optimizer}=y\nCONFIG_ADAMW_BETA1="0.8"\n')
    assert settings.optimizer_params[optimizer.lower()].betas == (0.8, 0.999)


@pytest.mark.parametrize("optimizer", ["ADAMWADV", "ADAMWSPAM"])
def test_bad_adamw_beta_stops_adamw_family_optimizers(tmp_path, optimizer):
    with pytest.raises(UserError, match="ADAMW_BETA2"):
        settings_of(tmp_path, f'CONFIG_OPTIMIZER_SELECT_{optimizer}=y\nCONFIG_ADAMW_BETA2="7"\n')


def test_bad_device_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="DEVICE"):
        settings_of(tmp_path, BASE + 'CONFIG_DEVICE="gpu"\n')


# --- seeds ---------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, seeds", [("1 2 3", (1, 2, 3)), ("1,2", (1, 2)), (" 7 ", (7,)),
                                         ("0, 5,9", (0, 5, 9))])
def test_parse_seeds_accepts_spaces_and_commas(raw, seeds):
    assert parse_seeds(raw) == seeds


@pytest.mark.parametrize("raw", ["1 1", "1 -2", "1 a", "x", "", "1.5"])
def test_parse_seeds_rejects_duplicates_negatives_and_letters(raw):
    with pytest.raises(UserError, match="SEEDS"):
        parse_seeds(raw)


def test_seeds_symbol_reaches_settings(tmp_path):
    assert settings_of(tmp_path, BASE + 'CONFIG_SEEDS="3 1 2"\n').seeds == (3, 1, 2)
    with pytest.raises(UserError, match="SEEDS"):
        settings_of(tmp_path, BASE + 'CONFIG_SEEDS="1 1"\n')


# --- upstream defconfigs: upstream's Kconfig semantics ----------------------------------------
# A file that assigns a symbol only upstream defines (NUM_WORKERS here) is one of upstream's defconfigs.
UPSTREAM_MARK = "CONFIG_NUM_WORKERS=16\n"


def test_upstream_derived_symbols_are_ignored_as_upstreams_kconfig_does(tmp_path):
    """MODEL, OPTIMIZER, PRUNING_METHOD, TEST_* have no prompt upstream: a defconfig cannot set them,
    so the file's selections (or upstream's defaults) decide, with one warning naming them."""
    messages: list[str] = []
    path = write_config(tmp_path, UPSTREAM_MARK + BASE + 'CONFIG_MODEL="gpt2"\nCONFIG_OPTIMIZER="adam"\n'
                        'CONFIG_TEST_SPARSITY_70=y\nCONFIG_TEST_MODELS="lenet5,resnet18"\n')
    settings = load_settings(path, warn=messages.append)
    assert settings.models == ("lenet5",)  # not gpt2, not resnet18
    # not adam alone: upstream's default enables the three optimizers BASE does not mention
    assert settings.optimizers == ("sgd", "adam", "adamw", "adamwadv", "adamwspam", "adamwprune")
    assert settings.sparsities_pct == (90.0,)  # single mode: upstream's TARGET_SPARSITY default
    [line] = [m for m in messages if "ignoring" in m]
    assert "NUM_WORKERS" in line and "MODEL, OPTIMIZER, TEST_MODELS, TEST_SPARSITY_70" in line
    assert "derives them from the selections" in line


def test_target_sparsity_alone_gives_that_level(tmp_path):
    settings = settings_of(tmp_path, BASE + 'CONFIG_TARGET_SPARSITY="0.65"\n')
    assert settings.sparsities_pct == (65.0,)
    assert "lenet5_adam_magnitude_65" in run_ids(settings)


def test_upstream_file_takes_upstreams_defaults_for_what_it_does_not_mention(tmp_path):
    """Upstream's defaults: every optimizer and none/magnitude/movement/state at 50/70/90%, SPAM theta 50,
    GPT-2 dropout 0.1 and warm-up 100, bitter0; our own defaults for the same file without the mark."""
    upstream = settings_of(tmp_path, UPSTREAM_MARK + "CONFIG_MODEL_MODE_SINGLE=y\nCONFIG_MODEL_SELECT_LENET5=y\n")
    assert upstream.optimizers == ("sgd", "adam", "adamw", "adamwadv", "adamwspam", "adamwprune")
    assert upstream.pruning_methods == ("none", "magnitude", "movement", "state")
    assert upstream.sparsities_pct == (50.0, 70.0, 90.0)
    assert upstream.optimizer_params["adamwspam"].spam.theta == 50.0
    assert upstream.upstream_semantics
    assert len(expand(upstream)) == 5 * (1 + 2 * 3) + (1 + 3)  # adamwprune: none + state at each level
    (tmp_path / "ours").mkdir()
    ours = settings_of(tmp_path / "ours", "CONFIG_MODEL_MODE_SINGLE=y\nCONFIG_MODEL_SELECT_LENET5=y\n")
    assert (ours.optimizers, ours.pruning_methods, ours.upstream_semantics) == (("adamw",), ("none",), False)
    gpt2 = settings_of(tmp_path, UPSTREAM_MARK + "CONFIG_MODEL_SELECT_GPT2=y\nCONFIG_OPTIMIZER_MODE_SINGLE=y\n"
                       "CONFIG_OPTIMIZER_SELECT_ADAMWPRUNE=y\nCONFIG_PRUNING_MODE_SINGLE=y\n"
                       "CONFIG_PRUNING_SELECT_STATE=y\n")
    assert gpt2.model_params["gpt2"]["dropout"] == 0.1 and gpt2.model_params["gpt2"]["warmup_steps"] == 100
    assert gpt2.gpt2_variants == ("bitter0",)
    assert run_ids(gpt2) == ["gpt2_adamwprune_bitter0_state_90"]


def test_upstream_value_upstreams_kconfig_ignores_warns_and_keeps_the_default(tmp_path):
    """Out of upstream's range (SPAM_INTERVAL in [100, 10000]), malformed (an unquoted string, a comment
    after an int): one warning each naming symbol, value and default; the load goes on."""
    messages: list[str] = []
    path = write_config(tmp_path, UPSTREAM_MARK + BASE + "CONFIG_SPAM_INTERVAL=0\nCONFIG_LEARNING_RATE=0.1\n"
                        "CONFIG_BATCH_SIZE=64  # for 24GB GPUs\n")
    settings = load_settings(path, warn=messages.append)
    assert settings.optimizer_params["adamwspam"].spam.interval == 1000
    assert settings.training.learning_rate == 0.001 and settings.training.batch_size == 128
    assert any("CONFIG_SPAM_INTERVAL=0 is outside upstream's range [100, 10000]" in m
               and "using the default '1000'" in m for m in messages)
    assert any("LEARNING_RATE" in m and "using the default '0.001'" in m for m in messages)
    assert any("BATCH_SIZE" in m and "using the default '128'" in m for m in messages)


def test_our_own_file_with_a_bad_value_still_stops(tmp_path):
    """The same values in a file of ours (no upstream-only symbol) stop with one error line."""
    with pytest.raises(UserError, match="SPAM_INTERVAL"):
        settings_of(tmp_path, BASE + "CONFIG_OPTIMIZER_ENABLE_ADAMWSPAM=y\nCONFIG_SPAM_INTERVAL=-1\n")
    with pytest.raises(UserError, match="LEARNING_RATE"):
        settings_of(tmp_path, BASE + "CONFIG_LEARNING_RATE=0.1\n")


def test_a_typo_in_our_own_file_is_refused_with_a_suggestion_not_read_as_upstream(tmp_path):
    """An unknown name that upstream does not define either is a typo: the value it meant to set would
    be lost, and the file must not silently switch to upstream's defaults."""
    with pytest.raises(UserError, match=r"no such symbol: LEARNIG_RATE \(did you mean LEARNING_RATE\?\), "
                                        r"ZZZ_NOTHING_LIKE_IT; `make menuconfig` lists every option"):
        settings_of(tmp_path, BASE + "CONFIG_LEARNIG_RATE=0.1\nCONFIG_ZZZ_NOTHING_LIKE_IT=1\n")
    assert not load_kconfig(write_config(tmp_path, BASE + "CONFIG_LEARNIG_RATE=0.1\n")).upstream


def test_a_line_kconfig_cannot_parse_in_our_own_file_stops(tmp_path):
    """`CONFIG_LEARNING_RATE 0.1` (no =) would be skipped with a warning and the default used."""
    with pytest.raises(UserError, match=r"\.config:9: ignoring malformed line 'CONFIG_LEARNING_RATE 0.1'"):
        settings_of(tmp_path, BASE + "CONFIG_LEARNING_RATE 0.1\n")


def test_unknown_names_with_upstreams_marker_read_as_a_newer_upstream_file(tmp_path):
    """A newer upstream file whose names our list lacks can say what it is."""
    messages: list[str] = []
    path = write_config(tmp_path, BASE + "CONFIG_UPSTREAM_DEFCONFIG=y\nCONFIG_SOME_NEWER_UPSTREAM_KNOB=3\n")
    settings = load_settings(path, warn=messages.append)
    assert settings.upstream_semantics and any("SOME_NEWER_UPSTREAM_KNOB" in m for m in messages)


def test_cli_defconfig_with_a_typo_is_one_line_and_writes_nothing(tmp_path):
    source = write_config(tmp_path, BASE + "CONFIG_PRUNING_WARMUPP=10\n", name="mine")
    result = kconfig_cli("--config", tmp_path / ".config", "olddefconfig", cwd=tmp_path)
    assert result.returncode == 2  # no .config yet
    (tmp_path / ".config").write_bytes(source.read_bytes())
    result = kconfig_cli("--config", tmp_path / ".config", "olddefconfig", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "PRUNING_WARMUPP (did you mean PRUNING_WARMUP?)" in result.stderr
    assert (tmp_path / ".config").read_bytes() == source.read_bytes()


def test_gpt2_size_is_a_choice_and_upstreams_names_select_it(tmp_path):
    gpt2 = "CONFIG_MODEL_SELECT_GPT2=y\n"
    assert settings_of(tmp_path, gpt2).model_params["gpt2"]["model_size"] == "124M"
    chosen = settings_of(tmp_path, gpt2 + "CONFIG_GPT2_SIZE_1_5B=y\n")
    assert chosen.model_params["gpt2"]["model_size"] == "1.5B"
    upstream = settings_of(tmp_path, gpt2 + 'CONFIG_GPT2_MODEL_SIZE="tiny"\n')
    assert upstream.model_params["gpt2"]["model_size"] == "tiny"
    choice = settings_of(tmp_path, gpt2 + "CONFIG_GPT2_MODEL_350M=y\n")  # upstream's own choice entry
    assert choice.model_params["gpt2"]["model_size"] == "350M"
    with pytest.raises(UserError, match='GPT2_MODEL_SIZE="huge" is not a GPT-2 size; allowed: tiny, mini, 124M'):
        settings_of(tmp_path, gpt2 + 'CONFIG_GPT2_MODEL_SIZE="huge"\n')


def test_our_own_symbols_win_over_upstream_strings(tmp_path):
    settings = settings_of(tmp_path, 'CONFIG_MODEL_SELECT_GPT2=y\nCONFIG_GPT2_SIZE_MINI=y\nCONFIG_GPT2_MODEL_SIZE="tiny"\n')
    assert settings.model_params["gpt2"]["model_size"] == "mini"


# --- the Settings object -------------------------------------------------------------------


# --- defaults come from Kconfig only -------------------------------------------------------

DENSE = BASE.replace("CONFIG_PRUNING_MODE_SINGLE=y\nCONFIG_PRUNING_SELECT_MAGNITUDE=y\n", "CONFIG_PRUNING_MODE_NONE=y\n")


def kconfig_default(name: str) -> str:
    """What Kconfig itself says, read from the file (not from lib/config.py)."""
    from lib.config import new_kconfig

    sym = new_kconfig().syms[name]
    return sym.orig_defaults[-1][0].str_value


def test_settings_of_a_switched_off_menu_take_their_kconfig_default(tmp_path):
    """No pruning method: the pruning menu is off and its ints read as Kconfig's defaults (not 0, 1 or
    the epoch count); manual batch mode: TARGET_EFFECTIVE_BATCH is Kconfig's; AdamWPrune off: its base is
    Kconfig's default choice; no Slurm: the Slurm settings are Kconfig's."""
    settings = settings_of(tmp_path, DENSE + 'CONFIG_PRUNING_FREQUENCY=7\n')  # ignored: invisible
    pruning = settings.pruning
    assert (pruning.warmup_steps, pruning.frequency, pruning.ramp_end_epoch) == tuple(
        int(kconfig_default(n)) for n in ("PRUNING_WARMUP", "PRUNING_FREQUENCY", "PRUNING_RAMP_END_EPOCH"))
    assert (pruning.schedule, pruning.mask_storage) == ("per-method", "bool")
    assert settings.training.target_effective_batch == int(kconfig_default("TARGET_EFFECTIVE_BATCH"))
    assert settings.optimizer_params["adamwprune"].base == "adamw"
    assert settings.optimizer_params["adamwprune"].warmup_steps == int(kconfig_default("ADAMWPRUNE_WARMUP_STEPS"))
    runner = settings.runner
    assert (runner.slurm_time_min, runner.slurm_cpus_per_task, runner.slurm_gpus_per_task, runner.slurm_cluster) == (
        int(kconfig_default("SLURM_TIME_MINUTES")), int(kconfig_default("SLURM_CPUS_PER_TASK")),
        int(kconfig_default("SLURM_GPUS_PER_TASK")), kconfig_default("SLURM_CLUSTER"))
    assert settings.model_params["resnet50"]["image_size"] == int(kconfig_default("RESNET50_IMAGE_SIZE"))
    assert settings.model_params["gpt2"]["gpus_per_run"] == int(kconfig_default("GPT2_GPUS_PER_RUN"))


def test_auto_batch_mode_keeps_kconfigs_gradient_accumulation(tmp_path):
    training = settings_of(tmp_path, BASE + "CONFIG_HYPER_PARAM_AUTO=y\n").training
    assert training.hyper_param_auto and training.grad_accum == int(kconfig_default("GRADIENT_ACCUMULATION"))


def test_lr_step_every_is_zero_outside_the_step_schedule(tmp_path):
    assert settings_of(tmp_path, BASE).training.lr_step_every == 0
    (tmp_path / "s").mkdir()
    step = settings_of(tmp_path / "s", BASE + "CONFIG_LR_SCHEDULE_STEP=y\n").training
    assert (step.lr_schedule, step.lr_step_every) == ("step", int(kconfig_default("LR_STEP_EVERY")))


def test_lr_schedule_is_kconfigs_choice(tmp_path):
    assert settings_of(tmp_path, BASE).training.lr_schedule == "per-model"  # Kconfig's default choice
    (tmp_path / "c").mkdir()
    assert settings_of(tmp_path / "c", BASE + "CONFIG_LR_SCHEDULE_COSINE=y\n").training.lr_schedule == "cosine"


@pytest.mark.parametrize("symbol", ["DATA_DIR", "RESULTS_ROOT", "DEVICE"])
def test_an_empty_path_or_device_is_an_error_not_a_default(tmp_path, symbol):
    with pytest.raises(UserError, match=f'CONFIG_{symbol}="" is not valid'):
        settings_of(tmp_path, BASE + f'CONFIG_{symbol}=""\n')


def test_settings_are_frozen(tmp_path):
    settings = settings_of(tmp_path, BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.models = ("gpt2",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.training.batch_size = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.pruning.warmup_steps = 0


def test_settings_to_json_is_plain_data(tmp_path):
    data = settings_of(tmp_path, BASE).to_json()
    assert data["training"]["learning_rate"] == 0.001
    assert data["pruning"]["schedule"] == "per-method"  # upstream's curve for each method
    assert data["optimizer_params"]["sgd"]["momentum"] == 0.9


# --- the command line: scripts/kconfig.py --------------------------------------------------


def kconfig_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(KCONFIG_CLI), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_a_config_remembers_the_defconfig_it_was_loaded_from(tmp_path):
    """matrix.json's config_name: the first line `make defconfig-NAME` writes, kept by olddefconfig;
    a header that names no safe defconfig (hand-edited, menuconfig's own) gives None."""
    config = tmp_path / ".config"
    assert kconfig_cli("--config", config, "defconfig", "ci-quick", cwd=tmp_path).returncode == 0
    assert config.read_text().startswith("# Loaded from defconfigs/ci-quick by make defconfig-ci-quick\n")
    assert defconfig_name(config) == "ci-quick"
    assert kconfig_cli("--config", config, "olddefconfig", cwd=tmp_path).returncode == 0
    assert defconfig_name(config) == "ci-quick"
    for first in ("# Loaded from defconfigs/../etc by make defconfig-x\n", "#\n", "CONFIG_SEEDS=\"1\"\n"):
        config.write_text(first)
        assert defconfig_name(config) is None
    assert defconfig_name(tmp_path / "missing") is None


def test_cli_unknown_defconfig_is_one_line_and_exit_2(tmp_path):
    result = kconfig_cli("--config", tmp_path / ".config", "defconfig", "nonexistent", cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert "nonexistent" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / ".config").exists()


def test_cli_bad_value_is_one_line_and_exit_2(tmp_path):
    config = write_config(tmp_path, BASE + 'CONFIG_LEARNING_RATE="fast"\n')
    result = kconfig_cli("--config", config, "olddefconfig", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "LEARNING_RATE" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_defconfig_writes_a_config_that_loads(tmp_path):
    config = tmp_path / ".config"
    result = kconfig_cli("--config", config, "defconfig", "lenet5-quick", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert config.is_file()
    written = expand(load_settings(config))
    assert [r.to_json() for r in written] == [r.to_json() for r in expand(load_settings(ROOT / "defconfigs/lenet5-quick"))]


def test_cli_savedefconfig_round_trips(tmp_path):
    config, minimal = tmp_path / ".config", tmp_path / "defconfig"
    assert kconfig_cli("--config", config, "defconfig", "lenet5-quick", cwd=tmp_path).returncode == 0
    result = kconfig_cli("--config", config, "savedefconfig", "--out", minimal, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(minimal.read_text().splitlines()) < len(config.read_text().splitlines())
    full, small = expand(load_settings(config)), expand(load_settings(minimal))
    assert [r.to_json() for r in small] == [r.to_json() for r in full]


@pytest.mark.parametrize("name", ["lenet5-test-matrix-full", "gpt2-finewebedu-bitter7"])
def test_cli_olddefconfig_on_upstream_defconfig_keeps_its_matrix(tmp_path, name):
    config = write_config(tmp_path, (UPSTREAM / name).read_text())
    before = expand(load_settings(config, warn=lambda message: None))
    result = kconfig_cli("--config", config, "olddefconfig", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "NUM_WORKERS" in result.stderr  # the unknown symbols are named once
    loaded = load_kconfig(config)
    assert loaded.unknown_symbols == ()
    assert [r.to_json() for r in expand(settings_from_kconfig(loaded.kconf))] == [r.to_json() for r in before]


def test_cli_listdefconfigs_prints_names_and_first_comment(tmp_path):
    result = kconfig_cli("listdefconfigs", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(DEFCONFIGS)
    for path, line in zip(DEFCONFIGS, lines):
        comment = next(text for text in (line.lstrip("#").strip() for line in path.read_text().splitlines()
                                         if line.startswith("#")) if text and not text.startswith("SPDX"))
        assert line.split()[0] == path.name
        assert line.rstrip().endswith(comment)


def test_ignored_message_reads_with_only_derived_symbols():
    from lib.config import LoadedConfig

    only_derived = LoadedConfig(None, (), (), True, ("MODEL", "OPTIMIZER")).ignored_message("f")
    assert only_derived.startswith("f: ignoring MODEL, OPTIMIZER: upstream's Kconfig derives them")
    assert LoadedConfig(None, (), (), False).ignored_message("f") is None


def test_defconfig_whose_matrix_has_no_runs_is_refused_and_writes_nothing(tmp_path):
    """State pruning alone with AdamW gives no run: said at `make defconfig-NAME`, not first at `make`."""
    from conftest import kconfig_cli as kconfig_module

    source = write_config(tmp_path, "CONFIG_MODEL_SELECT_LENET5=y\nCONFIG_OPTIMIZER_MODE_SINGLE=y\n"
                          "CONFIG_OPTIMIZER_SELECT_ADAMW=y\nCONFIG_PRUNING_MODE_MULTIPLE=y\n"
                          "# CONFIG_PRUNING_ENABLE_NONE is not set\n# CONFIG_PRUNING_ENABLE_MAGNITUDE is not set\n"
                          "CONFIG_PRUNING_ENABLE_STATE=y\n", name="state-adamw")
    with pytest.raises(UserError, match="^the configuration expands to no runs"):
        kconfig_module().normalise(source, tmp_path / ".config")
    assert not (tmp_path / ".config").exists()


def test_savedefconfigs_output_stays_out_of_git_status():
    """`make savedefconfig` writes `defconfig` in the project root; defconfigs/ stays tracked."""
    from conftest import git_ignores

    assert git_ignores("defconfig") and not git_ignores("defconfigs/lenet5-quick")
