"""The report as a Markdown summary: findings, tables, links to the figure files."""

from __future__ import annotations

from featsep.report.figures import RenderedFigure
from featsep.report.tables import Table, Tables, format_cell


def _cell(value) -> str:
    return format_cell(value).replace("|", "\\|").replace("\n", " ")


def render_table(table: Table) -> str:
    lines = [f"**{table.title}**", "", "| " + " | ".join(_cell(c) for c in table.columns) + " |",
             "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.rows]
    if table.note:
        lines += ["", f"_{table.note}_"]
    return "\n".join(lines) + "\n"


def render_summary(title: str, source: str, findings: list[str], notes: list[str], tables: Tables,
                   figures: list[RenderedFigure], figures_dir: str = "figures") -> str:
    parts = [f"# {title}", "", f"Source: `{source}` (full page with every figure inlined: report.html)", "",
             "## Main findings", ""]
    parts += [f"- {f}" for f in findings] + [""]
    parts += ["## Comparison at matched L0", ""]
    parts.append(render_table(tables.matched) if tables.matched else
                 "No matched-L0 comparison: fewer than two methods with overlapping L0 ranges.\n")
    parts += [render_table(tables.key), "## Figures", ""]
    for fig in figures:
        if fig.png is not None:
            parts.append(f"- [{fig.spec.title}]({figures_dir}/{fig.spec.name}.png): {fig.caption}")
        else:
            parts.append(f"- {fig.spec.title}: {fig.note}")
    parts += ["", "## All metrics", ""] + [render_table(t) for t in tables.sections]
    if tables.details:
        parts += ["## Competition details", ""] + [render_table(t) for t in tables.details]
    parts += ["## Runs and missing data", ""] + [f"- {n}" for n in notes] + [""]
    if tables.configs:
        parts.append(render_table(tables.configs))
    return "\n".join(parts)
