"""lib/report/graphs: the figures of a result table, checked on the figure objects
(error bars, labels, units) and on the files written (PNG and SVG)."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from result_dirs import classifier_metrics, gpu_stats, seeded_matrix, spec, write_matrix, write_run

from lib.report.graphs import (contexts, evolution, memory_comparison, memory_vs_metric, model_comparison,
                               pareto_front, render_graphs, sparsity_schedule)
from lib.results.reader import load_results

OPTIMIZERS = ("sgd", "adam", "adamw", "adamwadv", "adamwspam", "adamwprune")
METHODS = ("magnitude", "movement", "state")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> Path:
    return seeded_matrix(tmp_path_factory.mktemp("seeded"), seeds=(1, 2, 3))


@pytest.fixture(scope="module")
def matrix54(tmp_path_factory) -> Path:
    """54 runs as upstream's full matrix has them: 6 optimizers x 3 methods x 3 sparsities."""
    root = tmp_path_factory.mktemp("matrix54")
    specs = [spec("lenet5", o, m, t) for o in OPTIMIZERS for m in METHODS for t in (50, 70, 90)]
    write_matrix(root, specs)
    for s in specs:
        rng = random.Random(s["run_id"])
        mean = round(300 + 20 * rng.random(), 1)
        metrics = classifier_metrics(s, [90 + rng.random(), 92 + rng.random()], s["target_sparsity_pct"])
        write_run(root, s, "success", metrics, gpu_stats(mean, mean + 50, "cuda"))
    return root


def _overlaps(figure) -> list[str]:
    """Texts of the figure's axes (tick labels, value labels, legend, titles)
    that overlap another or stick out of the figure, drawn as Agg draws them."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    page = figure.bbox
    boxes = []
    for ax in figure.axes:
        (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
        texts = ([t for t in ax.get_xticklabels() if x0 <= t.get_position()[0] <= x1]  # ticks drawn
                 + [t for t in ax.get_yticklabels() if y0 <= t.get_position()[1] <= y1]
                 + ax.texts + [ax.xaxis.label, ax.yaxis.label])
        legend = ax.get_legend()
        texts += legend.get_texts() if legend else []
        boxes += [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_visible() and t.get_text()]
    boxes.append((figure.texts[0].get_text(), figure.texts[0].get_window_extent(renderer)))
    bad = [name for name, box in boxes if not (page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0
                                               and box.y1 <= page.y1)]
    for i, (a, box_a) in enumerate(boxes):
        bad += [f"{a} / {b}" for b, box_b in boxes[i + 1:] if box_a.overlaps(box_b)
                and box_a.intersection(box_a, box_b).width > 0.5 and box_a.intersection(box_a, box_b).height > 0.5]
    return bad


def test_bar_charts_of_54_runs_have_no_overlapping_labels(matrix54: Path) -> None:
    ctx = contexts(load_results(matrix54))[0]
    for build in (model_comparison, memory_comparison):
        figure = build(ctx)
        labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
        assert len(labels) == 54 + 3 and "adamwprune_state_90" in labels
        assert _overlaps(figure) == [], build.__name__


def test_line_legends_of_54_runs_stay_inside_the_figure(matrix54: Path) -> None:
    ctx = contexts(load_results(matrix54))[0]
    for build in (evolution, sparsity_schedule):
        figure = build(ctx)
        legend_texts = [t for ax in figure.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        canvas = FigureCanvasAgg(figure)
        canvas.draw()
        boxes = [t.get_window_extent(canvas.get_renderer()) for t in legend_texts]
        assert boxes and all(figure.bbox.x0 <= b.x0 and b.x1 <= figure.bbox.x1 and figure.bbox.y0 <= b.y0
                             for b in boxes), build.__name__


def test_model_comparison_has_error_bars_of_one_std_over_seeds(seeded: Path) -> None:
    table = load_results(seeded)
    ctx = contexts(table)[0]
    ax = model_comparison(ctx).axes[0]
    bars = next(c for c in ax.containers if hasattr(c, "errorbar"))
    spans = sorted(round(float(s[1][0] - s[0][0]) / 2, 6) for s in bars.errorbar.lines[2][0].get_segments())
    dense = table[table["run_id"].str.startswith("lenet5_adamw_none_")]["best_accuracy_pct"]
    assert round(dense.std(), 6) in spans and len(spans) == 6
    assert ax.get_xlabel() == "Best test accuracy (%), pruned runs at target sparsity" and "± std over seeds" in ax.figure.texts[0].get_text()
    # rows grouped by target sparsity under a heading, dense first, optimizers in order within
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "dense (no pruning)", "target sparsity 50%", "target sparsity 90%", "adamw_none", "sgd_none",
        "adamw_magnitude_50", "sgd_magnitude_50", "adamw_magnitude_90", "sgd_magnitude_90"]
    assert [round(y) for y in ax.get_yticks()] == [0, 3, 6, 1, 2, 4, 5, 7, 8]


def test_cpu_memory_is_called_rss_never_gpu(seeded: Path) -> None:
    ctx = contexts(load_results(seeded))[0]
    figure = memory_comparison(ctx)
    texts = [figure.texts[0].get_text(), figure.axes[0].get_xlabel()]
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


def test_bars_start_at_zero(seeded: Path) -> None:
    """A bar's length is its value: memory bars around 300-370 MiB and accuracy bars around 90% must not
    start at the smallest bar, where a small difference looks like a factor."""
    ctx = contexts(load_results(seeded))[0]
    for build in (model_comparison, memory_comparison):
        low, high = build(ctx).axes[0].get_xlim()
        assert low == 0 and high > 0, build.__name__


def test_memory_vs_accuracy_labels_stay_clear_of_the_legend_and_say_rss(tmp_path: Path) -> None:
    """Every point label is inside the axes (the legend sits right of them, so nothing hides a label),
    even the long one of the point with the most memory, at the right edge and the top; and on CPU the
    front and the axis say they are built on process RSS, mostly the torch runtime."""
    runs = [(spec("lenet5", "sgd", "none", 0.0), 72.2, 304.5), (spec("lenet5", "adamw", "none", 0.0), 80.0, 320.0),
            (spec("lenet5", "adamw", "magnitude", 90.0), 86.8, 353.0)]
    write_matrix(tmp_path, [s for s, _, _ in runs])
    for s, accuracy, mean in runs:
        write_run(tmp_path, s, "success", classifier_metrics(s, [accuracy - 5, accuracy], s["target_sparsity_pct"]),
                  gpu_stats(mean, mean + 100, "cpu"))
    figure = memory_vs_metric(contexts(load_results(tmp_path))[0])
    ax = figure.axes[0]
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    frame, legend = ax.get_window_extent(renderer), ax.get_legend().get_window_extent(renderer)
    assert len(ax.texts) == 3
    for text in ax.texts:
        box = text.get_window_extent(renderer)
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and box.y1 <= frame.y1, text.get_text()
        assert not box.overlaps(legend), text.get_text()
    assert "RSS" in ax.get_legend().get_texts()[-1].get_text()  # the Pareto front's entry
    assert "torch runtime" in ax.get_xlabel() and "RSS" in ax.get_xlabel()


def test_sparsity_schedule_shows_target_overlaps_and_whole_steps(tmp_path: Path) -> None:
    """Every series must be visible: the target (which usually lies exactly on the measured line) is
    drawn over it in another colour; configurations with identical schedules (SGD and AdamW magnitude
    at the same sparsity) share one legend entry naming both; steps are whole numbers."""
    specs = [spec("lenet5", o, "magnitude", t) for o in ("sgd", "adamw") for t in (50.0, 90.0)]
    write_matrix(tmp_path, specs)
    for s in specs:
        metrics = classifier_metrics(s, [80.0, 81.0], s["target_sparsity_pct"])
        ramp = [s["target_sparsity_pct"] * step / 35 for step in (15, 20, 25, 35)]
        metrics["pruning_schedule"] = [{"step": step, "target_pct": pct, "measured_pct": pct}
                                       for step, pct in zip((15, 20, 25, 35), ramp)]
        write_run(tmp_path, s, "success", metrics, gpu_stats(300.0, 400.0, "cpu"))
    ax = sparsity_schedule(contexts(load_results(tmp_path))[0]).axes[0]
    entries = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(entries) == 3 and "target" in entries
    assert all(("sgd_magnitude_" in e and "adamw_magnitude_" in e) for e in entries if e != "target")
    measured = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
    targets = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(measured) == len(targets) == 2
    assert min(t.get_zorder() for t in targets) > max(m.get_zorder() for m in measured)
    assert {t.get_color() for t in targets}.isdisjoint({m.get_color() for m in measured})
    assert all(float(x).is_integer() for x in ax.get_xticks())


# long curves: a stranger's metrics.json of a million evaluations -----------------------------

def test_a_long_curve_is_drawn_through_its_extremes_not_through_every_point(tmp_path: Path) -> None:
    """Every point of every curve was drawn: 1.35 million epochs of a 90 MiB metrics.json took 15 s
    to average and plot. A line of more than DRAW_POINTS points keeps its first and last point and the
    lowest and highest of each slice, so a one-epoch collapse and the peak still show."""
    from lib.report.graphs import DRAW_POINTS

    s = spec("lenet5", "sgd", "magnitude", 50)
    write_matrix(tmp_path, [s])
    count, dip, peak = 60_000, 31_337, 45_678
    accuracy = [90.0 + (i % 7) / 10 for i in range(count)]
    accuracy[dip], accuracy[peak] = 3.0, 99.5
    metrics = classifier_metrics(s, accuracy, 50.0)
    metrics["pruning_schedule"] = [{"step": i, "target_pct": 50.0 * i / count, "measured_pct": 50.0 * i / count}
                                   for i in range(count)]
    metrics["pruning_schedule"][dip]["measured_pct"] = 99.0
    write_run(tmp_path, s, "success", metrics, gpu_stats(300.0, 400.0, "cpu"))
    ctx = contexts(load_results(tmp_path))[0]
    (line,) = evolution(ctx).axes[0].get_lines()
    xs, ys = list(line.get_xdata()), list(line.get_ydata())
    assert len(xs) <= DRAW_POINTS + 2 and xs == sorted(xs)
    assert (xs[0], xs[-1]) == (1, count) and (dip + 1, 3.0) in zip(xs, ys) and (peak + 1, 99.5) in zip(xs, ys)
    measured, target = sparsity_schedule(ctx).axes[0].get_lines()[:2]
    assert len(measured.get_xdata()) <= DRAW_POINTS + 2 and 99.0 in list(measured.get_ydata())
    assert list(target.get_xdata()) == list(measured.get_xdata())


def test_mean_curve_over_seeds_is_the_estimate_at_each_x() -> None:
    """The numpy mean and std per x are Estimate.of's: missing x or y left out, non-finite y not measured,
    curves of different lengths and steps, a figure near the float limit."""
    import math

    from lib.report.graphs import _mean_curve
    from lib.report.stats import Estimate

    rng = random.Random(5)
    curves = [{"points": [[x, rng.gauss(80, 5)] for x in range(0, 40, step)]} for step in (1, 2, 3)]
    curves[0]["points"] += [[None, 1.0], [41, None], [42, math.inf], [43, float("nan")], [44, 1e308]]
    curves[1]["points"] += [[42, 5.0], [44, 1e308], [45, 7.0, "extra"]]
    xs, mean, std = _mean_curve(curves)
    by_x: dict = {}
    for curve in curves:
        for x, y, *_ in curve["points"]:
            if x is not None and y is not None and not (isinstance(y, float) and math.isnan(y)):
                by_x.setdefault(x, []).append(y)
    assert list(xs) == sorted(by_x)
    for x, m, s in zip(xs, mean, std):
        expected = Estimate.of(by_x[x])
        assert m == pytest.approx(expected.mean, rel=1e-12)
        assert s == (0.0 if expected.n < 2 else pytest.approx(expected.std, rel=1e-9))


def test_forked_graph_workers_inherit_the_table_instead_of_receiving_it_pickled(seeded: Path, monkeypatch) -> None:
    """Each figure's task carried the model's whole table to a worker: a million-point curve was pickled
    and unpickled once per figure, 13 of the report's 19 s on two cores."""
    from lib.report import graphs

    def refuse(self, protocol):
        raise AssertionError("a figure context was pickled")

    monkeypatch.setattr(graphs.Context, "__reduce_ex__", refuse)
    names = [graph.name for graph in render_graphs(load_results(seeded), workers=2)]
    assert "lenet5_accuracy_evolution" in names and len(names) >= 6
