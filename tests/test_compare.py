"""make compare: two result directories made here (ours, and upstream's copied from the fixture),
checked against deltas and Welch p-values computed by hand."""
from __future__ import annotations

import hashlib
import math
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, make
from result_dirs import classifier_metrics, gpu_stats, spec, write_matrix, write_run

from lib.report.compare import compare_tables, welch_p_value
from lib.report.compare_render import setting_lines, settings_warning
from lib.results.reader import load_results

LEGACY = ROOT / "tests" / "fixtures" / "legacy" / "test_matrix_results_20250903_180836"
UPSTREAM_RUN = ("resnet18", "adam", "magnitude", 70.0)  # a configuration LEGACY has too
BEST_A = [97.0, 97.2, 97.4]  # lenet5_adam_magnitude_70, seeds 1-3
BEST_B = [98.0, 98.1, 98.5]


def _student_t_sf(t: float, df: float, steps: int = 20000) -> float:
    """P(T > t) for Student's t, by Simpson's rule on its density (independent of scipy)."""
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    density = lambda x: c * (1 + x * x / df) ** (-(df + 1) / 2)  # noqa: E731
    h = t / steps
    area = density(0) + density(t) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
    return 0.5 - area * h / 3


def welch_by_hand(a: list[float], b: list[float]) -> float:
    """Welch's t and Welch-Satterthwaite degrees of freedom, two-sided p-value."""
    def mean_var(x: list[float]) -> tuple[float, float]:
        m = sum(x) / len(x)
        return m, sum((v - m) ** 2 for v in x) / (len(x) - 1)
    (ma, va), (mb, vb) = mean_var(a), mean_var(b)
    qa, qb = va / len(a), vb / len(b)
    t = abs(ma - mb) / math.sqrt(qa + qb)
    df = (qa + qb) ** 2 / (qa ** 2 / (len(a) - 1) + qb ** 2 / (len(b) - 1))
    return 2 * _student_t_sf(t, df)


def _side(root: Path, best: list[float], seeds: tuple[int, ...], extra: str) -> Path:
    """Two configurations with every seed: adam magnitude 70 (best accuracies `best`), sgd none (always 95.0);
    plus a run `extra` found on this side only."""
    specs = [spec("lenet5", "adam", "magnitude", 70.0, seed=s, tag_seed=True) for s in seeds]
    specs += [spec("lenet5", "sgd", "none", 0.0, seed=s, tag_seed=True) for s in seeds]
    specs.append(spec("lenet5", extra, "none", 0.0, seed=1, tag_seed=True))
    write_matrix(root, specs)
    for s in specs:
        acc = best[s["seed"] - 1] if s["pruning"] == "magnitude" else 95.0
        sparsity = 69.9 if s["pruning"] == "magnitude" else 0.0
        write_run(root, s, "success", classifier_metrics(s, [acc - 1, acc], sparsity),
                  gpu_stats(300.0 + s["seed"], 350.0, "cpu"))
    return root


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        h.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture
def sides(tmp_path: Path) -> tuple[Path, Path]:
    return _side(tmp_path / "a", BEST_A, (1, 2, 3), "adamw"), _side(tmp_path / "b", BEST_B, (1, 2, 3), "sgd_x")


def test_welch_p_value_matches_the_formula():
    expected = welch_by_hand(BEST_A, BEST_B)
    assert welch_p_value(BEST_A, BEST_B) == pytest.approx(expected, rel=1e-6)
    assert 0.005 < expected < 0.02  # the two sides differ beyond their noise
    assert welch_p_value([1.0], [2.0, 3.0]) is None


def test_compare_gives_deltas_p_values_and_runs_of_one_side(sides):
    a, b = sides
    comparison = compare_tables(load_results(a), load_results(b), "a", "b")
    by_config = {c.config: c for c in comparison.both}
    assert set(by_config) == {"lenet5_adam_magnitude_70", "lenet5_sgd_none"}
    best = by_config["lenet5_adam_magnitude_70"].metric("best_accuracy_pct")
    assert best.delta == pytest.approx(sum(BEST_B) / 3 - sum(BEST_A) / 3)  # +1.0 point
    assert best.a.n == best.b.n == 3 and best.a.std == pytest.approx(0.2)
    assert best.p_value == pytest.approx(welch_by_hand(BEST_A, BEST_B), rel=1e-6) and best.within_noise is False
    memory = by_config["lenet5_sgd_none"].metric("memory_mean_mib")
    assert memory.delta == 0 and memory.within_noise is True  # same seeds, same memory: p = 1
    assert comparison.only_a == ("lenet5_adamw_none_s1",) and comparison.only_b == ("lenet5_sgd_x_none_s1",)


@pytest.mark.slow  # runs make
def test_make_compare_writes_text_markdown_and_graph_and_leaves_inputs_untouched(sides, tmp_path):
    a, b = sides
    before = [_digest(a), _digest(b)]
    out = tmp_path / "out"
    proc = make(ROOT, "compare", f"A={a}", f"B={b}", f"OUT={out}")
    assert proc.returncode == 0, proc.stderr
    assert [_digest(a), _digest(b)] == before
    text = (out / "compare.txt").read_text()
    row = next(line for line in text.splitlines() if "lenet5_adam_magnitude_70" in line and "Best Acc" in line)
    assert "97.20 ± 0.20 (n=3)" in row and "+1.00" in row and f"{welch_by_hand(BEST_A, BEST_B):.3g}" in row
    assert "differs (p < 0.05)" in row
    assert "lenet5_adamw_none_s1" in text and "lenet5_sgd_x_none_s1" in text
    assert "| lenet5_adam_magnitude_70 | Best Acc (%) |" in (out / "compare.md").read_text()
    assert (out / "graphs" / "compare_deltas.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_with_an_upstream_directory_shows_both_sides(tmp_path):
    upstream = tmp_path / "upstream"
    shutil.copytree(LEGACY, upstream)
    ours = tmp_path / "ours"
    s = spec("resnet18", "adam", "magnitude", 70.0)
    write_matrix(ours, [s])
    write_run(ours, s, "success", classifier_metrics(s, [89.0, 90.11], 69.95), gpu_stats(900.0, 1000.0))
    before = _digest(upstream)
    comparison = compare_tables(load_results(upstream), load_results(ours), "up", "ours")
    (config,) = comparison.both
    upstream_best = load_results(upstream).set_index("run_id").loc["resnet18_adam_magnitude_70", "best_accuracy_pct"]
    assert config.metric("best_accuracy_pct").delta == pytest.approx(90.11 - upstream_best)
    assert "resnet18_adamwprune_state_70" in comparison.only_a and comparison.only_b == ()
    assert any("upstream" in note for note in comparison.notes)
    assert _digest(upstream) == before


def test_out_inside_an_input_is_refused_and_bad_input_is_one_line(sides, tmp_path):
    a, b = sides
    script = [str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "scripts" / "compare.py")]
    inside = subprocess.run(script + [str(a), str(b), "--out", str(a / "cmp")], capture_output=True, text=True)
    assert inside.returncode == 2 and inside.stderr.startswith("error: ") and not (a / "cmp").exists()
    (b / "lenet5_sgd_none_s2" / "metrics.json").write_text("{not json")
    (tmp_path / "junk").mkdir()
    bad = subprocess.run(script + [str(a), str(tmp_path / "junk")], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    corrupt = subprocess.run(script + [str(a), str(b)], capture_output=True, text=True, cwd=tmp_path)
    assert corrupt.returncode == 0 and "warning: " in corrupt.stderr and "Traceback" not in corrupt.stderr
    assert list(tmp_path.glob("compare_*/compare.txt"))


def test_default_compare_folders_stay_out_of_git_status():
    """`make compare` without OUT= writes compare_<time>/ in the project root (the current directory)."""
    from conftest import git_ignores

    assert git_ignores("compare_20260101_120000/compare.md") and git_ignores("compare_20260101_120000_2/compare.txt")
    assert not git_ignores("lib/report/compare.py")


def _quick_side(root: Path, epochs: int, train_limit: int, config: str,
                run: tuple = ("lenet5", "sgd", "none", 0.0)) -> Path:
    """One configuration, `run` (lenet5_sgd_none), trained for `epochs` on `train_limit` images."""
    s = spec(*run)
    s["hyperparams"] = {"training": {"epochs": epochs, "batch_size": 64}, "model": {"train_limit": train_limit}}
    write_matrix(root, [s])
    write_run(root, s, "success", classifier_metrics(s, [90.0, 91.0], 0.0), gpu_stats(300.0, 350.0, "cpu"))
    (root / "config.txt").write_text(config)
    return root


def test_compare_warns_when_the_directories_were_run_with_different_settings(tmp_path):
    """Runs are matched by run ID alone: lenet5-quick (15 epochs on 4,000 images) against ci-quick
    (3 epochs on 1,000) must say so in compare.txt, compare.md and on stderr, naming the settings."""
    a = _quick_side(tmp_path / "a", 15, 4000, "CONFIG_NUM_EPOCHS=15\nCONFIG_LENET5_TRAIN_LIMIT=4000\n")
    b = _quick_side(tmp_path / "b", 3, 1000, "CONFIG_NUM_EPOCHS=3\nCONFIG_LENET5_TRAIN_LIMIT=1000\n")
    script = [str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "scripts" / "compare.py")]
    proc = subprocess.run(script + [str(a), str(b), "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for text in (proc.stderr, (tmp_path / "out" / "compare.txt").read_text(),
                 (tmp_path / "out" / "compare.md").read_text()):
        assert "different settings" in text or "settings differ" in text
        assert "training.epochs: 15 -> 3" in text and "model.train_limit: 4000 -> 1000" in text
        assert "batch_size" not in text  # the same on both sides
    same = compare_tables(load_results(a), load_results(a), "a", "a")
    assert same.settings == ()


def test_compare_with_an_upstream_directory_names_differing_config_symbols(tmp_path):
    """Upstream runs record no hyper-parameters; their config.txt is compared instead."""
    ours = _quick_side(tmp_path / "ours", 3, 1000, (LEGACY / "config.txt").read_text().replace(
        "CONFIG_NUM_EPOCHS=100", "CONFIG_NUM_EPOCHS=3"), UPSTREAM_RUN)
    comparison = compare_tables(load_results(LEGACY), load_results(ours), "up", "ours")
    assert [(d.name, d.a, d.b) for d in comparison.settings] == [("CONFIG_NUM_EPOCHS", "100", "3")]
    assert "config.txt" in comparison.settings_source


def test_config_symbols_both_files_set_come_before_those_only_one_sets(tmp_path):
    """Upstream's Kconfig tree names options ours lacks (and the other way round): symbols only one file sets
    must not push a real difference out of the twelve lines shown, and the warning counts them."""
    legacy = (LEGACY / "config.txt").read_text().splitlines(keepends=True)
    dropped = [line for line in legacy if line.startswith("CONFIG_")][:14]  # A's first symbols: only in A
    kept = [line for line in legacy if line not in dropped]
    text = "".join(kept).replace('CONFIG_OPTIMIZER_DEFAULT=""', 'CONFIG_OPTIMIZER_DEFAULT="adamw"')
    ours = _quick_side(tmp_path / "ours", 3, 1000, text + "CONFIG_OURS_ONLY=y\n", UPSTREAM_RUN)
    comparison = compare_tables(load_results(LEGACY), load_results(ours), "up", "ours")
    assert [(d.name, d.one_side) for d in comparison.settings][:2] == [("CONFIG_OPTIMIZER_DEFAULT", False),
                                                                       ("CONFIG_BATCH_SIZE", True)]
    assert setting_lines(comparison)[0] == 'CONFIG_OPTIMIZER_DEFAULT: "" -> "adamw"'
    assert setting_lines(comparison)[1] == "CONFIG_BATCH_SIZE: 128 -> (unset)"
    assert comparison.settings[-1].name == "CONFIG_OURS_ONLY"
    assert "16 settings differ" in settings_warning(comparison)
    assert "15 of them set in one file only (options switched off there, or of another Kconfig tree), " \
           "listed last" in settings_warning(comparison)
    assert "may come from different Kconfig trees" not in settings_warning(comparison)  # usually a menu switched off


def test_config_values_that_spell_the_same_number_do_not_differ(tmp_path):
    """`CONFIG_LEARNING_RATE="0.002"` and `"2e-3"` are one setting; a real difference keeps its spelling."""
    a = _quick_side(tmp_path / "a", 3, 1000, 'CONFIG_LEARNING_RATE="0.002"\nCONFIG_WEIGHT_DECAY=0.0001\n'
                                            'CONFIG_NUM_EPOCHS=3\nCONFIG_MOMENTUM="0.9"\n')
    b = _quick_side(tmp_path / "b", 3, 1000, 'CONFIG_LEARNING_RATE="2e-3"\nCONFIG_WEIGHT_DECAY=1e-4\n'
                                            'CONFIG_NUM_EPOCHS=3.0\nCONFIG_MOMENTUM="0.90000"\n')
    from lib.report.compare import config_differences

    assert config_differences(load_results(a), load_results(b)) == []
    c = _quick_side(tmp_path / "c", 3, 1000, 'CONFIG_LEARNING_RATE="3e-3"\nCONFIG_WEIGHT_DECAY=0.0001\n'
                                            'CONFIG_NUM_EPOCHS=3\nCONFIG_MOMENTUM="nan"\n')
    assert [(d.name, d.a, d.b) for d in config_differences(load_results(a), load_results(c))] == [
        ("CONFIG_LEARNING_RATE", '"0.002"', '"3e-3"'), ("CONFIG_MOMENTUM", '"0.9"', '"nan"')]


def test_no_settings_warning_when_no_configuration_is_in_both(tmp_path):
    """Settings explain a delta; with no configuration in both there is none, and nothing to warn about."""
    a = _quick_side(tmp_path / "a", 15, 4000, "CONFIG_NUM_EPOCHS=15\n")
    b = tmp_path / "b"
    s = spec("lenet5", "adam", "none", 0.0)
    s["hyperparams"] = {"training": {"epochs": 3, "batch_size": 64}, "model": {"train_limit": 1000}}
    write_matrix(b, [s])
    write_run(b, s, "success", classifier_metrics(s, [90.0, 91.0], 0.0), gpu_stats(300.0, 350.0, "cpu"))
    (b / "config.txt").write_text("CONFIG_NUM_EPOCHS=3\n")
    assert compare_tables(load_results(a), load_results(b), "a", "b").settings == ()
    script = [str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "scripts" / "compare.py")]
    proc = subprocess.run(script + [str(a), str(b), "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "out" / "compare.txt").read_text()
    assert "No configuration is present in both directories." in text
    for output in (proc.stderr, text, (tmp_path / "out" / "compare.md").read_text()):
        assert "different settings" not in output and "CONFIG_NUM_EPOCHS" not in output


def test_delta_graph_marks_one_seed_bars_and_titles_only_the_error_bars_it_draws(tmp_path):
    """One seed a side: no Welch SE exists and the noise is unknown; those bars must not look significant."""
    from lib.report.compare_render import delta_figure

    def drawn(seeds: tuple[int, ...], name: str):
        a, b = (_side(tmp_path / name / s, best, seeds, "adamw") for s, best in (("a", BEST_A), ("b", BEST_B)))
        figure = delta_figure(compare_tables(load_results(a), load_results(b), "a", "b"))
        patches = [p for ax in figure.axes for p in ax.patches]
        return figure.get_suptitle(), patches, [t.get_text() for legend in figure.legends for t in legend.get_texts()]

    title, patches, legend = drawn((1,), "one")
    assert "Welch SE" not in title and "hatched: one seed: noise unknown" in title
    assert legend == ["one seed: noise unknown"]  # sgd none's accuracy, the same on both sides, draws no bar
    moved = [p for p in patches if p.get_width() != 0]  # best/final accuracy of adam magnitude 70: +1.0
    assert moved and all(p.get_hatch() == "//" for p in moved)
    title, patches, legend = drawn((1, 2, 3), "three")
    assert "bars ± Welch SE" in title and "one seed" not in title and "one seed: noise unknown" not in legend
    assert not any(p.get_hatch() for p in patches) and "differs (p < 0.05)" in legend


def test_compare_of_a_directory_with_itself_says_so_once_and_still_writes(sides, tmp_path):
    a, _ = sides
    (tmp_path / "link").symlink_to(a)
    script = [str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "scripts" / "compare.py")]
    proc = subprocess.run(script + [str(a), str(tmp_path / "link" / ".." / "a"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("note:") == 1 and "A and B are the same directory" in proc.stderr
    assert "lenet5_adam_magnitude_70" in (tmp_path / "out" / "compare.txt").read_text()
    other = subprocess.run(script + [str(a), str(tmp_path / "b"), "--out", str(tmp_path / "out2")],
                           capture_output=True, text=True)
    assert other.returncode == 0 and "same directory" not in other.stderr
