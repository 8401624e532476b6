"""lib/report/stats: mean ± std (n) per configuration and the within-noise rule."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from lib.report.stats import Estimate, config_label, configurations, has_seeds


def test_estimate_is_mean_sample_std_and_n_of_measured_values() -> None:
    e = Estimate.of([90.0, 91.0, 92.0, math.nan, None])
    assert (e.mean, e.std, e.n) == (91.0, 1.0, 3)
    assert e.text(2, "%") == "91.00 ± 1.00%"
    assert Estimate.of([90.0]).text(2, "%") == "90.00%" and math.isnan(Estimate.of([90.0]).std)
    assert Estimate.of([]).text() == "n/a" and Estimate.of([1.5]).text(2, signed=True) == "+1.50"


def test_within_noise_needs_two_values_each_and_uses_twice_the_standard_error() -> None:
    a = Estimate.of([90.0, 91.0, 92.0])  # standard error 1/sqrt(3)
    assert a.within_noise(Estimate.of([91.5, 92.5, 93.5])) is True  # 1.5 < 2 * sqrt(2/3) = 1.63
    assert a.within_noise(Estimate.of([91.7, 92.7, 93.7])) is False  # 1.7 > 1.63
    assert a.within_noise(Estimate.of([91.0])) is None


def test_configurations_group_seeds_and_keep_failed_runs_out_of_figures() -> None:
    table = pd.DataFrame({
        "run_id": ["m_adam_none_s1", "m_adam_none_s2", "m_adam_none_s3", "m_sgd_none"],
        "model": "m", "optimizer": ["adam"] * 3 + ["sgd"], "pruning": "none", "variant": None,
        "target_sparsity_pct": 0.0, "task": "classification",
        "status": ["success", "success", "failed", "success"], "acc": [90.0, 92.0, math.nan, 80.0]})
    configs = configurations(table, ["acc", "absent"]).set_index("config")
    assert list(configs.index) == ["m_adam_none", "m_sgd_none"] and "absent" not in configs
    assert configs.loc["m_adam_none", "acc"] == Estimate(91.0, pytest.approx(math.sqrt(2)), 2)
    assert len(configs.loc["m_adam_none", "runs"]) == 3
    assert has_seeds(table) and not has_seeds(table.iloc[[0, 3]])
    assert config_label("gpt2_adamwprune_bitter7_state_50_s12") == "gpt2_adamwprune_bitter7_state_50"
