"""Translation of upstream AdamWPrune defconfig idioms into this tree's symbols.

Upstream copies defconfigs to .config without olddefconfig, so symbols with no
prompt there (CONFIG_MODEL="gpt2", CONFIG_TEST_SPARSITY_70=y, ...) still carry
meaning. After kconfiglib has loaded such a file, its unknown assignments are
in `kconf.missing_syms`; this module maps the ones with a known meaning onto
our symbols (only where the file did not set ours) and returns the rest, which
the caller reports in one warning.
"""
from __future__ import annotations

import kconfiglib

from lib.errors import UserError

_SPARSITY_ALIASES = {f"TEST_SPARSITY_{n}": f"SPARSITY_ENABLE_{n}" for n in (50, 70, 90, 95, 99)}
_MODEL_NAMES = ("lenet5", "resnet18", "resnet50", "gpt2")


def _set(kconf: kconfiglib.Kconfig, name: str, value: int | str) -> bool:
    sym = kconf.syms.get(name)
    return bool(sym) and sym.set_value(value)


def _user_set(kconf: kconfiglib.Kconfig, *names: str) -> bool:
    return any(kconf.syms[n].user_value is not None for n in names if n in kconf.syms)


def _select_models(kconf: kconfiglib.Kconfig, models: list[str]) -> None:
    prefixes = [f"MODEL_SELECT_{m.upper()}" for m in _MODEL_NAMES] + ["MODEL_MODE_SINGLE", "MODEL_MODE_MULTIPLE"]
    if not models or _user_set(kconf, *prefixes):
        return
    if len(models) == 1:
        _set(kconf, "MODEL_MODE_SINGLE", 2)
        _set(kconf, f"MODEL_SELECT_{models[0].upper()}", 2)
        return
    _set(kconf, "MODEL_MODE_MULTIPLE", 2)
    for name in _MODEL_NAMES:
        _set(kconf, f"MODEL_ENABLE_{name.upper()}", 2 if name in models else 0)


def _select_single(kconf: kconfiglib.Kconfig, mode: str, prefix: str, value: str) -> bool:
    target = f"{prefix}{value.strip().upper()}"
    if target not in kconf.syms or _user_set(kconf, *(s.name for s in kconf.syms.values()
                                                      if s.name.startswith(prefix))):
        return False
    return _set(kconf, mode, 2) and _set(kconf, target, 2)


def _select_gpt2_size(kconf: kconfiglib.Kconfig, value: str) -> None:
    """Upstream names the size in a string; here it is a choice."""
    from gpt2.sizes import SIZES, size_symbol

    if value.strip() not in SIZES:
        raise UserError(f"CONFIG_GPT2_MODEL_SIZE=\"{value}\" is not a GPT-2 size; allowed: {', '.join(SIZES)}")
    if not _user_set(kconf, *(size_symbol(name) for name in SIZES)):
        _set(kconf, size_symbol(value.strip()), 2)


def apply_upstream_aliases(kconf: kconfiglib.Kconfig) -> list[str]:
    """Apply upstream idioms found in kconf.missing_syms; return names still unknown."""
    # kconfiglib keeps string values as written, quotes and escapes included.
    missing = {name: kconfiglib.unescape(value[1:-1]) if value.startswith('"') and value.endswith('"') else value
               for name, value in kconf.missing_syms}
    handled: set[str] = set()
    models = [m for m in _MODEL_NAMES if missing.get(f"TEST_MODEL_{m.upper()}") == "y"]
    for key in ("TEST_MODELS", "MODEL"):
        if key in missing:
            models += [m for m in missing[key].split() if m in _MODEL_NAMES and m not in models]
            handled.add(key)
    handled |= {f"TEST_MODEL_{m.upper()}" for m in _MODEL_NAMES}
    _select_models(kconf, models)
    if "OPTIMIZER" in missing:
        _select_single(kconf, "OPTIMIZER_MODE_SINGLE", "OPTIMIZER_SELECT_", missing["OPTIMIZER"])
        handled.add("OPTIMIZER")
    if "PRUNING_METHOD" in missing:
        _select_single(kconf, "PRUNING_MODE_SINGLE", "PRUNING_SELECT_", missing["PRUNING_METHOD"])
        handled.add("PRUNING_METHOD")
    if "GPT2_DATASET" in missing:
        _select_single(kconf, "GPT2_DATASET_FINEWEBEDU", "GPT2_DATASET_", missing["GPT2_DATASET"])
        handled.add("GPT2_DATASET")
    if "GPT2_MODEL_SIZE" in missing:
        _select_gpt2_size(kconf, missing["GPT2_MODEL_SIZE"])
        handled.add("GPT2_MODEL_SIZE")
    for alias, ours in _SPARSITY_ALIASES.items():
        if alias in missing:
            handled.add(alias)
            if missing[alias] == "y" and not _user_set(kconf, ours):
                _set(kconf, ours, 2)
    return sorted(name for name in missing if name not in handled)
