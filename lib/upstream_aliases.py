"""Upstream AdamWPrune defconfigs read with upstream's Kconfig semantics.

A file that assigns a symbol only upstream defines (upstream_symbols.txt;
kconfiglib lists unknown assignments in `kconf.missing_syms`) or sets
CONFIG_UPSTREAM_DEFCONFIG=y is one of upstream's defconfigs.
Upstream's Kconfig evaluates such a file, so the loader switches on
UPSTREAM_DEFCONFIG: our Kconfig then gives every symbol the file does not
mention upstream's default and checks integers against upstream's ranges
(`... if UPSTREAM_DEFCONFIG` lines). This module does the rest:

- Upstream symbols whose value upstream's Kconfig derives from the
  selections (MODEL, OPTIMIZER, PRUNING_METHOD, TEST_MODELS, TEST_MODEL_*,
  TEST_SPARSITY_*, TEST_OPTIMIZER_ENABLED_*, TEST_PRUNING_*) have no prompt
  there: an assignment to them is ignored, as upstream's Kconfig ignores it.
- Upstream's GPT-2 size choice (GPT2_MODEL_124M ...) selects ours
  (GPT2_SIZE_124M ...); GPT2_MODEL_SIZE="124M" and GPT2_DATASET="x", strings
  of older upstream files, select the same entries where the file does not
  pick ours.

Every other unknown symbol is returned for the caller's one warning.
"""
from __future__ import annotations

import re
from pathlib import Path

import kconfiglib

from lib.errors import UserError

# Derived (prompt-less) in upstream's Kconfig: a defconfig cannot set them.
_DERIVED = re.compile(r"(MODEL|OPTIMIZER|PRUNING_METHOD|TEST_MODELS|TEST_MODEL_\w+|TEST_SPARSITY_\d+"
                      r"|TEST_OPTIMIZER_ENABLED_\w+|TEST_PRUNING_\w+|ENABLE_PRUNING|PRUNING_ENABLED_\w+)")
# Upstream's GPT-2 size choice entries -> our size names.
_UPSTREAM_SIZES = {"GPT2_MODEL_124M": "124M", "GPT2_MODEL_350M": "350M", "GPT2_MODEL_774M": "774M",
                   "GPT2_MODEL_1558M": "1.5B"}


def _set(kconf: kconfiglib.Kconfig, name: str, value: int | str) -> bool:
    sym = kconf.syms.get(name)
    return bool(sym) and sym.set_value(value)


def _user_set(kconf: kconfiglib.Kconfig, *names: str) -> bool:
    return any(kconf.syms[n].user_value is not None for n in names if n in kconf.syms)


def choice_entries_by_prompt(kconf: kconfiglib.Kconfig, prefix: str) -> dict[str, str]:
    """Value -> choice entry for the entries named `prefix`*, whose prompts start with their value
    ("124M: 12 layers, ..." in gpt2/Kconfig): the values come from the Kconfig tree, not model code."""
    return {sym.nodes[0].prompt[0].split(":")[0].strip(): sym.name for sym in kconf.unique_defined_syms
            if sym.name.startswith(prefix) and sym.choice is not None and sym.nodes[0].prompt}


def _select_gpt2_size(kconf: kconfiglib.Kconfig, value: str) -> None:
    """Upstream names the size in a string or its own choice; here it is our choice."""
    sizes = choice_entries_by_prompt(kconf, "GPT2_SIZE_")
    if value.strip() not in sizes:
        raise UserError(f"CONFIG_GPT2_MODEL_SIZE=\"{value}\" is not a GPT-2 size; allowed: {', '.join(sizes)}")
    if not _user_set(kconf, *sizes.values()):
        _set(kconf, sizes[value.strip()], 2)


def _select_dataset(kconf: kconfiglib.Kconfig, value: str) -> None:
    target = f"GPT2_DATASET_{value.strip().upper()}"
    if target in kconf.syms and not _user_set(kconf, *(s for s in kconf.syms if s.startswith("GPT2_DATASET_"))):
        _set(kconf, target, 2)


UPSTREAM_ONLY_SYMBOLS = frozenset(
    line for line in (Path(__file__).with_name("upstream_symbols.txt").read_text().splitlines())
    if line and not line.startswith("#"))


def is_upstream_file(kconf: kconfiglib.Kconfig) -> bool:
    """True for a file that assigns a symbol only upstream AdamWPrune defines, or unknown symbols
    and CONFIG_UPSTREAM_DEFCONFIG=y (a newer upstream file). Unknown names alone do not make a file upstream's: a typo
    in one of ours must not switch every default to upstream's."""
    missing = [name for name, _ in kconf.missing_syms]
    return bool(missing) and (kconf.syms["UPSTREAM_DEFCONFIG"].user_value == 2
                              or any(name in UPSTREAM_ONLY_SYMBOLS for name in missing))


def apply_upstream_aliases(kconf: kconfiglib.Kconfig) -> tuple[list[str], list[str]]:
    """Translate upstream's choice names; return (derived symbols ignored, names still unknown)."""
    # kconfiglib keeps string values as written, quotes and escapes included.
    missing = {name: kconfiglib.unescape(value[1:-1]) if value.startswith('"') and value.endswith('"') else value
               for name, value in kconf.missing_syms}
    derived = sorted(name for name in missing if _DERIVED.fullmatch(name))
    handled = set(derived)
    for name, size in _UPSTREAM_SIZES.items():
        if missing.get(name) == "y":
            _select_gpt2_size(kconf, size)
        handled.add(name)
    if "GPT2_MODEL_SIZE" in missing:
        _select_gpt2_size(kconf, missing["GPT2_MODEL_SIZE"])
        handled.add("GPT2_MODEL_SIZE")
    if "GPT2_DATASET" in missing:
        _select_dataset(kconf, missing["GPT2_DATASET"])
        handled.add("GPT2_DATASET")
    return derived, sorted(name for name in missing if name not in handled)
