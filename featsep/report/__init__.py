"""Reports of SAE runs and sweeps: figures, one self-contained HTML page, a Markdown summary.

    from featsep.report import build_report
    page = build_report("runs/sweep1")            # -> runs/sweep1/report/report.html

Methods are compared at matched L0 along their sparsity-fidelity frontiers, never by single
runs at different sparsity. Modules: collect (files -> RunRecords), frontier (interpolation
at matched L0), seeds (a grid point's seeds as mean ± spread), findings, tables,
figures (registry), html, markdown, build.
Needs matplotlib (the `report` extra).
"""

from __future__ import annotations

from featsep.report.build import build_report
from featsep.report.collect import RunRecord, Sweep, collect
from featsep.report.findings import main_findings

__all__ = ["build_report", "main_findings", "collect", "RunRecord", "Sweep"]
