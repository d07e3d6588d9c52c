"""`build_report`: sweep dir -> report.html, summary.md and figures/*.png.

Every file is written to a temporary name in its final directory and renamed over the
target, so an interrupted build never leaves a half-written report behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from featsep.io import write_bytes_atomic, write_text_atomic
from featsep.rundir import FINAL_INFO_FILE, METRICS_FILE
from featsep.report.collect import REPORT_DIRNAME, collect
from featsep.report.figures import render_figures
from featsep.report.findings import main_findings
from featsep.report.html import render_page
from featsep.report.markdown import render_summary
from featsep.report.seeds import group_seeds
from featsep.report.tables import build_tables

FIGURES_DIRNAME = "figures"


def build_report(path: str | Path, out_dir: str | Path | None = None, labels: Optional[dict[str, str]] = None,
                 title: Optional[str] = None) -> Path:
    """Build the report of a sweep dir, a run dir or a dir of run dirs; returns report.html's path.

    out_dir defaults to PATH/report/. labels maps run directory names to display labels
    (overriding sweep.json's). Missing results are noted in the page, never fatal; a PATH that
    is not a directory raises FileNotFoundError, one that holds no run ValueError (an empty
    report would look like a result), both before anything is written.
    """
    sweep = collect(path, labels)
    if not sweep.records:
        raise ValueError(
            f"{path} holds no run (no run dir with {FINAL_INFO_FILE} or {METRICS_FILE}); pass a run dir or a "
            "sweep dir, or train one first (`featsep train CONFIG`, `featsep sweep CONFIG`)"
        )
    out = Path(out_dir) if out_dir is not None else Path(path) / REPORT_DIRNAME
    title = title or f"featsep report: {sweep.name}"
    records = sweep.records
    points = group_seeds(records)

    figures = render_figures(records, points=points)
    for fig in figures:
        if fig.png is not None:
            write_bytes_atomic(out / FIGURES_DIRNAME / f"{fig.spec.name}.png", fig.png)
    tables = build_tables(records, points)
    findings = main_findings(points)
    notes = list(sweep.notes) + [f"{r.label} ({r.run}): {n}" for r in records for n in r.notes]
    source = str(Path(path).resolve())

    write_text_atomic(out / "summary.md", render_summary(title, source, findings, notes, tables, figures, FIGURES_DIRNAME))
    page = out / "report.html"
    write_text_atomic(page, render_page(title, source, findings, notes, tables, figures))
    return page
