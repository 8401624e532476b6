"""Figures of a result table, per model, as PNG and SVG for graphs/.

Owns the matplotlib figures (object API with the Agg canvas, no pyplot, so
nothing global and no display needed): metric evolution per optimizer, model
comparison bars, memory comparison, memory timeline, memory vs metric with
the Pareto front, sparsity schedule reached, and training memory measured
from the tensors. Every figure has a title, axis labels with units and a
legend; figures from several seeds show mean ± standard deviation. Memory of
CPU runs is process RSS and is labelled so, never as GPU memory. Figures are
rendered in memory (Graph) so that reports are written only once all exist.
"""
from __future__ import annotations

import io
import math
import multiprocessing
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from lib.jsonio import write_bytes_atomic, write_text_atomic
from lib.names import is_safe_name
from lib.report.labels import (MEMORY_TERMS, TRAINING_TERMS, MemoryLabels, Metric, memory_labels, short_label,
                               table_metrics)
from lib.report.stats import configurations, fmt, has_seeds, is_missing

AXIS_LABELS = {"epoch": "Epoch", "step": "Training step (optimizer updates)", "eval": "Evaluation number"}
MIB = 2 ** 20
BAR_ROW_IN = 0.22  # inches per bar row: 8 pt labels need about 0.15
LEGEND_RUNS = 12  # above this many runs or configurations, line legends name optimizers
# A line with more points is drawn through its lowest and highest point in each of DRAW_POINTS / 2
# equal slices: a panel is a few hundred pixels wide, so the figure looks the same, spikes included,
# and a stranger's 1.35 million evaluations cost a second, not fifteen.
DRAW_POINTS = 2000


@dataclass(frozen=True)
class Graph:
    """One rendered figure: its file stem, title and both encodings."""
    name: str
    title: str
    png: bytes
    svg: str

    def write(self, folder: Path) -> None:
        if not is_safe_name(self.name):  # the model name is checked when read; this must never happen
            raise ValueError(f"graph name {self.name!r} is not a safe file name")
        write_bytes_atomic(folder / f"{self.name}.png", self.png)
        write_text_atomic(folder / f"{self.name}.svg", self.svg)


@dataclass(frozen=True)
class Context:
    """What every figure of one model needs."""
    model: str
    runs: pd.DataFrame  # the model's rows
    configs: pd.DataFrame  # lib.report.stats.configurations of those rows
    metric: Metric
    memory: MemoryLabels
    colors: dict[str, str]  # optimizer -> colour, the same in every figure
    seeds: bool

    def color(self, optimizer: object) -> str:
        return self.colors.get(str(optimizer), "grey")

    def label(self, config: str) -> str:
        return short_label(config, self.model)

    def error_note(self) -> str:
        return "error bars: ± std over seeds" if self.seeds else "one seed per configuration, no error bars"


def render_graph(name: str, figure: Figure) -> Graph:
    """`figure` as a Graph named `name`: PNG and SVG bytes, the same for the same figure."""
    png, svg = io.BytesIO(), io.BytesIO()
    with warnings.catch_warnings():  # numpy's overflow warnings on a stranger's 1e308 are not our lines
        warnings.simplefilter("ignore", RuntimeWarning)
        figure.savefig(png, format="png", dpi=100)
        figure.set_layout_engine("none")  # laid out by the first save; a second layout pass costs a third
        # no date and ids salted by the name: the same table gives the same file
        with rc_context({"svg.hashsalt": name}):
            figure.savefig(svg, format="svg", metadata={"Date": None})
    title = figure.texts[0].get_text() if figure.texts else name
    return Graph(name, title, png.getvalue(), svg.getvalue().decode())


def drawn(name: str, build: Callable[[], Optional[Figure]]) -> Optional[Graph]:
    """The figure `build` draws, rendered; None when there is none, and None with one warning line
    when drawing fails: figures are drawn from others' files, and one bad value costs one figure."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            figure = build()
        return None if figure is None else render_graph(name, figure)
    except Exception as exc:  # noqa: BLE001 - whatever matplotlib raises on a value it cannot place
        print(f"warning: graphs/{name}: not drawn ({type(exc).__name__}: {str(exc)[:200]})", file=sys.stderr)
        return None


def new_figure(title: str, width: float = 10, height: float = 5.5) -> Figure:
    """An empty figure with the reports' layout and its title (width and height in inches)."""
    figure = Figure(figsize=(width, height), layout="constrained")
    figure.suptitle(title, fontsize=12)
    return figure


def _columns(points: list, width: int) -> np.ndarray:
    """A curve's points ([x, y, ...] each) as an n x width float array, NaN for a missing value."""
    try:
        array = np.array(points, dtype=float).reshape(len(points), -1)
        if array.shape[1] >= width:
            return array[:, :width]
    except (TypeError, ValueError):  # rows of different lengths, or a value that is no number
        pass

    def number(row: object, i: int) -> float:
        value = row[i] if isinstance(row, (list, tuple)) and len(row) > i else None
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan

    return np.array([[number(row, i) for i in range(width)] for row in points], dtype=float).reshape(-1, width)


def _mean_curve(curves: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, mean and std (0 for one curve) of curves sampled at the same x values: Estimate.of over the
    finite values at each x (NaN where there is none), in numpy, since a curve may hold millions of points."""
    xy = np.concatenate([_columns(curve["points"], 2) for curve in curves] or [np.empty((0, 2))])
    xy = xy[~np.isnan(xy).any(axis=1)]
    xs, where = np.unique(xy[:, 0], return_inverse=True)
    where = where.reshape(-1)
    finite = np.isfinite(xy[:, 1])
    at, ys = where[finite], xy[finite, 1]
    n = np.bincount(at, minlength=len(xs))
    with np.errstate(all="ignore"):
        mean = np.bincount(at, weights=ys, minlength=len(xs)) / n
        over = (n > 0) & ~np.isfinite(mean)
        if over.any():  # figures near the float limit (a stranger's 1e308): divide first, as Estimate.of
            mean[over] = np.bincount(at, weights=ys / n[at], minlength=len(xs))[over]
        deviation = ys - mean[at]
        spread = np.bincount(at, weights=deviation * deviation, minlength=len(xs))
        std = np.where(n > 1, np.sqrt(spread / np.maximum(n - 1, 1)), 0.0)
    return xs, mean, std


def _drawn(values: np.ndarray, limit: int = DRAW_POINTS) -> np.ndarray:
    """Indices of the points a line of `values` is drawn through: all of them up to `limit`, else
    the first, the last, and the lowest and highest of each of limit / 2 equal slices, in order."""
    count = len(values)
    if count <= limit:
        return np.arange(count)
    size = math.ceil(count / (limit // 2))
    slices = math.ceil(count / size)
    low = np.pad(np.where(np.isnan(values), np.inf, values), (0, slices * size - count), mode="edge")
    high = np.pad(np.where(np.isnan(values), -np.inf, values), (0, slices * size - count), mode="edge")
    starts = np.arange(slices) * size
    picked = np.concatenate([[0, count - 1], starts + low.reshape(slices, size).argmin(axis=1),
                             starts + high.reshape(slices, size).argmax(axis=1)])
    return np.unique(np.minimum(picked, count - 1))


def _good_curves(runs: pd.DataFrame, column: str) -> list[dict]:
    return [c for c, s in zip(runs[column], runs["status"]) if c and s == "success"]


def _line_styles(configs: list) -> dict[str, dict]:
    """Colour by pruning method and dash by target sparsity (dense solid black),
    so that many lines in one panel stay distinguishable beside their legend."""
    methods = sorted({str(c.pruning) for c in configs if c.pruning != "none"})
    targets = sorted({float(c.target_sparsity_pct) for c in configs
                      if c.pruning != "none" and not is_missing(c.target_sparsity_pct)})
    dashes = ("-", "--", ":", "-.")
    styles = {}
    for c in configs:
        if c.pruning == "none":
            styles[c.config] = {"color": "black", "linestyle": "-"}
            continue
        target = None if is_missing(c.target_sparsity_pct) else float(c.target_sparsity_pct)
        styles[c.config] = {"color": f"C{methods.index(str(c.pruning)) % 10}",
                            "linestyle": dashes[targets.index(target) % len(dashes)] if target in targets else "-"}
    return styles


def evolution(ctx: Context) -> Optional[Figure]:
    """Metric per epoch (or eval step), one panel per optimizer, a line per
    configuration; past LEGEND_RUNS lines in a panel, lines are styled by
    method and sparsity and the legend moves below the panel."""
    have = [(cfg, curves) for _, cfg in ctx.configs.iterrows()
            if (curves := _good_curves(cfg.runs, "metric_curve"))]
    optimizers = sorted({cfg.optimizer for cfg, _ in have}, key=str)
    if not optimizers:
        return None
    axis = have[0][1][0]["axis"]
    ncols = min(3, len(optimizers))
    nrows = math.ceil(len(optimizers) / ncols)
    most = max(sum(cfg.optimizer == o for cfg, _ in have) for o in optimizers)
    many = most > LEGEND_RUNS
    styles = _line_styles([cfg for cfg, _ in have]) if many else {}
    legend_in = 0.17 * math.ceil(most / 2) + 0.3 if many else 0.0  # two columns below each panel
    seeds = " (mean ± std over seeds)" if ctx.seeds else ""
    figure = new_figure(f"{ctx.model}: {ctx.metric.axis_label.split(' (')[0].lower()} per "
                     f"{AXIS_LABELS.get(axis, axis).split(' (')[0].lower()}, by optimizer{seeds}",
                     5.5 * ncols, (4.2 + legend_in) * nrows + 0.6)
    axes = list(figure.subplots(nrows, ncols, squeeze=False, sharey=True).flat)
    for ax, optimizer in zip(axes, optimizers):
        for cfg, curves in have:
            if cfg.optimizer != optimizer:
                continue
            xs, mean, std = _mean_curve(curves)
            kept = _drawn(mean)
            xs, mean, std = xs[kept], mean[kept], std[kept]
            label = ctx.label(cfg.config) + (f" (n={len(curves)})" if len(curves) > 1 else "")
            (line,) = ax.plot(xs, mean, marker="." if len(xs) < 30 else None, label=label,
                              **styles.get(cfg.config, {}))
            if len(curves) > 1:
                ax.fill_between(xs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        if not ctx.metric.higher_is_better:
            ax.set_yscale("log")  # perplexity falls over orders of magnitude early in training
        ax.set(title=str(optimizer), xlabel=AXIS_LABELS.get(axis, axis), ylabel=ctx.metric.axis_label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if many:
            ax.legend(fontsize=7, ncols=2, loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
        else:
            # a fixed corner: loc="best" searches every curve point and dominates drawing time
            ax.legend(fontsize=8, loc="lower right" if ctx.metric.higher_is_better else "upper right")
    for ax in axes[len(optimizers):]:
        ax.set_visible(False)  # panels left over in the last row
    return figure


def _sparsity_group(pruning: object, target: object) -> str:
    if pruning == "none":
        return "dense (no pruning)"
    return "target sparsity unknown" if is_missing(target) else f"target sparsity {float(target):g}%"


def _measured(configs: pd.DataFrame, column: str) -> pd.DataFrame:
    """Configurations with a measured `column`, grouped by target sparsity
    (dense first), then by optimizer, method and variant; column `group`
    names the sparsity group."""
    keep = configs.loc[[e.n > 0 for e in configs[column]]]  # .loc: an empty list keeps the columns
    order = keep.assign(group=[_sparsity_group(p, t) for p, t in zip(keep["pruning"], keep["target_sparsity_pct"])],
                        _d=keep["pruning"] != "none",
                        _t=[math.inf if is_missing(t) else float(t) for t in keep["target_sparsity_pct"]],
                        _o=keep["optimizer"].astype(str), _p=keep["pruning"].astype(str))
    return order.sort_values(["_d", "_t", "_o", "_p", "config"], kind="stable")


def _bar_figure(title: str, configs: pd.DataFrame) -> Figure:
    """A figure tall enough for one readable row per bar and per group heading."""
    rows = len(configs) + configs["group"].nunique()
    return new_figure(title, 10, max(3.5, 1.4 + BAR_ROW_IN * rows))


def _bars(ctx: Context, ax, configs: pd.DataFrame, column: str, digits: int,
          marks: Optional[list[float]] = None) -> list:
    """Horizontal bars of mean ± std per configuration, coloured by optimizer,
    one row each under a bold heading per sparsity group, its value printed
    in a column right of the axes (`marks`, e.g. peaks, drawn as black ticks
    and printed beside it); the value axis starts at zero. Rows grow the figure (_bar_figure), so
    labels never overlap however many runs. Returns the legend handles."""
    ys, headings, y = [], [], 0
    for group in dict.fromkeys(configs["group"]):
        headings.append((y, group))
        for _ in range((configs["group"] == group).sum()):
            y += 1
            ys.append(y)
        y += 1
    estimates = list(configs[column])
    errors = [e.std if e.n > 1 else 0.0 for e in estimates]
    ax.barh(ys, [e.mean for e in estimates], xerr=errors if any(errors) else None, capsize=3, height=0.75,
            edgecolor="black", linewidth=0.5, color=[ctx.color(o) for o in configs["optimizer"]])
    handles: list = _optimizer_handles(ctx, configs)
    ends = [e.mean + err for e, err in zip(estimates, errors)]
    if marks is not None:
        handles.append(ax.scatter(marks, ys, marker="|", s=120, color="black", zorder=3,
                                  label="peak (bars: mean over the run)"))
        ends = [max(t, m) if m == m else t for t, m in zip(ends, marks)]
    texts = [e.text(digits) for e in estimates]
    if marks is not None:
        texts = [f"mean {t}, peak {fmt(m, digits)}" for t, m in zip(texts, marks)]
    for row, text in zip(ys, texts):
        # a column right of the axes: labels never run into bars, marks or each other
        ax.annotate(text, (1.0, row), xycoords=("axes fraction", "data"), xytext=(4, 0),
                    textcoords="offset points", ha="left", va="center", fontsize=7)
    # From zero: a bar's length is read as its value, so an axis cut at the smallest bar
    # makes 353 vs 404 MiB look like 1 to 2.
    low = min([0.0] + [e.mean - err for e, err in zip(estimates, errors)])
    ax.set_xlim(low, max(ends) + 0.05 * ((max(ends) - low) or 1.0))
    ax.set_ylim(ys[-1] + 0.75, -0.75)  # first row on top
    ticks = [(h, name) for h, name in headings] + list(zip(ys, (ctx.label(c) for c in configs["config"])))
    ax.set_yticks([t for t, _ in ticks], [name for _, name in ticks], fontsize=8)
    for label in ax.get_yticklabels()[:len(headings)]:
        label.set_fontweight("bold")
    ax.tick_params(axis="y", length=0)
    for h, _ in headings[1:]:
        ax.axhline(h - 0.5, color="grey", linewidth=0.5)
    ax.grid(axis="x", alpha=0.3)
    return handles


def _legend_outside(ax, handles: Optional[list], title: str) -> None:
    """A legend right of the axes: it never hides data, and placing it costs nothing."""
    kwargs = {"handles": handles} if handles is not None else {}
    ax.legend(**kwargs, title=title, fontsize=8, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _legend_above(ax, handles: list) -> None:
    """A legend between the title and the axes: the right side holds the value column."""
    ax.legend(handles=handles, fontsize=8, ncols=min(len(handles), 4), loc="lower center",
              bbox_to_anchor=(0.5, 1.0), frameon=False)


def _optimizer_handles(ctx: Context, rows: pd.DataFrame) -> list[Patch]:
    return [Patch(color=ctx.color(o), label=str(o)) for o in dict.fromkeys(rows["optimizer"])]


def model_comparison(ctx: Context) -> Optional[Figure]:
    configs = _measured(ctx.configs, ctx.metric.best)
    if configs.empty:
        return None
    figure = _bar_figure(f"{ctx.model}: {ctx.metric.title} by configuration ({ctx.error_note()})", configs)
    ax = figure.subplots()
    _legend_above(ax, _bars(ctx, ax, configs, ctx.metric.best, 2))
    ax.set(xlabel=ctx.metric.best_axis_label, ylabel="Configuration")
    return figure


def memory_comparison(ctx: Context) -> Optional[Figure]:
    configs = _measured(ctx.configs, "memory_mean_mib")
    if configs.empty:
        return None
    figure = _bar_figure(f"{ctx.model}: {ctx.memory.name} by configuration ({ctx.error_note()})", configs)
    ax = figure.subplots()
    peaks = [e.mean for e in configs["memory_peak_mib"]]
    _legend_above(ax, _bars(ctx, ax, configs, "memory_mean_mib", 1, peaks))
    ax.set(xlabel=ctx.memory.axis_label, ylabel="Configuration")
    return figure


def memory_timeline(ctx: Context) -> Optional[Figure]:
    runs = ctx.runs[[bool(t) for t in ctx.runs["memory_timeline"]]]
    if runs.empty:
        return None
    figure = new_figure(f"{ctx.model}: {ctx.memory.name} over time, per run")
    ax = figure.subplots()
    per_run = len(runs) <= LEGEND_RUNS
    for _, run in runs.iterrows():
        ts, mib = zip(*run.memory_timeline)
        ax.plot(ts, mib, linewidth=1, label=ctx.label(run.run_id) if per_run else None,
                color=None if per_run else ctx.color(run.optimizer))
    _legend_outside(ax, None if per_run else _optimizer_handles(ctx, runs), "run" if per_run else "optimizer")
    ax.set(xlabel="Time since the sampler started (s)", ylabel=ctx.memory.axis_label)
    ax.grid(alpha=0.3)
    return figure


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the points no other point beats on both memory (lower) and metric."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1] if higher_is_better
                                                      else points[i][1]))
    front, best = [], None
    for i in order:
        value = points[i][1]
        if best is None or (value > best if higher_is_better else value < best):
            front.append(i)
            best = value
    return front


def memory_vs_metric(ctx: Context) -> Optional[Figure]:
    configs = _measured(_measured(ctx.configs, ctx.metric.best), "memory_mean_mib")
    if configs.empty:
        return None
    memory, metric = list(configs["memory_mean_mib"]), list(configs[ctx.metric.best])
    figure = new_figure(f"{ctx.model}: {ctx.metric.title} vs mean {ctx.memory.name} ({ctx.error_note()})")
    ax = figure.subplots()
    for m, a, optimizer in zip(memory, metric, configs["optimizer"]):
        ax.errorbar(m.mean, a.mean, xerr=m.std if m.n > 1 else None, yerr=a.std if a.n > 1 else None,
                    fmt="o", color=ctx.color(optimizer), capsize=3)
    front = pareto_front([(m.mean, a.mean) for m, a in zip(memory, metric)], ctx.metric.higher_is_better)
    # each point of the front ringed: a front of one point draws no line, and would show nothing
    ax.plot([memory[i].mean for i in front], [metric[i].mean for i in front], color="red", linestyle="--",
            drawstyle="steps-post", marker="o", markersize=11, markerfacecolor="none",
            label=f"Pareto front (on mean {ctx.memory.name})")
    labels = configs["config"].tolist()
    middle = sum(ax.get_xlim()) / 2
    for i in (range(len(labels)) if len(labels) <= LEGEND_RUNS else front):
        # labels of right-hand points go left of them: to the right they would run out of the
        # axes and under the legend
        right = memory[i].mean > middle
        ax.annotate(ctx.label(labels[i]), (memory[i].mean, metric[i].mean), fontsize=7,
                    xytext=(-4 if right else 4, 4), textcoords="offset points", ha="right" if right else "left")
    ax.margins(y=0.08)  # room above the top point for its label
    _legend_outside(ax, _optimizer_handles(ctx, configs) + ax.get_legend_handles_labels()[0], "optimizer")
    caveat = f"\n({ctx.memory.caveat})" if ctx.memory.caveat else ""
    ax.set(xlabel=f"{ctx.memory.axis_label}, mean over the run{caveat}", ylabel=ctx.metric.best_axis_label)
    ax.grid(alpha=0.3)
    return figure


def _schedule_groups(firsts: list) -> list[tuple[list, np.ndarray]]:
    """(configurations, schedule) per distinct schedule (an n x 3 array: step, target, measured):
    configurations that pruned on the same steps to the same sparsities (SGD and AdamW magnitude
    runs often do) share one line, since lines drawn on top of each other hide all but the last."""
    groups: dict[bytes, tuple[list, np.ndarray]] = {}
    for cfg, schedule in firsts:
        key = schedule.tobytes()  # the same points give the same bytes, NaN included, in one pass
        groups.setdefault(key, ([], schedule))[0].append(cfg)
    return list(groups.values())


def _shared_label(names: list[str], shown: int = 3) -> str:
    """A legend label for configurations sharing one line; past `shown` names, a count keeps it one line."""
    if len(names) == 1:
        return names[0]
    more = f" + {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more + " (same schedule)"


def sparsity_schedule(ctx: Context) -> Optional[Figure]:
    """Measured sparsity at each mask update (first seed of each configuration; configurations
    with the same schedule share a line), the target drawn over it in thin black dashes;
    above LEGEND_RUNS lines, coloured by optimizer."""
    firsts = [(cfg, curves[0]) for _, cfg in ctx.configs.iterrows()
              if cfg.pruning != "none" and (curves := _good_curves(cfg.runs, "sparsity_schedule"))]
    if not firsts:
        return None
    axis = firsts[0][1]["axis"]
    firsts = [(cfg, _columns(schedule["points"], 3)) for cfg, schedule in firsts]
    targets_known = any(not np.isnan(schedule[:, 1]).all() for _, schedule in firsts)
    figure = new_figure(f"{ctx.model}: sparsity reached during training"
                        + (" (coloured: measured, black dashed: target)" if targets_known else " (measured)"))
    ax = figure.subplots()
    groups = _schedule_groups(firsts)
    per_line = len(groups) <= LEGEND_RUNS
    handles = []
    for cfgs, schedule in groups:
        schedule = schedule[_drawn(schedule[:, 2])]
        xs, targets = schedule[:, 0], schedule[:, 1]
        label = _shared_label([ctx.label(cfg.config) for cfg in cfgs])
        (line,) = ax.plot(xs, schedule[:, 2], label=label if per_line else None,
                          color=None if per_line else ctx.color(cfgs[0].optimizer), linewidth=2.5,
                          marker="o" if len(xs) <= 50 else None, markersize=4, zorder=2)
        handles.append(line)
        if not np.isnan(targets).all():
            # on top, thin and black: the target usually lies exactly on the measured line
            ax.plot(xs, targets, linestyle="--", color="black", linewidth=1, zorder=3)
    if targets_known:
        handles.append(Line2D([], [], linestyle="--", color="black", linewidth=1, label="target"))
    ax.set(xlabel=AXIS_LABELS.get(axis, axis),
           ylabel="Sparsity of prunable weights (%)", ylim=(0, 100))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and epochs are whole numbers
    ax.grid(alpha=0.3)
    if not per_line:
        handles = _optimizer_handles(ctx, pd.DataFrame([c for c, _ in firsts])) + handles[len(groups):]
    _legend_outside(ax, handles, "configuration" if per_line else "optimizer")
    return figure


def training_memory(ctx: Context) -> Optional[Figure]:
    """Stacked measured bytes per configuration (first run that recorded them)."""
    rows = []
    for _, cfg in ctx.configs.iterrows():
        recorded = [run for _, run in cfg.runs.iterrows() if run.memory_bytes]
        if recorded:
            rows.append((cfg, recorded[0]))  # bytes do not depend on the seed
    if not rows:
        return None
    figure = new_figure(f"{ctx.model}: training memory = {TRAINING_TERMS}\n(measured bytes of the tensors)",
                     10, 2.2 + 0.4 * len(rows))
    ax = figure.subplots()
    ys = range(len(rows))
    left = [0.0] * len(rows)
    colors = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3")  # one per MEMORY_TERMS entry
    for (term, label), color in zip(MEMORY_TERMS, colors, strict=True):
        widths = [(run.memory_bytes.get(term) or 0) / MIB for _, run in rows]
        ax.barh(ys, widths, left=left, color=color, label=label)
        left = [a + b for a, b in zip(left, widths)]
    for y, (x, (_, run)) in enumerate(zip(left, rows)):
        note = f" training {run.training_multiplier:.2f}× weights" if not is_missing(run.training_multiplier) else ""
        if not is_missing(run.inference_multiplier):
            note += f"; inference {run.inference_multiplier:.2f}×"
        ax.text(x, y, note, va="center", fontsize=7)
    ax.set_yticks(list(ys), [ctx.label(cfg.config) for cfg, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(left) * 1.35 or 1)
    ax.set(xlabel="Memory (MiB, measured bytes of the tensors)", ylabel="Configuration")
    ax.legend(fontsize=8, ncols=len(MEMORY_TERMS), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    return figure


# File stem (after "<model>_") -> figure builder; a builder returns None when
# the table has nothing to draw (an upstream directory records no tensor bytes).
BUILDERS: dict[str, Callable[[Context], Optional[Figure]]] = {
    "{metric}_evolution": evolution,
    "model_comparison": model_comparison,
    "{memory}_comparison": memory_comparison,
    "{memory}_timeline": memory_timeline,
    "memory_vs_{metric}": memory_vs_metric,
    "sparsity_schedule": sparsity_schedule,
    "training_memory_comparison": training_memory,
}


def _build(task: tuple[str, str, Context]) -> Optional[Graph]:
    name, stem, ctx = task
    return drawn(name, lambda: BUILDERS[stem](ctx))


# render_graphs' tasks while its forked workers draw them: a worker inherits the table with its memory
# instead of receiving a pickled copy per figure (a curve of a million points pickled and unpickled
# seven times cost 13 s on 2 cores).
_FORKED_TASKS: list[tuple[str, str, Context]] = []


def _build_forked(index: int) -> Optional[Graph]:
    return _build(_FORKED_TASKS[index])


def contexts(table: pd.DataFrame) -> list[Context]:
    """One figure context per model of `table`; colours follow the optimizers of the whole table."""
    memory = memory_labels(table)
    palette = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
               "tab:olive", "tab:cyan", "tab:gray")
    optimizers = sorted(table["optimizer"].dropna().astype(str).unique())
    colors = {o: palette[i % len(palette)] for i, o in enumerate(optimizers)}
    found = []
    for model, runs in table.groupby("model", sort=True):
        metric = table_metrics(runs)[0]
        configs = configurations(runs, [metric.best, "memory_mean_mib", "memory_peak_mib"])
        found.append(Context(str(model), runs, configs, metric, memory, colors, has_seeds(runs)))
    return found


def render_graphs(table: pd.DataFrame, workers: Optional[int] = None) -> list[Graph]:
    """Every figure of every model of `table`, rendered in memory.

    Drawing dominates (a 60-run directory takes seconds per core), so figures
    are drawn by `workers` forked processes (default: one per CPU) where the
    platform forks; elsewhere, or with workers=1, one after the other."""
    tasks = [(f"{ctx.model}_" + stem.format(metric=ctx.metric.slug, memory=ctx.memory.slug), stem, ctx)
             for ctx in contexts(table) for stem in BUILDERS]
    workers = min(len(tasks), os.cpu_count() or 1) if workers is None else workers
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        _FORKED_TASKS[:] = tasks  # before the pool exists: its workers fork with them
        try:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                graphs = list(pool.map(_build_forked, range(len(tasks))))
        finally:
            _FORKED_TASKS.clear()
    else:
        graphs = [_build(task) for task in tasks]
    return [graph for graph in graphs if graph is not None]
