"""lib/graphs: the figures of a result table, checked on the figure objects
(error bars, labels, units) and on the files written (PNG and SVG)."""
from __future__ import annotations

from pathlib import Path

import pytest
from result_dirs import seeded_matrix

from lib.graphs import contexts, memory_comparison, model_comparison, pareto_front, render_graphs
from lib.results import load_results


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> Path:
    return seeded_matrix(tmp_path_factory.mktemp("seeded"), seeds=(1, 2, 3))


def test_model_comparison_has_error_bars_of_one_std_over_seeds(seeded: Path) -> None:
    table = load_results(seeded)
    ctx = contexts(table)[0]
    ax = model_comparison(ctx).axes[0]
    bars = next(c for c in ax.containers if hasattr(c, "errorbar"))
    spans = sorted(round(float(s[1][1] - s[0][1]) / 2, 6) for s in bars.errorbar.lines[2][0].get_segments())
    dense = table[table["run_id"].str.startswith("lenet5_adamw_none_")]["best_accuracy_pct"]
    assert round(dense.std(), 6) in spans and len(spans) == 6
    assert ax.get_ylabel() == "Best test accuracy (%)" and "± std over seeds" in ax.figure.texts[0].get_text()
    assert [t.get_text() for t in ax.get_xticklabels()][:3] == ["adamw_none", "adamw_magnitude_50",
                                                                "adamw_magnitude_90"]


def test_cpu_memory_is_called_rss_never_gpu(seeded: Path) -> None:
    ctx = contexts(load_results(seeded))[0]
    figure = memory_comparison(ctx)
    texts = [figure.texts[0].get_text(), figure.axes[0].get_ylabel()]
    assert all("GPU memory" not in t for t in texts[:1]) and "RSS" in texts[0]
    assert texts[1] == "Process RSS (MiB; CPU run, not GPU memory)"


def test_every_graph_is_written_as_png_and_svg(seeded: Path, tmp_path: Path) -> None:
    graphs = render_graphs(load_results(seeded), workers=1)
    assert [g.name for g in graphs] == [
        "lenet5_accuracy_evolution", "lenet5_model_comparison", "lenet5_rss_memory_comparison",
        "lenet5_rss_memory_timeline", "lenet5_memory_vs_accuracy", "lenet5_sparsity_schedule",
        "lenet5_training_memory_comparison"]
    for graph in graphs:
        graph.write(tmp_path)
        assert (tmp_path / f"{graph.name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "<svg" in (tmp_path / f"{graph.name}.svg").read_text() and graph.title.startswith("lenet5: ")


def test_pareto_front_keeps_what_nothing_beats_on_both_axes() -> None:
    points = [(100.0, 90.0), (120.0, 95.0), (110.0, 89.0), (130.0, 94.0), (100.0, 85.0)]
    assert pareto_front(points, higher_is_better=True) == [0, 1]
    assert pareto_front(points, higher_is_better=False) == [4]  # lower perplexity: 85 at the least memory
