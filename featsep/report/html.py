"""The report as one self-contained HTML5 page (figures inlined as base64 PNG).

Plain string building with html.escape: the page has a fixed shape, and avoiding a
template engine keeps the report's only dependency matplotlib.
"""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from html import escape

from featsep.report.figures import RenderedFigure
from featsep.report.tables import Table, Tables, format_cell

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1400px; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.9rem; } h2 { margin-top: 2.5rem; border-bottom: 2px solid #ddd; padding-bottom: .3rem; }
.meta { color: #666; }
.scroll { overflow-x: auto; margin: 1rem 0; }
table { border-collapse: collapse; font-size: .92rem; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: .4rem 0; }
th, td { border: 1px solid #ccc; padding: .25rem .55rem; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } tbody th { text-align: left; font-weight: 500; }
tbody tr:nth-child(even) { background: #fafafa; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; }
.note { color: #8a5a00; background: #fff7e6; border-left: 4px solid #f0b030; padding: .4rem .8rem; }
ul.findings li { margin: .35rem 0; }
nav a { margin-right: 1rem; }
"""


def render_table(table: Table) -> str:
    head = "".join(f'<th scope="col">{escape(c)}</th>' for c in table.columns)
    body = []
    for row in table.rows:
        cells = []
        for i, value in enumerate(row):
            text = escape(format_cell(value))
            cells.append(f'<th scope="row">{text}</th>' if i == 0 and table.row_header else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    note = f'<p class="meta">{escape(table.note)}</p>' if table.note else ""
    ident = f' id="{escape(table.id)}"' if table.id else ""
    return (f'<div class="scroll"><table{ident}><caption>{escape(table.title)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>{note}")


def render_figure(fig: RenderedFigure) -> str:
    title = escape(fig.spec.title)
    if fig.png is None:
        return f'<section id="fig-{fig.spec.name}"><h3>{title}</h3><p class="note">{escape(fig.note)}</p></section>'
    data = base64.b64encode(fig.png).decode("ascii")
    return (f'<section id="fig-{fig.spec.name}"><h3>{title}</h3><figure>'
            f'<img src="data:image/png;base64,{data}" alt="{title}">'
            f"<figcaption>{escape(fig.caption)}</figcaption></figure></section>")


def render_page(title: str, source: str, findings: list[str], notes: list[str], tables: Tables,
                figures: list[RenderedFigure]) -> str:
    """The whole page; every number of every table is in it, every figure inlined."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">Source: <code>{escape(source)}</code> · generated {stamp} by featsep report</p>',
        '<nav><a href="#findings">Findings</a><a href="#matched-l0">Matched L0</a><a href="#figures">Figures</a>'
        '<a href="#tables">All metrics</a><a href="#missing">Missing data</a></nav>',
        '<h2 id="findings">Main findings</h2>',
        '<ul class="findings">' + "".join(f"<li>{escape(f)}</li>" for f in findings) + "</ul>",
        '<h2 id="matched-l0">Comparison at matched L0</h2>',
        render_table(tables.matched) if tables.matched else
        '<p class="note">No matched-L0 comparison: fewer than two methods with overlapping L0 ranges.</p>',
        render_table(tables.key),
        '<h2 id="figures">Figures</h2>',
        *(render_figure(f) for f in figures),
        '<h2 id="tables">All metrics</h2>',
        *(render_table(t) for t in tables.sections),
    ]
    if tables.details:
        parts += ['<h2 id="details">Competition details</h2>', *(render_table(t) for t in tables.details)]
    parts += ['<h2 id="missing">Runs and missing data</h2>']
    parts += ['<ul>' + "".join(f'<li class="note">{escape(n)}</li>' for n in notes) + "</ul>"] if notes else []
    if tables.configs:
        parts.append(render_table(tables.configs))
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"
