"""compare.md, compare.txt and the delta graph of a Comparison (lib/report/compare).

Owns how a comparison reads: one row per configuration and metric with each
side's figure (mean ± std and n with several seeds), the delta B - A, the
Welch p-value and the verdict (naming the status of a side that measured
nothing: `✗ Non-finite`); then the runs that did not succeed and the runs of
one side only. Markdown and text render the same blocks (lib/report/markdown's),
so they cannot disagree. The graph draws each metric's deltas as bars, grey
where within noise, hatched where one seed leaves the noise unknown, with the
Welch standard error as error bar where there is one. Nothing here
reads files; write_compare writes the three outputs, atomically.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

from matplotlib.figure import Figure

from lib.errors import counted
from lib.jsonio import write_text_atomic
from lib.names import check_no_links
from lib.report.compare import ALPHA, LABELS, Comparison, ConfigComparison, MetricDelta
from lib.report.graphs import Graph, drawn, new_figure
from lib.report.markdown import Block, Bullets, Heading, Paragraph, Table, code_span, render_markdown
from lib.report.out_dirs import make_output_dir, stamped_name
from lib.report.stats import NA, Estimate, fmt

GRAPH = "compare_deltas"
OUTPUTS = ("compare.md", "compare.txt", "graphs")
LAYOUTS = {"own": "this framework's", "upstream": "an upstream AdamWPrune"}
HEADERS = ("Configuration", "Metric", "A", "B", "Δ (B - A)", "p (Welch)", "Verdict")


def _digits(field: str) -> int:
    return 1 if field.endswith("_mib") else 2


def _side(estimate: Estimate, digits: int) -> str:
    return estimate.text(digits) + (f" (n={estimate.n})" if estimate.n > 1 else "")


def verdict(m: MetricDelta) -> str:
    """In words: what may be said about the difference."""
    if math.isnan(m.delta):
        return "not measured on both sides"
    if m.p_value is not None:
        return "within noise" if m.within_noise else f"differs (p < {ALPHA:g})"
    if m.a.n > 1 and m.b.n > 1:
        return "identical" if m.delta == 0 else "no variance on either side"
    return "identical" if m.delta == 0 else "one seed: noise unknown"


def _unmeasured_sides(config: ConfigComparison, m: MetricDelta) -> str:
    """` (B: ✗ Non-finite)` when a side measured nothing because its runs did not succeed: "diverged"
    and "crashed" are results of their own, not a blank."""
    sides = [f"{side}: {status}" for side, status, estimate in (("A", config.a_status, m.a),
                                                                ("B", config.b_status, m.b))
             if status and estimate.n == 0]
    return f" ({'; '.join(sides)})" if sides else ""


def _row(config: ConfigComparison, m: MetricDelta) -> list[str]:
    digits = _digits(m.field)
    p = NA if m.p_value is None else f"{m.p_value:.3g}"
    return [config.config, LABELS[m.field], _side(m.a, digits), _side(m.b, digits),
            fmt(m.delta, digits, signed=True), p, verdict(m) + _unmeasured_sides(config, m)]


def _models(comparison: Comparison) -> dict[str, list[ConfigComparison]]:
    grouped: dict[str, list[ConfigComparison]] = {}
    for config in comparison.both:
        grouped.setdefault(config.model or "unknown model", []).append(config)
    return grouped


SETTINGS_HEADING = "Warning: the two directories were run with different settings"
SETTINGS_SHOWN = 12  # settings listed; the rest counted


def settings_warning(c: Comparison) -> str:
    differ = "differs" if len(c.settings) == 1 else "differ"
    one_side = sum(d.one_side for d in c.settings)
    # Kconfig writes only the symbols that are visible: an option under a menu switched off is missing
    # from that file, as are the options of another Kconfig tree (upstream's).
    where = (f"; {one_side} of them set in one file only (options switched off there, or of another "
             "Kconfig tree), listed last" if one_side else "")
    return (f"Runs are matched by run ID alone, but {counted(len(c.settings), 'setting')} {differ} "
            f"(from {c.settings_source}{where}), "
            "so a delta may come from the settings rather than the method:")


def setting_lines(c: Comparison) -> list[str]:
    """`name: A value -> B value`, with the number of configurations when per-run settings differ."""
    lines = [f"{d.name}: {d.a} -> {d.b}" + (f" ({counted(d.configs, 'configuration')})" if d.configs else "")
             for d in c.settings[:SETTINGS_SHOWN]]
    return lines + ([f"... and {len(c.settings) - SETTINGS_SHOWN} more"] if len(c.settings) > SETTINGS_SHOWN else [])


def compare_blocks(comparison: Comparison, graph: Optional[Graph]) -> list[Block]:
    c = comparison
    blocks: list[Block] = [
        Heading(1, "Comparison of two result directories"),
        Bullets([f"A: {code_span(c.a_name)} ({LAYOUTS.get(c.a_layout, c.a_layout)} directory)",
                 f"B: {code_span(c.b_name)} ({LAYOUTS.get(c.b_layout, c.b_layout)} directory)",
                 f"{counted(len(c.both), 'configuration')} in both, {counted(len(c.only_a), 'run')} only in A, "
                 f"{len(c.only_b)} only in B",
                 "Δ = B - A of the means over successful runs; with two or more seeds a side, mean ± sample std "
                 f"(n) and Welch's t-test p-value; p >= {ALPHA:g} is within noise"] + list(c.notes)),
    ]
    if c.settings:
        blocks += [Heading(2, SETTINGS_HEADING), Paragraph(settings_warning(c)),
                   Bullets([code_span(line) for line in setting_lines(c)])]
    for model, configs in _models(c).items():
        rows = [_row(config, m) for config in configs for m in config.metrics]
        blocks += [Heading(2, f"{model}: runs in both"), Table(HEADERS, rows, "llrrrrl")]
    if not c.both:
        blocks.append(Paragraph("No configuration is present in both directories."))
    if c.unsuccessful:
        blocks += [Heading(2, f"Runs that did not succeed ({counted(len(c.unsuccessful), 'run')})"),
                   Bullets([f"{side}: {run_id}: {label}" + (f": {code_span(why)}" if why else "")
                            for side, run_id, label, why in c.unsuccessful])]
    for side, runs in (("A", c.only_a), ("B", c.only_b)):
        blocks += [Heading(2, f"Only in {side} ({counted(len(runs), 'run')})"),
                   Bullets(list(runs)) if runs else Paragraph("none")]
    if graph is not None:
        blocks += [Heading(2, "Graph"), Paragraph(f"![{graph.title}](graphs/{graph.name}.png)")]
    return blocks


def render_text(blocks: Sequence[Block]) -> str:
    """Plain text of the blocks: headings underlined, tables in aligned columns."""
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += [block.text, ("=" if block.level == 1 else "-") * len(block.text)]
        elif isinstance(block, Paragraph):
            if not block.text.startswith("!["):  # an image has no text form
                lines.append(block.text)
        elif isinstance(block, Bullets):
            lines += [f"  - {item}" for item in block.items]
        elif isinstance(block, Table):
            cells = [list(block.headers)] + [list(r) for r in block.rows]
            widths = [max(len(row[i]) for row in cells) for i in range(len(block.headers))]
            align = block.align.ljust(len(widths), "l")
            for row in cells:
                lines.append("  ".join(cell.rjust(w) if a == "r" else cell.ljust(w)
                                       for cell, w, a in zip(row, widths, align)).rstrip())
        lines.append("")
    return "\n".join(lines)


def _short(config: str, model: Optional[str]) -> str:
    return config[len(model) + 1:] if model and config.startswith(model + "_") else config


ONE_SEED = "one seed: noise unknown"  # verdict() of a delta with no noise estimate
# (verdict kind, legend label, colour, hatch) of a bar
BAR_KINDS = (("differs", f"differs (p < {ALPHA:g})", "tab:blue", ""),
             ("noise", f"within noise (p >= {ALPHA:g})", "lightgrey", ""),
             ("one_seed", ONE_SEED, "lightsteelblue", "//"),
             ("no_variance", "no variance on either side", "tab:blue", ""))


def _bar_kind(m: MetricDelta) -> str:
    if verdict(m) == ONE_SEED:
        return "one_seed"
    if m.within_noise is None:  # identical (no bar to see) or no variance on either side
        return "no_variance"
    return "noise" if m.within_noise else "differs"


def _seeded(m: MetricDelta) -> bool:
    """Whether both sides have two or more seeds, so that the Welch standard error exists (0 without variance)."""
    return m.a.n > 1 and m.b.n > 1


def _figure_title(deltas: list[MetricDelta]) -> str:
    """The delta graph's title, true of its bars: what grey and hatched mean, and what the error bars are."""
    parts = [f"grey: within noise, p >= {ALPHA:g}"]
    if any(_bar_kind(m) == "one_seed" for m in deltas):
        parts.append(f"hatched: {ONE_SEED}")
    with_se = [_seeded(m) for m in deltas]
    if all(with_se):
        parts.append("bars ± Welch SE")
    elif any(with_se):
        parts.append("bars ± Welch SE where both sides have two or more seeds")
    else:
        parts.append("no error bars: a side has one seed")
    return f"Δ B - A per configuration ({'; '.join(parts)})"


def delta_figure(comparison: Comparison) -> Optional[Figure]:
    """One panel per metric with a measured delta: a bar per configuration, hatched where one seed
    leaves the noise unknown (no standard error then)."""
    from matplotlib.patches import Patch

    panels = [(field, [(config, config.metric(field)) for config in comparison.both
                       if not math.isnan(config.metric(field).delta)]) for field in comparison.fields]
    panels = [(field, bars) for field, bars in panels if bars]
    if not panels:
        return None
    deltas = [m for _, bars in panels for _, m in bars]
    bars_per_panel = max(len(bars) for _, bars in panels)
    columns = min(3, len(panels))
    grid = math.ceil(len(panels) / columns)
    figure = new_figure(_figure_title(deltas), width=4.5 * columns, height=grid * (1.2 + 0.3 * bars_per_panel) + 0.4)
    axes = figure.subplots(grid, columns, squeeze=False).flatten()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    styles = {kind: (colour, hatch) for kind, _, colour, hatch in BAR_KINDS}
    for ax, (field, bars) in zip(axes, panels):
        ys = range(len(bars))
        errors = [0 if math.isnan(m.standard_error) else m.standard_error for _, m in bars]
        kinds = [_bar_kind(m) for _, m in bars]
        drawn_bars = ax.barh(list(ys), [m.delta for _, m in bars], xerr=errors,
                             color=[styles[k][0] for k in kinds], capsize=2)
        for patch, kind in zip(drawn_bars.patches, kinds):
            if styles[kind][1]:
                patch.set_hatch(styles[kind][1])
                patch.set_edgecolor("tab:blue")
        ax.set_yticks(list(ys), [_short(c.config, c.model) for c, _ in bars], fontsize=7)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel(f"Δ {LABELS[field]}")
        ax.invert_yaxis()
    present = {_bar_kind(m) for m in deltas if m.delta != 0}  # a bar of zero length shows no colour
    handles = [Patch(facecolor=colour, hatch=hatch, edgecolor="tab:blue" if hatch else colour, label=label)
               for kind, label, colour, hatch in BAR_KINDS if kind in present]
    if handles:
        figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    return figure


def write_compare(comparison: Comparison, out_dir: Path) -> list[Path]:
    """Write compare.md, compare.txt and graphs/compare_deltas.png|svg into `out_dir`; return the paths."""
    check_no_links(out_dir, OUTPUTS)
    graph = drawn(GRAPH, lambda: delta_figure(comparison))
    blocks = compare_blocks(comparison, graph)
    paths = [out_dir / "compare.md", out_dir / "compare.txt"]
    write_text_atomic(paths[0], render_markdown(blocks))
    write_text_atomic(paths[1], render_text(blocks))
    if graph is not None:
        graph.write(out_dir / "graphs")
        paths.append(out_dir / "graphs" / f"{GRAPH}.png")
    return paths


def out_dir_for(out: Optional[Path], inputs: Sequence[Path], cwd: Path) -> Path:
    """The folder to write into: `out`, or a new `compare_<time>[_N]` under `cwd`;
    never inside an input, whose files must stay byte-identical (UserError)."""
    return make_output_dir(out or stamped_name(cwd, "compare_"), inputs,
                           hint="give OUT=dir elsewhere (or run from another folder)")
