"""report.html: the report.md blocks as one self-contained HTML file.

Owns only presentation: the tables and text of lib/report/markdown, and each graph
embedded in the page, as an inline <svg> element (sharp at any zoom, and
smaller than a PNG of a tall figure) or, where a graph has no SVG, as a
base64 PNG, so the file can be mailed or opened offline with nothing beside
it. It decides no content of its own.
"""
from __future__ import annotations

import base64
import html
import re
from typing import Sequence

from lib.report.graphs import Graph
from lib.report.markdown import Block, Bullets, Heading, Image, Paragraph, Table

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f0f0f0; }
td.r { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0 2em; }
figure img, figure svg { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-style: italic; color: #555; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


# A Markdown code span: a run of backticks, its text, the same run (CommonMark).
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)")


def _inline(text: str) -> str:
    """Escape text, turning Markdown `code` and *emphasis* spans into their tags; code spans
    are literal (no emphasis inside), as Markdown renders them."""
    parts = _CODE_SPAN.split(text)  # plain, fence, code, fence, code, ..., plain
    out = []
    for i in range(0, len(parts), 3):
        out.append(re.sub(r"\*([^*]+)\*", r"<em>\1</em>", html.escape(parts[i])))
        if i + 2 < len(parts):
            code = parts[i + 2]
            code = code[1:-1] if len(code) > 2 and code[0] == code[-1] == " " else code
            out.append(f"<code>{html.escape(code)}</code>")
    return "".join(out)


def _table(block: Table) -> list[str]:
    align = block.align.ljust(len(block.headers), "l")
    lines = ["<table>", "<tr>" + "".join(f"<th>{_inline(h)}</th>" for h in block.headers) + "</tr>"]
    for row in block.rows:
        cells = "".join(f'<td class="{a}">{_inline(cell)}</td>' for cell, a in zip(row, align))
        lines.append(f"<tr>{cells}</tr>")
    return lines + ["</table>"] + [f"<p><em>{_inline(note)}</em></p>" for note in block.notes]


def _block(block: Block, figures: dict[str, Graph]) -> list[str]:
    if isinstance(block, Heading):
        return [f"<h{block.level}>{_inline(block.text)}</h{block.level}>"]
    if isinstance(block, Paragraph):
        return [f"<p>{_inline(block.text)}</p>"]
    if isinstance(block, Bullets):
        tag = "ol" if block.ordered else "ul"
        return [f"<{tag}>", *(f"<li>{_inline(item)}</li>" for item in block.items), f"</{tag}>"]
    if isinstance(block, Table):
        return _table(block)
    graph = figures.get(block.name) if isinstance(block, Image) else None
    if graph is None:
        return []
    caption = f"<figcaption>{_inline(block.title)}</figcaption></figure>"
    svg = _inline_svg(graph.svg, graph.name, block.title)
    if svg is not None:
        return ["<figure>", svg, caption]
    data = base64.b64encode(graph.png).decode("ascii")
    return [f'<figure><img alt="{html.escape(block.title)}" src="data:image/png;base64,{data}">', caption]


def _inline_svg(svg: str, name: str, title: str) -> str | None:
    """A matplotlib SVG document as an element for the page: the XML prolog
    and DOCTYPE dropped (not allowed mid-document), every id and reference
    prefixed with the graph name (each SVG defines the same font glyph ids,
    which must stay unique in one page), labelled for screen readers. None
    when there is no <svg> element."""
    start = svg.find("<svg")
    if start < 0:
        return None
    body = re.sub(r'(\sid="|href="#|url\(#)', lambda m: f"{m.group(1)}{name}-", svg[start + len("<svg"):])
    return f'<svg role="img" aria-label="{html.escape(title, quote=True)}"' + body.rstrip()


def render_html(blocks: Sequence[Block], title: str, figures: Sequence[Graph] = ()) -> str:
    by_name = {graph.name: graph for graph in figures}
    body = [line for block in blocks for line in _block(block, by_name)]
    return "\n".join(["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
                      f"<title>{html.escape(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
                      *body, "</body>", "</html>", ""])
