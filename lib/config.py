"""Configuration: `.config` -> kconfiglib -> one frozen, typed, validated Settings.

This module owns the only path from Kconfig files to Python values. It loads a
configuration through kconfiglib against the project's Kconfig tree, translates
the idioms of upstream AdamWPrune defconfigs (see upstream_aliases), validates
every number held in a string symbol, and returns a Settings object. Nothing
below it reads `.config` or the environment.
"""
from __future__ import annotations

import difflib
import functools
import math
import os
import re
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import kconfiglib

from lib import ROOT
from lib.errors import UserError
from lib.jsonio import CONFIG_MAX_BYTES
from lib.models import ModelParam, model_entry, model_names
from lib.names import is_safe_name
from lib.spec import (MAX_SEED, PRUNING_METHODS, AdvParams, OptimizerParams, PruningSettings, SpamParams,
                      TrainingSettings)
from lib.trackers.settings import TrackerSettings, tracker_settings
from lib.upstream_aliases import apply_upstream_aliases, choice_entries_by_prompt, is_upstream_file

OPTIMIZERS = ("sgd", "adam", "adamw", "adamwadv", "adamwspam", "adamwprune")
SPARSITY_LEVELS = (50, 70, 90, 95, 99)
BITTER_VARIANTS = ("bitter0", "bitter1", "bitter2", "bitter3", "bitter4", "bitter5", "bitter6", "bitter7", "bitter8",
                   "bitter9", "bitter1-upstream", "bitter2-upstream", "bitter4-upstream", "bitter8-upstream",
                   "bitter9-upstream")


@dataclass(frozen=True)
class NumberRule:
    """Allowed range of a number held in a string symbol."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def allows(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return math.isfinite(value) and above and below

    def describe(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


_FRACTION = NumberRule(0, 1, high_open=True)
_DECAY = NumberRule(0, 1)
_EPS = NumberRule(0, 1, low_open=True)
NUMBER_SYMBOLS: dict[str, NumberRule] = {
    "LEARNING_RATE": NumberRule(0, 10, low_open=True),
    "SGD_LEARNING_RATE": NumberRule(0, 10), "ADAM_LEARNING_RATE": NumberRule(0, 10),
    "ADAMW_LEARNING_RATE": NumberRule(0, 10), "ADV_LEARNING_RATE": NumberRule(0, 10),
    "SPAM_LEARNING_RATE": NumberRule(0, 10), "ADAMWPRUNE_LEARNING_RATE": NumberRule(0, 10),
    "LR_STEP_GAMMA": NumberRule(0, 1, low_open=True),
    "TARGET_SPARSITY": _FRACTION,
    "ADAMWPRUNE_TARGET_SPARSITY": _FRACTION,
    "SGD_MOMENTUM": _FRACTION,
    "SGD_WEIGHT_DECAY": _DECAY,
    "ADAM_BETA1": _FRACTION, "ADAM_BETA2": _FRACTION, "ADAM_EPSILON": _EPS, "ADAM_WEIGHT_DECAY": _DECAY,
    "ADAMW_BETA1": _FRACTION, "ADAMW_BETA2": _FRACTION, "ADAMW_EPSILON": _EPS, "ADAMW_WEIGHT_DECAY": _DECAY,
    "ADV_WEIGHT_DECAY": _DECAY, "ADV_COSINE_ETA_MIN": NumberRule(0, 1), "ADV_GRAD_CLIP": NumberRule(0, 1e6),
    "SPAM_THETA": NumberRule(0, 1e9, low_open=True), "SPAM_SPIKE_THRESHOLD": NumberRule(0, 1e9),
    "ADAMWPRUNE_BETA1": _FRACTION, "ADAMWPRUNE_BETA2": _FRACTION, "ADAMWPRUNE_WEIGHT_DECAY": _DECAY,
    "GPT2_MIN_LR": NumberRule(0, 10), "GPT2_DROPOUT": NumberRule(0, 1, high_open=True),
}


@dataclass(frozen=True)
class RunnerSettings:
    """How runs are held and placed (lib/run/Kconfig): not part of any run's result.
    No field has a default here: Kconfig's are `default_runner()`."""

    parallel_jobs: int  # per GPU, or on CPU-only machines in all
    timeout_s: int
    retries: int
    executor: str  # local | slurm
    results_root: str
    min_free_gpu_mib: int  # a GPU takes a new run only with this much free (NVML)
    sample_interval_ms: int  # the memory sampler's period
    slurm_partition: str  # "" = the cluster's default partition
    slurm_time_min: int
    slurm_gpus_per_task: int  # at least this many, more if the run asks (DDP); 0 = CPU-only tasks
    slurm_cpus_per_task: int
    slurm_mem_gb: int  # 0 = the partition's default
    slurm_array_parallelism: int  # 0 = no limit beyond the cluster's
    slurm_extra: str  # "key=value ..." passed to sbatch as --key=value
    slurm_cluster: str  # submitit backend: slurm, or local to rehearse without a cluster
    tracking: TrackerSettings  # W&B / Trackio (lib/trackers/Kconfig)


@dataclass(frozen=True)
class Settings:
    """Everything a matrix needs, resolved and checked."""

    models: tuple[str, ...]
    optimizers: tuple[str, ...]
    pruning_methods: tuple[str, ...]
    sparsities_pct: tuple[float, ...]
    adamwprune_sparsities_pct: tuple[float, ...]
    gpt2_variants: tuple[str, ...]
    seeds: tuple[int, ...]
    training: TrainingSettings
    pruning: PruningSettings
    runner: RunnerSettings
    optimizer_params: dict[str, OptimizerParams]  # by optimizer name
    model_params: dict[str, dict[str, Any]]
    upstream_semantics: bool = False  # an upstream defconfig: AdamWPrune gets state runs only where enabled

    def to_json(self) -> dict[str, Any]:
        """Plain data; each optimizer's block in its matrix.json layout."""
        return {**asdict(self), "optimizer_params": {name: params.to_json(name)
                                                     for name, params in self.optimizer_params.items()}}


@dataclass(frozen=True)
class LoadedConfig:
    kconf: kconfiglib.Kconfig
    unknown_symbols: tuple[str, ...]
    warnings: tuple[str, ...]
    upstream: bool = False  # read with upstream AdamWPrune's Kconfig semantics (lib/upstream_aliases.py)
    derived_symbols: tuple[str, ...] = ()  # upstream symbols without a prompt there, ignored as upstream does

    def check_names(self, label: str) -> None:
        """Refuse unknown symbols in one of our files: each is a value the user meant to set and
        that would be silently lost (an upstream file's are listed by ignored_message instead)."""
        if self.upstream or not self.unknown_symbols:
            return
        known = list(self.kconf.syms)
        named = [name + (f" (did you mean {close[0]}?)" if (close := difflib.get_close_matches(name, known, 1))
                         else "") for name in self.unknown_symbols]
        raise UserError(f"{label}: no such symbol: {', '.join(named)}; `make menuconfig` lists every option "
                        "(an upstream AdamWPrune defconfig? add CONFIG_UPSTREAM_DEFCONFIG=y to read it as one)")

    def ignored_message(self, label: str) -> str | None:
        """One line naming every assignment the load ignored by name, or None."""
        parts = []
        if self.unknown_symbols:
            parts.append(f"ignoring symbols this framework does not define: {', '.join(self.unknown_symbols)}")
        if self.derived_symbols:
            parts.append(f"ignoring {', '.join(self.derived_symbols)}: upstream's Kconfig derives them from the "
                         "selections (no prompt there), so a defconfig cannot set them")
        return f"{label}: {'; '.join(parts)}" if parts else None


_FROM_DEFCONFIG = re.compile(r"# Loaded from defconfigs/(\S+) by make defconfig-")


def defconfig_header(name: str) -> str:
    """The first line of a .config loaded from defconfigs/NAME, read back by defconfig_name."""
    return f"# Loaded from defconfigs/{name} by make defconfig-{name}\n"


def defconfig_name(path: Path) -> str | None:
    """The defconfig a .config was loaded from (matrix.json's config_name), or None: edited in
    menuconfig (which writes its own header), made by hand, or unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            match = _FROM_DEFCONFIG.match(file.readline(200))
    except OSError:
        return None
    return match.group(1) if match and is_safe_name(match.group(1)) else None


def new_kconfig() -> kconfiglib.Kconfig:
    """Parse the project's Kconfig tree (sources resolve against the project root)."""
    os.environ["srctree"] = str(ROOT)
    kconf = kconfiglib.Kconfig(str(ROOT / "Kconfig"), warn_to_stderr=False)
    kconf.warn_assign_undef = False  # unknown symbols are reported once, by name, below
    return kconf


def load_kconfig(path: str | os.PathLike) -> LoadedConfig:
    """Load a .config or defconfig; an upstream defconfig with upstream's semantics, ours strictly."""
    path = Path(path)
    try:
        if not path.is_file():
            raise UserError(f"{path}: no such configuration file (run `make defconfig-NAME` or `make menuconfig`)")
        size = path.stat().st_size
    except OSError as exc:  # a folder we may not look into
        raise UserError(f"{path}: unreadable ({exc.strerror or exc})") from None
    if size > CONFIG_MAX_BYTES:  # kconfiglib reads it whole: a config.txt from elsewhere may be huge
        raise UserError(f"{path}: {size:,} bytes, more than the {CONFIG_MAX_BYTES >> 20} MiB a "
                        "configuration file may have; not read")
    kconf = new_kconfig()
    try:
        kconf.load_config(str(path))
    except kconfiglib.KconfigError as exc:  # malformed UTF-8: a config.txt from another lab may hold anything
        reason = str(exc).strip().splitlines()[0].split(" in '")[0][:200]
        raise UserError(f"{path}: not a readable configuration file ({reason})") from None
    except OSError as exc:  # no permission to read it (kconfiglib's _KconfigIOError)
        raise UserError(f"{path}: unreadable ({exc.strerror or 'cannot open'})") from None
    upstream = is_upstream_file(kconf)
    if upstream:
        kconf.syms["UPSTREAM_DEFCONFIG"].set_value(2)
    derived, unknown = apply_upstream_aliases(kconf)
    # kconfiglib prefixes each message with "warning: "; callers add their own label.
    warnings = [message.replace("warning: ", "", 1) for message in kconf.warnings]
    if upstream:
        warnings = [_as_upstream_ignores(kconf, path, message) for message in warnings]
        warnings += _reset_invalid_values(kconf, path)
    else:
        _check_own_values(kconf, path, tuple(warnings))
    return LoadedConfig(kconf, tuple(unknown), tuple(warnings), upstream, tuple(derived))


_KCONFIG_SYMBOL = re.compile(r"(?:assignment to|for) ([A-Z0-9_]+) \(defined at [^)]*\)")


def _as_upstream_ignores(kconf: kconfiglib.Kconfig, path: Path, message: str) -> str:
    """kconfiglib's "assignment ignored" line, with the default the symbol keeps instead."""
    match = _KCONFIG_SYMBOL.search(message)
    if not match or match.group(1) not in kconf.syms:
        return message
    text = _KCONFIG_SYMBOL.sub(lambda m: m.group(0).split(" (defined")[0], message).rstrip(". ")
    return (f"{text if text.startswith(str(path)) else f'{path}: {text}'}, as upstream's Kconfig does; "
            f"using the default {kconf.syms[match.group(1)].str_value!r}")


def _reset_invalid_values(kconf: kconfiglib.Kconfig, path: Path) -> list[str]:
    """Upstream semantics: an int outside upstream's range or a number that does not parse keeps
    the default, with one warning each (kconfig itself drops such an int silently)."""
    warnings = []
    for sym in kconf.unique_defined_syms:
        if sym.user_value is None or not sym.visibility:
            continue
        if sym.orig_type in (kconfiglib.INT, kconfiglib.HEX):
            if sym.str_value == sym.user_value.strip():
                continue
            problem = f"is outside upstream's range {_int_range(sym)}"
        elif sym.name in NUMBER_SYMBOLS:
            try:
                parse_number(kconf, sym.name)
                continue
            except UserError:
                problem = f"is not valid (a number in {NUMBER_SYMBOLS[sym.name].describe()})"
        else:
            continue
        value = sym.user_value
        sym.unset_value()
        shown = value if sym.orig_type in (kconfiglib.INT, kconfiglib.HEX) else f"\"{value}\""
        warnings.append(f"{path}: CONFIG_{sym.name}={shown} {problem}; ignored, as upstream's Kconfig does: "
                        f"using the default {sym.str_value!r}")
    return warnings


def _check_own_values(kconf: kconfiglib.Kconfig, path: Path, warnings: tuple[str, ...]) -> None:
    # kconfiglib falls back to the default for a malformed or out-of-range int and skips a line it
    # cannot parse (CONFIG_X 1, a stray word); a typo must not quietly change an experiment.
    for message in warnings:
        lowered = message.lower()
        if "assignment ignored" in lowered:  # a value of the wrong type: kconfiglib names no line
            raise UserError(_invalid_value(kconf, path, message))
        if "malformed line" in lowered:  # CONFIG_X 1, a stray word: kconfiglib names the line
            raise UserError(message if message.startswith(str(path)) else f"{path}: {message}")
    for sym in kconf.unique_defined_syms:
        if sym.orig_type not in (kconfiglib.INT, kconfiglib.HEX) or sym.user_value is None:
            continue
        if not sym.visibility or sym.str_value == sym.user_value.strip():
            continue
        allowed = _int_range(sym)
        raise UserError(f"{path}: CONFIG_{sym.name}={sym.user_value!r} is not valid; allowed: an integer in {allowed}")


def _invalid_value(kconf: kconfiglib.Kconfig, path: Path, message: str) -> str:
    """kconfiglib's "the value 'x' is invalid for SYM (defined at ...), which has type int -- assignment
    ignored" as one error line with the file's line number (its last assignment of SYM, the one that
    counts), without "assignment ignored": here the load stops, it does not go on with the default."""
    match = _KCONFIG_SYMBOL.search(message)
    text = message.split(" -- assignment ignored")[0].rstrip(". ")
    if text.startswith(f"{path}: "):
        text = text[len(f"{path}: "):]
    where = str(path)
    if match:
        assignment = re.compile(rf"\s*CONFIG_{match.group(1)}=")
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        numbers = [n for n, line in enumerate(lines, start=1) if assignment.match(line)]
        where = f"{path}:{numbers[-1]}" if numbers else where
    return f"{where}: {text}; fix or remove the line (`make menuconfig` shows the values allowed)"


def _int_range(sym: kconfiglib.Symbol) -> str:
    for low, high, cond in sym.ranges:
        if kconfiglib.expr_value(cond):
            return f"[{low.str_value}, {high.str_value}]"
    return "(any integer)"


def parse_number(kconf: kconfiglib.Kconfig, name: str) -> float:
    """The float value of a string symbol, checked against NUMBER_SYMBOLS."""
    raw = _value(kconf, name).strip()
    rule = NUMBER_SYMBOLS[name]
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not rule.allows(value):
        raise UserError(f"CONFIG_{name}=\"{raw}\" is not valid; allowed: a number in {rule.describe()}")
    return value


def validate_numbers(kconf: kconfiglib.Kconfig) -> dict[str, float]:
    """Check every number-holding string symbol; first bad one stops with one line."""
    return {name: parse_number(kconf, name) for name in NUMBER_SYMBOLS if name in kconf.syms}


def parse_seeds(raw: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(tok) for tok in raw.replace(",", " ").split())
    except ValueError:
        seeds = ()
    if not seeds or any(not 0 <= s <= MAX_SEED for s in seeds) or len(set(seeds)) != len(seeds):
        raise UserError(f"CONFIG_SEEDS=\"{raw[:80]}\" is not valid; allowed: distinct integers from 0 to {MAX_SEED} "
                        "separated by spaces")
    return seeds


def symbol_suffix(name: str) -> str:
    """'movement-upstream' -> 'MOVEMENT_UPSTREAM': the Kconfig spelling of a method or variant."""
    return name.upper().replace("-", "_")


def _enabled(kconf: kconfiglib.Kconfig, prefix: str, names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(n for n in names if kconf.syms[f"{prefix}{symbol_suffix(n)}"].tri_value == 2)


def _y(kconf: kconfiglib.Kconfig, name: str) -> bool:
    return kconf.syms[name].tri_value == 2


def _kconfig_default(sym: kconfiglib.Symbol) -> str:
    """The default Kconfig gives `sym` as if its menu were on: the first whose own condition
    holds (orig_: without the menu's dependency), else the last; "" when it has none."""
    if not sym.orig_defaults:
        return ""
    return next((value.str_value for value, cond in sym.orig_defaults if kconfiglib.expr_value(cond)),
                sym.orig_defaults[-1][0].str_value)


def _value(kconf: kconfiglib.Kconfig, name: str) -> str:
    """A symbol's value. One in a menu that is switched off (a `depends on` that is false)
    has none in Kconfig; it reads as its Kconfig default, so that no default is written
    twice (here and in Kconfig) and a setting keeps its documented value while unused."""
    sym = kconf.syms[name]
    return sym.str_value if sym.str_value or sym.visibility else _kconfig_default(sym)


def _int(kconf: kconfiglib.Kconfig, name: str) -> int:
    """An int symbol's value (its Kconfig default while its menu is switched off)."""
    return int(_value(kconf, name))


def _text(kconf: kconfiglib.Kconfig, name: str, allowed: str) -> str:
    """A string symbol that may not be empty (its Kconfig default while its menu is switched off)."""
    raw = _value(kconf, name)
    if not raw.strip():
        raise UserError(f'CONFIG_{name}="{raw}" is not valid; allowed: {allowed}')
    return raw


def _pruning_methods(kconf: kconfiglib.Kconfig) -> tuple[str, ...]:
    if _y(kconf, "PRUNING_MODE_SINGLE"):
        return _enabled(kconf, "PRUNING_SELECT_", PRUNING_METHODS) or ("none",)
    if _y(kconf, "PRUNING_MODE_MULTIPLE"):
        return _enabled(kconf, "PRUNING_ENABLE_", PRUNING_METHODS)
    return ("none",)


def _sparsities(kconf: kconfiglib.Kconfig, numbers: dict[str, float], fallback: str,
                optimizers: tuple[str, ...]) -> tuple[float, ...]:
    if _y(kconf, "UPSTREAM_DEFCONFIG"):
        return _upstream_sparsities(kconf, numbers, optimizers)
    levels = tuple(float(n) for n in SPARSITY_LEVELS if _y(kconf, f"SPARSITY_ENABLE_{n}"))
    return levels or (round(numbers[fallback] * 100, 6),)


def _upstream_sparsities(kconf: kconfiglib.Kconfig, numbers: dict[str, float],
                         optimizers: tuple[str, ...]) -> tuple[float, ...]:
    """Upstream's runner: the enabled levels in multiple mode, where upstream's Kconfig shows
    them only beside magnitude or movement pruning, which need an optimizer other than
    AdamWPrune; TARGET_SPARSITY in single mode (the only mode where it has a prompt there);
    else 90%, for every method, state included."""
    if _y(kconf, "PRUNING_MODE_MULTIPLE"):
        external = any(o != "adamwprune" for o in optimizers) and (
            _y(kconf, "PRUNING_ENABLE_MAGNITUDE") or _y(kconf, "PRUNING_ENABLE_MOVEMENT"))
        levels = tuple(float(n) for n in SPARSITY_LEVELS if _y(kconf, f"SPARSITY_ENABLE_{n}")) if external else ()
        return levels or (90.0,)
    return (round(numbers["TARGET_SPARSITY"] * 100, 6),)


_LR_SCHEDULES = {"LR_SCHEDULE_PER_MODEL": "per-model", "LR_SCHEDULE_CONSTANT": "constant",
                 "LR_SCHEDULE_COSINE": "cosine", "LR_SCHEDULE_STEP": "step"}
_SCHEDULES = {"PRUNING_SCHEDULE_UPSTREAM": "per-method", "PRUNING_SCHEDULE_CUBIC": "cubic",
              "PRUNING_SCHEDULE_LINEAR": "linear",
              "PRUNING_SCHEDULE_UPSTREAM_P3": "upstream-p3"}
_MASK_STORAGE = {"PRUNING_MASK_STORAGE_BOOL": "bool", "PRUNING_MASK_STORAGE_BITS": "bits"}


def _choice_name(kconf: kconfiglib.Kconfig, names: dict[str, str]) -> str:
    """The name (in `names`, by symbol) of the option chosen in a choice; a choice whose menu is
    switched off reads as its Kconfig default (the first default whose condition holds, else its
    first option, as Kconfig picks)."""
    choice = kconf.syms[next(iter(names))].choice
    chosen = choice.selection or next((sym for sym, cond in choice.orig_defaults if kconfiglib.expr_value(cond)),
                                      choice.syms[0])
    return names[chosen.name]


def _optimizer_params(kconf: kconfiglib.Kconfig, n: dict[str, float]) -> dict[str, OptimizerParams]:
    """Every optimizer's settings; a learning rate of 0 means the shared LEARNING_RATE (None)."""
    base = _choice_name(kconf, {f"ADAMWPRUNE_BASE_{b.upper()}": b for b in ("adam", "adamw", "adamwadv", "adamwspam")})
    spam = SpamParams(theta=n["SPAM_THETA"], enable_clip=_y(kconf, "SPAM_ENABLE_CLIP"),
                      periodic_reset=_y(kconf, "SPAM_PERIODIC_RESET"), interval=_int(kconf, "SPAM_INTERVAL"),
                      warmup=_y(kconf, "SPAM_WARMUP"), warmup_steps=_int(kconf, "SPAM_WARMUP_STEPS"),
                      clip_delay_steps=_int(kconf, "SPAM_CLIP_DELAY_STEPS"))
    adv = AdvParams(amsgrad=_y(kconf, "ADV_USE_AMSGRAD"), weight_decay=n["ADV_WEIGHT_DECAY"],
                    cosine_annealing=_y(kconf, "ADV_USE_COSINE_ANNEALING"), eta_min=n["ADV_COSINE_ETA_MIN"],
                    grad_clip=n["ADV_GRAD_CLIP"])
    adamw_betas, adamw_eps = (n["ADAMW_BETA1"], n["ADAMW_BETA2"]), n["ADAMW_EPSILON"]
    return {
        "sgd": OptimizerParams(learning_rate=n["SGD_LEARNING_RATE"] or None, momentum=n["SGD_MOMENTUM"],
                               weight_decay=n["SGD_WEIGHT_DECAY"]),
        "adam": OptimizerParams(learning_rate=n["ADAM_LEARNING_RATE"] or None, betas=(n["ADAM_BETA1"], n["ADAM_BETA2"]),
                                eps=n["ADAM_EPSILON"], weight_decay=n["ADAM_WEIGHT_DECAY"]),
        "adamw": OptimizerParams(learning_rate=n["ADAMW_LEARNING_RATE"] or None, betas=adamw_betas, eps=adamw_eps,
                                 weight_decay=n["ADAMW_WEIGHT_DECAY"]),
        "adamwadv": OptimizerParams(learning_rate=n["ADV_LEARNING_RATE"] or None, betas=adamw_betas, eps=adamw_eps,
                                    weight_decay=adv.weight_decay, amsgrad=adv.amsgrad, adv=adv),
        "adamwspam": OptimizerParams(learning_rate=n["SPAM_LEARNING_RATE"] or None, betas=adamw_betas, eps=adamw_eps,
                                     weight_decay=n["ADAMW_WEIGHT_DECAY"], spam=spam),
        "adamwprune": OptimizerParams(
            learning_rate=n["ADAMWPRUNE_LEARNING_RATE"] or None, betas=(n["ADAMWPRUNE_BETA1"], n["ADAMWPRUNE_BETA2"]),
            eps=adamw_eps, weight_decay=n["ADAMWPRUNE_WEIGHT_DECAY"], amsgrad=_y(kconf, "ADAMWPRUNE_AMSGRAD"),
            base=base, state_score=_state_score(kconf), warmup_steps=_int(kconf, "ADAMWPRUNE_WARMUP_STEPS"),
            frequency=_int(kconf, "ADAMWPRUNE_FREQUENCY"), ramp_end_step=_int(kconf, "ADAMWPRUNE_RAMP_END_STEP"),
            spam=spam, adv=adv),
    }


def _state_score(kconf: kconfiglib.Kconfig) -> str:
    raw = _value(kconf, "ADAMWPRUNE_STATE_SCORE").strip()
    if raw not in BITTER_VARIANTS:
        raise UserError(f"CONFIG_ADAMWPRUNE_STATE_SCORE=\"{raw}\" is not valid; allowed: {', '.join(BITTER_VARIANTS)}")
    return raw


def _check_combinations(kconf: kconfiglib.Kconfig, optimizers: tuple[str, ...]) -> None:
    if "adamwprune" in optimizers and _y(kconf, "ADAMWPRUNE_BASE_ADAMWSPAM") and _y(kconf, "ADAMWPRUNE_AMSGRAD"):
        raise UserError("CONFIG_ADAMWPRUNE_AMSGRAD=y does not combine with CONFIG_ADAMWPRUNE_BASE_ADAMWSPAM=y: "
                        "SPAM has no AMSGrad; unset one of them")


def _model_params(kconf: kconfiglib.Kconfig, n: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Each model's parameters, as its registry entry (lib/models.py) declares them."""
    return {name: {param.name: _model_param(kconf, param, n) for param in model_entry(name).params}
            for name in _kconfig_models(kconf)}


def _model_param(kconf: kconfiglib.Kconfig, param: ModelParam, n: dict[str, float]) -> Any:
    if param.kind == "choice":
        entries = ({symbol: value for value, symbol in param.choices} if param.choices
                   else {symbol: value for value, symbol in choice_entries_by_prompt(kconf, param.symbol).items()})
        return _choice_name(kconf, entries)
    if param.kind == "bool":
        return _y(kconf, param.symbol)
    if param.kind == "number":
        return n[param.symbol]
    if param.kind == "string":
        return _value(kconf, param.symbol).strip()
    return _int(kconf, param.symbol)


def _kconfig_models(kconf: kconfiglib.Kconfig) -> tuple[str, ...]:
    """Registered models that this Kconfig tree offers (a model registered at run time by a test has no menu)."""
    return tuple(name for name in model_names() if f"MODEL_{symbol_suffix(name)}" in kconf.syms)


def _check_gpt2_symbols(kconf: kconfiglib.Kconfig) -> None:
    if _y(kconf, "GPT2_DATASET_LOCAL") and _y(kconf, "MODEL_GPT2") and not _value(kconf, "GPT2_DATA_PATH").strip():
        raise UserError("CONFIG_GPT2_DATASET_LOCAL=y needs CONFIG_GPT2_DATA_PATH=\"<text file or folder>\" "
                        "(make menuconfig)")
    decay, warmup = _int(kconf, "GPT2_LR_DECAY_ITERS"), _int(kconf, "GPT2_WARMUP_STEPS")
    if decay and decay <= warmup:
        raise UserError(f"CONFIG_GPT2_LR_DECAY_ITERS={decay} is not after the warm-up "
                        f"(CONFIG_GPT2_WARMUP_STEPS={warmup}); allowed: 0 (the last step) or more than the warm-up")


def settings_from_kconfig(kconf: kconfiglib.Kconfig) -> Settings:
    """Turn a loaded Kconfig into Settings; the first invalid value raises UserError."""
    numbers = validate_numbers(kconf)
    seeds = parse_seeds(kconf.syms["SEEDS"].str_value)
    offered = _kconfig_models(kconf)
    models = (_enabled(kconf, "MODEL_SELECT_", offered) if _y(kconf, "MODEL_MODE_SINGLE")
              else _enabled(kconf, "MODEL_ENABLE_", offered))
    optimizers = (_enabled(kconf, "OPTIMIZER_SELECT_", OPTIMIZERS) if _y(kconf, "OPTIMIZER_MODE_SINGLE")
                  else _enabled(kconf, "OPTIMIZER_ENABLE_", OPTIMIZERS))
    if not models:
        raise UserError("no model is enabled; set MODEL_SELECT_<M> or MODEL_ENABLE_<M> (make menuconfig)")
    if not optimizers:
        raise UserError("no optimizer is enabled; set OPTIMIZER_SELECT_<O> or OPTIMIZER_ENABLE_<O> (make menuconfig)")
    _check_combinations(kconf, optimizers)
    _check_gpt2_symbols(kconf)
    lr_schedule = _choice_name(kconf, _LR_SCHEDULES)
    training = TrainingSettings(
        batch_size=_int(kconf, "BATCH_SIZE"), epochs=_int(kconf, "NUM_EPOCHS"),
        learning_rate=numbers["LEARNING_RATE"], lr_schedule=lr_schedule, lr_warmup_steps=_int(kconf, "LR_WARMUP_STEPS"),
        # 0 outside the step schedule, as every matrix.json has recorded it
        lr_step_every=_int(kconf, "LR_STEP_EVERY") if lr_schedule == "step" else 0,
        lr_step_gamma=numbers["LR_STEP_GAMMA"], device=_device(_value(kconf, "DEVICE")),
        # expanded here: a path with "~" would otherwise make a folder named "~"
        data_dir=os.path.expanduser(_text(kconf, "DATA_DIR", "a folder")),
        compile_model=_y(kconf, "COMPILE_MODEL"), mixed_precision=_y(kconf, "MIXED_PRECISION"),
        save_checkpoint=_y(kconf, "SAVE_CHECKPOINT"), resume=_y(kconf, "RESUME_FROM_CHECKPOINT"),
        grad_accum=_int(kconf, "GRADIENT_ACCUMULATION"), hyper_param_auto=_y(kconf, "HYPER_PARAM_AUTO"),
        target_effective_batch=_int(kconf, "TARGET_EFFECTIVE_BATCH"), log_every=_int(kconf, "LOG_EVERY"),
        grad_clip_norm=_grad_clip_norm(kconf), tf32=_y(kconf, "GPT2_TF32_ALLOWED"))
    pruning = PruningSettings(
        warmup_steps=_int(kconf, "PRUNING_WARMUP"), frequency=_int(kconf, "PRUNING_FREQUENCY"),
        ramp_end_epoch=_int(kconf, "PRUNING_RAMP_END_EPOCH"), schedule=_choice_name(kconf, _SCHEDULES),
        ramp_fit=_y(kconf, "PRUNING_RAMP_FIT"), mask_storage=_choice_name(kconf, _MASK_STORAGE),
        ramp_end_step=0)  # no symbol: the ramp ends with its epoch (lib/matrix.py sets upstream trainers' steps)
    methods = _pruning_methods(kconf)
    optimizer_params, model_params = _optimizer_params(kconf, numbers), _model_params(kconf, numbers)
    if any(m != "none" for m in methods):
        check_ramp(training, pruning, methods, optimizers, optimizer_params["adamwprune"], models,
                   model_params["gpt2"])
    runner = RunnerSettings(
        parallel_jobs=_int(kconf, "PARALLEL_JOBS"), timeout_s=_int(kconf, "RUN_TIMEOUT"),
        retries=_int(kconf, "RUN_RETRIES"), executor="slurm" if _y(kconf, "EXECUTOR_SLURM") else "local",
        results_root=_text(kconf, "RESULTS_ROOT", "a folder"),
        min_free_gpu_mib=_int(kconf, "GPU_MIN_FREE_MIB"), sample_interval_ms=_int(kconf, "GPU_SAMPLE_INTERVAL_MS"),
        slurm_partition=_value(kconf, "SLURM_PARTITION"), slurm_time_min=_int(kconf, "SLURM_TIME_MINUTES"),
        slurm_gpus_per_task=_int(kconf, "SLURM_GPUS_PER_TASK"), slurm_cpus_per_task=_int(kconf, "SLURM_CPUS_PER_TASK"),
        slurm_mem_gb=_int(kconf, "SLURM_MEM_GB"), slurm_array_parallelism=_int(kconf, "SLURM_ARRAY_PARALLELISM"),
        slurm_extra=_checked(parse_slurm_extra, _value(kconf, "SLURM_EXTRA")),
        slurm_cluster=_text(kconf, "SLURM_CLUSTER", "a submitit cluster: slurm or local"),
        tracking=tracker_settings(kconf, models, ROOT))
    return Settings(
        models=models, optimizers=optimizers, pruning_methods=methods,
        sparsities_pct=_sparsities(kconf, numbers, "TARGET_SPARSITY", optimizers),
        adamwprune_sparsities_pct=_sparsities(kconf, numbers, "ADAMWPRUNE_TARGET_SPARSITY", optimizers),
        gpt2_variants=_enabled(kconf, "GPT2_ADAMWPRUNE_VARIANT_", BITTER_VARIANTS),
        seeds=seeds, training=training, pruning=pruning, runner=runner,
        optimizer_params=optimizer_params, model_params=model_params,
        upstream_semantics=_y(kconf, "UPSTREAM_DEFCONFIG"))


def _grad_clip_norm(kconf: kconfiglib.Kconfig) -> float | None:
    raw = kconf.syms["GRADIENT_CLIP_NORM"].str_value.strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise UserError(f"CONFIG_GRADIENT_CLIP_NORM=\"{raw}\" is not valid; allowed: empty (per model), 0 (off) "
                        "or a positive number")
    return value


def check_ramp(training: TrainingSettings, pruning: PruningSettings, methods: tuple[str, ...],
               optimizers: tuple[str, ...], adamwprune: OptimizerParams, models: tuple[str, ...],
               gpt2: dict[str, Any]) -> None:
    """Refuse, at validation, a pruning ramp that ends at or after the last training step.

    Checked where the step counts are known from the configuration alone:
    epochs for every model, and for GPT-2 with GPT2_MAX_ITERS also AdamWPrune's
    ramp-end step. The trainer checks again with exact step counts.
    """
    if pruning.ramp_fit:
        return
    fix = "lower it, raise CONFIG_NUM_EPOCHS, or set CONFIG_PRUNING_RAMP_FIT=y"
    state_by_epoch = "state" in methods and "adamwprune" in optimizers and not adamwprune.ramp_end_step
    epoch_based = state_by_epoch or any(m not in ("none", "state") for m in methods)
    if epoch_based and pruning.ramp_end_epoch >= training.epochs:
        raise UserError(f"CONFIG_PRUNING_RAMP_END_EPOCH={pruning.ramp_end_epoch} is not before the last epoch "
                        f"(CONFIG_NUM_EPOCHS={training.epochs}): the target sparsity would be reached at the last "
                        f"step or never, with no steps left to recover; {fix}")
    ramp_end, max_iters = adamwprune.ramp_end_step, gpt2["max_iters"]
    if "gpt2" in models and "adamwprune" in optimizers and ramp_end and max_iters and ramp_end >= max_iters:
        raise UserError(f"CONFIG_ADAMWPRUNE_RAMP_END_STEP={ramp_end} is not before the last step "
                        f"(CONFIG_GPT2_MAX_ITERS={max_iters}): the target sparsity would be reached at the last step "
                        f"or never; lower it, raise CONFIG_GPT2_MAX_ITERS, or set CONFIG_PRUNING_RAMP_FIT=y")


def parse_slurm_extra(extra: str) -> dict[str, str]:
    """SLURM_EXTRA "account=x qos=high exclusive" -> {"account": "x", "qos": "high", "exclusive": ""}."""
    try:
        items = shlex.split(extra)
    except ValueError as exc:  # an unbalanced quote
        raise UserError(f"CONFIG_SLURM_EXTRA={extra!r} is not valid shell syntax ({exc})") from None
    pairs = {}
    for item in items:
        key, _, value = item.lstrip("-").partition("=")
        if not key:
            raise UserError(f"CONFIG_SLURM_EXTRA={extra!r} is not valid; allowed: key=value pairs")
        pairs[key] = value
    return pairs


def _checked(parse: Callable[[str], Any], raw: str) -> str:
    """`raw`, once `parse` accepts it (a UserError otherwise)."""
    parse(raw)
    return raw


def _device(raw: str) -> str:
    value = raw.strip()
    if value in ("auto", "cpu", "cuda", "mps") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise UserError(f"CONFIG_DEVICE=\"{raw}\" is not valid; allowed: auto, cpu, cuda, cuda:N or mps")


@functools.lru_cache(maxsize=1)
def default_settings() -> Settings:
    """The Settings of a configuration that sets nothing: every value Kconfig's default."""
    return settings_from_kconfig(new_kconfig())


def default_runner() -> RunnerSettings:
    """Kconfig's runner settings, for a run outside any configuration (`make reproduce`, tests)."""
    return default_settings().runner


def load_settings(path: str | os.PathLike, warn: Callable[[str], None] | None = None) -> Settings:
    """Load and validate a configuration file; warnings go to `warn` (default: stderr)."""
    loaded = load_kconfig(path)
    loaded.check_names(str(path))
    warn = warn or _print_warning
    ignored = loaded.ignored_message(str(path))
    if ignored:
        warn(ignored)
    for message in loaded.warnings:
        warn(message)
    return settings_from_kconfig(loaded.kconf)


def _print_warning(message: str) -> None:
    import sys

    print(f"warning: {message}", file=sys.stderr)
