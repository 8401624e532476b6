"""Two result directories side by side: what changed, and whether it is beyond the noise.

Owns the comparison of two result tables (lib/results reads both, ours or
upstream's, and has already skipped every run whose names fail lib/names):
runs are matched by configuration (the run ID without its `_s<seed>`
suffix), each metric of COMPARED gets the mean of each side over its
successful runs, the delta B - A and, with two or more measured seeds on both
sides, Welch's t-test p-value (unequal variances); a p-value of ALPHA or more
marks the difference as within noise. Runs that did not succeed are listed
with their status in the words of the reports (lib/report/labels: a run that
went non-finite apart from a crash), runs present on one side only are
listed, and so is every setting that differs between the sides (the runs'
hyper-parameters where both record them, else the config.txt symbols): runs
are matched by ID alone, and the same ID run with other settings is another
experiment. The text and Markdown renderings are in
lib/report/compare_render.py; nothing here reads or writes files.
"""
from __future__ import annotations

import math
import warnings as py_warnings
from dataclasses import dataclass
from typing import Optional

import pandas as pd

from lib.report.labels import non_finite_reason, run_kind, runs_status, status_label
from lib.report.stats import Estimate, config_label
from lib.errors import shown
from lib.results.run_files import one_line

ALPHA = 0.05  # p >= ALPHA: the difference is within noise
# (table field, label, higher is better or None when neither); in this order in every output.
COMPARED: tuple[tuple[str, str, Optional[bool]], ...] = (
    ("best_accuracy_pct", "Best Acc (%)", True),
    ("final_accuracy_pct", "Final Acc (%)", True),
    ("best_perplexity", "Best PPL", False),
    ("final_perplexity", "Final PPL", False),
    ("sparsity_pct", "Sparsity (%)", None),
    ("memory_mean_mib", "Mem Mean (MiB)", False),
    ("memory_peak_mib", "Mem Peak (MiB)", False),
)
LABELS = {field: label for field, label, _ in COMPARED}


def welch_p_value(a: list[float], b: list[float]) -> Optional[float]:
    """Two-sided Welch's t-test p-value, None below two values a side or without any variance."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy.stats import ttest_ind  # scipy is slow to import; only comparisons with seeds need it

    with py_warnings.catch_warnings():  # zero variance on both sides: scipy warns and gives NaN
        py_warnings.simplefilter("ignore", RuntimeWarning)
        p = float(ttest_ind(a, b, equal_var=False).pvalue)
    return p if math.isfinite(p) else None


def _measured(values: pd.Series) -> list[float]:
    return [float(v) for v in values if v is not None and not pd.isna(v) and math.isfinite(float(v))]


@dataclass(frozen=True)
class MetricDelta:
    """One metric of one configuration on both sides."""

    field: str
    a: Estimate
    b: Estimate
    p_value: Optional[float]  # Welch; None when a side has fewer than two measured values

    @property
    def delta(self) -> float:
        return self.b.mean - self.a.mean  # NaN when either side was not measured

    @property
    def standard_error(self) -> float:
        """sqrt(s_a^2/n_a + s_b^2/n_b), the Welch standard error of the delta (NaN below two seeds)."""
        if self.p_value is None:
            return math.nan
        return math.sqrt(self.a.std * self.a.std / self.a.n + self.b.std * self.b.std / self.b.n)

    @property
    def within_noise(self) -> Optional[bool]:
        return None if self.p_value is None else self.p_value >= ALPHA


@dataclass(frozen=True)
class ConfigComparison:
    """A configuration present on both sides, with the runs each side had of it."""

    config: str
    model: Optional[str]
    a_runs: tuple[str, ...]
    b_runs: tuple[str, ...]
    metrics: tuple[MetricDelta, ...]
    # How each side's runs ended when not all succeeded (labels.runs_status: `✗ Non-finite`,
    # `1/3 ✗ (1 non-finite)`); "" when all did.
    a_status: str = ""
    b_status: str = ""

    def metric(self, field: str) -> MetricDelta:
        return next(m for m in self.metrics if m.field == field)


@dataclass(frozen=True)
class Comparison:
    a_name: str
    b_name: str
    a_layout: str
    b_layout: str
    fields: tuple[str, ...]  # COMPARED fields measured on either side
    both: tuple[ConfigComparison, ...]
    only_a: tuple[str, ...]  # run IDs
    only_b: tuple[str, ...]
    notes: tuple[str, ...]  # what a reader must know (memory measured differently, ...)
    # Settings that differ between the sides (SettingDiff); empty when they agree, cannot be told, or no
    # configuration is in both (no delta then, which the settings could explain).
    settings: tuple["SettingDiff", ...] = ()
    settings_source: str = ""  # where `settings` come from: per-run specs or config.txt
    # (side "A" or "B", run ID, status label) of every run that did not succeed, A's first.
    unsuccessful: tuple[tuple[str, str, str, Optional[str]], ...] = ()


@dataclass(frozen=True)
class SettingDiff:
    """One setting whose value differs between A and B, in the configurations (run IDs) it differs in."""
    name: str
    a: str
    b: str
    configs: int  # how many matched configurations differ in it; 0 for a config.txt symbol
    # a config.txt symbol only one directory's file has: an option switched off there (Kconfig writes
    # only visible symbols) or one of another Kconfig tree
    one_side: bool = False


def _first_settings(runs: pd.DataFrame) -> Optional[dict]:
    return next((s for s in runs["settings"] if isinstance(s, dict)), None) if "settings" in runs else None


def spec_differences(a: pd.DataFrame, b: pd.DataFrame) -> Optional[list[SettingDiff]]:
    """Per-run hyper-parameters (matrix.json/run.json) that differ between the configurations found
    on both sides, one entry per setting and pair of values; None when no configuration has them
    recorded on both sides (upstream directories record none)."""
    label_a, label_b = (t.assign(config=t["run_id"].map(config_label)) for t in (a, b))
    groups_b = dict(tuple(label_b.groupby("config", sort=False)))
    counts: dict[tuple[str, str, str], int] = {}
    compared = False
    for label, runs in label_a.groupby("config", sort=False):
        sa = _first_settings(runs)
        sb = _first_settings(groups_b[label]) if label in groups_b else None
        if sa is None or sb is None:
            continue
        compared = True
        for name in dict.fromkeys([*sa, *sb]):
            if sa.get(name) != sb.get(name):
                key = (name, _value(sa, name), _value(sb, name))
                counts[key] = counts.get(key, 0) + 1
    return [SettingDiff(name, va, vb, n) for (name, va, vb), n in counts.items()] if compared else None


def _value(settings: dict, name: str) -> str:
    return shown(settings[name]) if name in settings else "(not recorded)"


def _config_lines(text: object) -> dict[str, str]:
    """Symbol -> value of a config.txt's lines; "n" for `# CONFIG_X is not set`. Only to name what
    differs between two files as text; settings themselves come from lib/config."""
    values: dict[str, str] = {}
    for line in text.splitlines() if isinstance(text, str) else []:
        line = line.strip()
        if line.startswith("CONFIG_") and "=" in line:
            name, value = line.split("=", 1)
            values[name] = value
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            values[line[2:-len(" is not set")]] = "n"
    return values


def _number(value: str) -> Optional[float]:
    """The finite number a config.txt value spells, quoted or not ("0.002", 2e-3); None for any other."""
    text = value.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _same_value(old: str, new: str) -> bool:
    """Equal as text, or both the same finite number (`"0.002"` and `"2e-3"`): Kconfig stores a
    float option as a string, and two ways to write it are one setting."""
    if old == new:
        return True
    x, y = _number(old), _number(new)
    return x is not None and x == y


def config_differences(a: pd.DataFrame, b: pd.DataFrame) -> list[SettingDiff]:
    """config.txt symbols whose values differ between the two directories; [] when either has none.
    Values are shown as written; two spellings of one number are not a difference."""
    old, new = (_config_lines((t.attrs.get("provenance") or {}).get("config")) for t in (a, b))
    if not old or not new:
        return []
    differ = [name for name in dict.fromkeys([*old, *new])
              if not _same_value(old.get(name, "n"), new.get(name, "n"))]
    # Symbols both files have come first: those only one has (upstream's Kconfig tree names options this
    # one does not, and the other way round) are many, and would hide the real differences.
    differ.sort(key=lambda name: name not in old or name not in new)
    return [SettingDiff(one_line(name, 80), one_line(old.get(name, "(unset)"), 80),
                        one_line(new.get(name, "(unset)"), 80), 0, name not in old or name not in new)
            for name in differ]


def _fields(a: pd.DataFrame, b: pd.DataFrame) -> tuple[str, ...]:
    return tuple(f for f, _, _ in COMPARED
                 if any(f in t and t[f].notna().any() for t in (a, b)))


def _config_comparison(label: str, a_runs: pd.DataFrame, b_runs: pd.DataFrame,
                       fields: tuple[str, ...]) -> ConfigComparison:
    good_a, good_b = (runs[runs["status"] == "success"] for runs in (a_runs, b_runs))
    deltas = []
    for field in fields:
        va = _measured(good_a[field]) if field in good_a else []
        vb = _measured(good_b[field]) if field in good_b else []
        deltas.append(MetricDelta(field, Estimate.of(va), Estimate.of(vb), welch_p_value(va, vb)))
    model = a_runs["model"].iloc[0] or b_runs["model"].iloc[0]
    return ConfigComparison(label, model, tuple(a_runs["run_id"]), tuple(b_runs["run_id"]), tuple(deltas),
                            _side_status(a_runs), _side_status(b_runs))


def _side_status(runs: pd.DataFrame) -> str:
    return "" if (runs["status"] == "success").all() else runs_status(runs)


def _unsuccessful(side: str, table: pd.DataFrame) -> list[tuple[str, str, str, Optional[str]]]:
    """(side, run ID, label, what went non-finite at which step or None) of each run that did not succeed."""
    return [(side, row["run_id"], status_label(run_kind(row)), non_finite_reason(row))
            for _, row in table.iterrows() if run_kind(row) != "success"]


def _memory_notes(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    kinds = [sorted({one_line(d, 40) for d in t["memory_device"] if d}) for t in (a, b)]  # a stranger's text
    if kinds[0] and kinds[1] and kinds[0] != kinds[1]:
        return [f"memory is measured differently (A: {', '.join(kinds[0])}, B: {', '.join(kinds[1])}; "
                "cpu means process RSS, cuda GPU memory): its deltas compare different things"]
    return []


def compare_tables(a: pd.DataFrame, b: pd.DataFrame, a_name: str, b_name: str) -> Comparison:
    """The comparison of table `b` against table `a` (deltas are B - A)."""
    fields = _fields(a, b)
    label_a, label_b = (t.assign(config=t["run_id"].map(config_label)) for t in (a, b))
    groups_b = dict(tuple(label_b.groupby("config", sort=False)))
    both = [_config_comparison(label, runs, groups_b[label], fields)
            for label, runs in label_a.groupby("config", sort=False) if label in groups_b]
    ids_a, ids_b = list(a["run_id"]), list(b["run_id"])
    notes = _memory_notes(a, b)
    layouts = (str(a.attrs.get("layout")), str(b.attrs.get("layout")))
    if "upstream" in layouts and layouts[0] != layouts[1]:
        notes.append("one side is an upstream AdamWPrune directory: its runs record no seed and its memory "
                     "is the whole device's")
    only_a = tuple(r for r in ids_a if r not in set(ids_b))
    only_b = tuple(r for r in ids_b if r not in set(ids_a))
    # Runs are matched by run ID alone: the same ID trained for 15 epochs on 4,000 images and
    # for 3 on 1,000 is not the same experiment, so say what differs.
    settings, source = spec_differences(a, b), "the runs' recorded hyper-parameters (matrix.json/run.json)"
    if settings is None:
        settings, source = config_differences(a, b), "the directories' config.txt"
    if not both:  # no delta to explain, so nothing to warn about
        settings = []
    unsuccessful = tuple(_unsuccessful("A", a) + _unsuccessful("B", b))
    return Comparison(a_name, b_name, *layouts, fields, tuple(both), only_a, only_b, tuple(notes),
                      tuple(settings), source if settings else "", unsuccessful)
