"""Figures over seeds: mean, standard deviation and n per configuration, and
whether two configurations differ by more than their noise.

A configuration is a run without its seed: the runs whose IDs differ only in
the `_s<seed>` suffix (same model, optimizer, variant, pruning and target
sparsity). Two configurations are *within noise* when their means differ by
less than twice the standard error of the difference,
sqrt(s1^2/n1 + s2^2/n2) (Welch), which needs at least two measured seeds on
each side; with one seed nothing can be said and nothing is claimed.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import pandas as pd

NA = "n/a"
NOISE_STANDARD_ERRORS = 2.0
_SEED_SUFFIX = re.compile(r"_s\d+$")


def is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def fmt(value: Any, digits: int, suffix: str = "", signed: bool = False) -> str:
    """A figure with `digits` decimals, or "n/a" when it was not measured."""
    if is_missing(value):
        return NA
    return f"{value:{'+' if signed else ''}.{digits}f}{suffix}"


@dataclass(frozen=True)
class Estimate:
    """Mean, sample standard deviation (ddof 1; NaN below two values) and n of the measured values."""
    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Iterable[Any]) -> "Estimate":
        measured = [float(v) for v in values if not is_missing(v) and math.isfinite(float(v))]
        n = len(measured)
        mean = sum(measured) / n if n else math.nan
        if n and not math.isfinite(mean):  # figures near the float limit (a stranger's 1e308): divide first
            mean = sum(v / n for v in measured)
        # products, not ** 2: a float power that overflows raises OverflowError, a product gives inf
        std = math.sqrt(sum((v - mean) * (v - mean) for v in measured) / (n - 1)) if n > 1 else math.nan
        return cls(mean, std, n)

    def text(self, digits: int = 2, suffix: str = "", signed: bool = False) -> str:
        """"98.52%" for one value, "98.52 ± 0.10%" for several, "n/a" for none."""
        if self.n < 2:
            return fmt(self.mean, digits, suffix, signed)
        return f"{fmt(self.mean, digits, signed=signed)} ± {self.std:.{digits}f}{suffix}"

    def within_noise(self, other: "Estimate") -> Optional[bool]:
        """True/False when both sides have two or more values; None when noise is unknown."""
        if self.n < 2 or other.n < 2:
            return None
        standard_error = math.sqrt(self.std * self.std / self.n + other.std * other.std / other.n)
        return abs(self.mean - other.mean) <= NOISE_STANDARD_ERRORS * standard_error


def config_label(run_id: str) -> str:
    """The run ID without its seed suffix: `lenet5_adam_magnitude_70_s2` -> `lenet5_adam_magnitude_70`."""
    return _SEED_SUFFIX.sub("", run_id)


def has_seeds(table: pd.DataFrame) -> bool:
    """True when some configuration has runs with different seeds."""
    labels = table["run_id"].map(config_label)
    return bool(labels.duplicated().any())


def configurations(table: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    """One row per configuration, in first-appearance order: `config`, model,
    optimizer, pruning, variant, target_sparsity_pct, `runs` (its rows), and
    an Estimate for each of `columns` over its successful runs."""
    columns = [c for c in columns if c in table]
    labelled = table.assign(config=table["run_id"].map(config_label))
    records = []
    for label, runs in labelled.groupby("config", sort=False):
        first = runs.iloc[0]
        good = runs[runs["status"] == "success"]
        record = {"config": label, "runs": runs}
        record.update({key: first[key] for key in ("model", "optimizer", "pruning", "variant",
                                                   "target_sparsity_pct", "task")})
        record.update({column: Estimate.of(good[column]) for column in columns})
        records.append(record)
    return pd.DataFrame(records, dtype=object)  # text stays None when unknown, never NaN
