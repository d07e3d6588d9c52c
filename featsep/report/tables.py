"""The report's tables as plain data, rendered by html.py and markdown.py alike.

Numbers stay numbers here; `format_cell` turns them into text in one place so the page and
the summary agree digit for digit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from featsep.report.collect import SECTIONS, RunRecord, iter_details, methods_of
from featsep.report.frontier import matched_grid, matched_values, supporting_runs
from featsep.report.metrics import (
    Caveat,
    comparison_keys,
    metric,
    probing_datasets,
    probing_top_k_key,
    scr_key,
    tpp_key,
    value_caveats,
    verdict,
)
from featsep.report.seeds import SPREAD_NOTE, Spread, has_spreads, with_spread

MISSING = "–"
MAX_DETAIL_ROWS = 10


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""
    id: str = ""
    row_header: bool = True  # first column names the row


@dataclass
class Tables:
    key: Table
    matched: Optional[Table]
    sections: list[Table] = field(default_factory=list)
    configs: Optional[Table] = None
    details: list[Table] = field(default_factory=list)


@dataclass(frozen=True)
class Cell:
    """A value with what must be read beside it (an eval's status, a convention's warning)."""

    value: Any
    marks: tuple[str, ...]


def format_cell(value: Any) -> str:
    """6 significant digits for floats, integers as integers, a dash for missing; a Cell's
    marks in brackets after its value."""
    if isinstance(value, Cell):
        return f"{format_cell(value.value)} ({'; '.join(value.marks)})"
    if isinstance(value, Spread):
        return f"{value.mean:.3g} ± {value.spread:.2g} ({value.n} seeds)"
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return MISSING
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.6g}"
    return str(value)


class _Caveats:
    """Collects the caveats of a table's cells: marks go in the cells, notes under the table."""

    def __init__(self):
        self.notes: dict[str, None] = {}

    def cell(self, value: Any, caveats: list[Caveat]) -> Any:
        if not caveats:
            return value
        for c in caveats:
            self.notes.setdefault(c.note, None)
        return Cell(value, tuple(dict.fromkeys(c.mark for c in caveats)))

    def note(self, *texts: Optional[str]) -> str:
        return " ".join([t for t in texts if t] + list(self.notes))


def _probing_note(records: list[RunRecord], keys) -> Optional[str]:
    return probing_datasets(records) if any(k.startswith("sparse_probing.") for k in keys) else None


def _seed_note(records: list[RunRecord]) -> Optional[str]:
    return f"A row with seeds shows their mean; {SPREAD_NOTE}" if has_spreads(records) else None


def _key_columns(records: list[RunRecord]) -> list[str]:
    keys = [
        "core.ce_loss_score", "core.kl_div_score", "core.explained_variance",
        "absorption.mean_absorption_fraction_score", "absorption.mean_full_absorption_score",
        "sparse_probing.sae_top_1_test_accuracy", probing_top_k_key(records),
        scr_key(records), tpp_key(records), "unlearning.unlearning_score",
        "train.final_dead_fraction", "cost.tokens_per_s",
    ]
    return [k for k in keys if k and any(k in r.metrics for r in records)]


def key_table(records: list[RunRecord]) -> Table:
    """One row per run: the headline metrics."""
    keys = _key_columns(records)
    caveats = _Caveats()
    sources = any(r.baseline is not None for r in records)
    rows = [[r.label, r.method] + ([source_of(r)] if sources else []) + [with_spread(r, "core.l0", r.l0)]
            + [caveats.cell(with_spread(r, k, r.metrics.get(k)), value_caveats(r, k)) for k in keys]
            for r in records]
    note = caveats.note("L0 from the core eval (else the last training log value).", _seed_note(records),
                        _probing_note(records, keys), BASELINE_NOTE if sources else None)
    return Table("Runs: headline metrics", ["run", "method"] + (["source"] if sources else []) + ["L0"]
                 + [metric(k).name for k in keys], rows, note=note, id="runs")


BASELINE_NOTE = (f"A baseline is a released SAE evaluated here with the same evals on the same data; it was not "
                 f"trained here, so its training numbers are {MISSING}, never a value.")


def source_of(rec: RunRecord) -> str:
    """Where a run's SAE came from: trained here, or the baseline's path or hub reference."""
    return "trained here" if rec.baseline is None else f"baseline: {rec.baseline['source']}"


def matched_table(records: list[RunRecord]) -> Optional[Table]:
    """Each compared metric interpolated on every method's frontier at common L0 values."""
    grid = matched_grid(records)
    if not grid.l0s:
        return None
    methods = [m for m in methods_of(records) if m in grid.ranges]
    rows = []
    caveats = _Caveats()
    keys = comparison_keys(records)
    for key in keys:
        info = metric(key)
        spreads = matched_values(records, key, grid.l0s, spread=True)
        for l0, values in matched_values(records, key, grid.l0s).items():
            cells = []
            for m in methods:
                support = supporting_runs(records, m, key, l0) if m in values else []
                value = values.get(m)
                seeds = min((len(r.seeds) for r in support), default=0)
                if value is not None and seeds >= 2:
                    value = Spread(value, spreads[l0][m], seeds)
                cells.append(caveats.cell(value, [c for r in support for c in value_caveats(r, key)]))
            best = verdict(key, values, spreads[l0])
            rows.append([info.name, l0] + cells + [best.text if best else None])
    scope = "the L0 range all methods share" if grid.all_overlap else "pairwise-overlapping L0 ranges only"
    note = caveats.note(
        f"Interpolated linearly in log(L0) along each method's runs, within {scope}; "
        f"{MISSING} = outside that method's L0 range (no extrapolation). A method is named best only when it "
        "leads the next by at least the metric's minimum gap (0.01 for scores)"
        + (" and by more than the larger spread over seeds of the two (spreads interpolated like the means); "
           + SPREAD_NOTE if has_spreads(records) else "; single runs carry no error bars."),
        _probing_note(records, keys))
    return Table("Matched-L0 comparison", ["metric", "L0"] + methods + ["best"], rows, note=note, id="matched")


def section_tables(records: list[RunRecord]) -> list[Table]:
    """Every metric found, one table per section: rows = metrics, columns = runs."""
    titles = {s.name: s.title for s in SECTIONS} | {"train": "Training", "cost": "Time and memory"}
    order = [s.name for s in SECTIONS] + ["train", "cost"]
    found = {k.split(".", 1)[0] for r in records for k in r.metrics}
    order += sorted(found - set(order))
    tables = []
    for section in order:
        keys: dict[str, None] = {}
        for rec in records:
            for key in rec.metrics:
                if key.split(".", 1)[0] == section:
                    keys.setdefault(key, None)
        if not keys:
            continue
        caveats = _Caveats()
        rows = [[key.split(".", 1)[1]] + [caveats.cell(with_spread(r, key, r.metrics.get(key)), value_caveats(r, key))
                                          for r in records]
                for key in keys]
        tables.append(Table(f"All metrics: {titles.get(section, section)}", ["metric"] + [r.label for r in records],
                            rows, note=caveats.note(_seed_note(records), _probing_note(records, keys)),
                            id=f"all-{section}"))
    return tables


def config_table(records: list[RunRecord]) -> Table:
    """What each run is: method, architecture, size, penalties, and what was missing."""
    keys: dict[str, None] = {}
    for rec in records:
        for key in rec.config:
            keys.setdefault(key, None)
    cols = list(keys)
    rows = [[r.label, r.run, r.method] + [r.config.get(k) for k in cols] + ["; ".join(r.notes) or "ok"]
            for r in records]
    return Table("Runs: configuration and missing data", ["run", "directory", "method"] + cols + ["notes"], rows,
                 id="configs")


def _scalar_rows(value: Any) -> Optional[list[dict]]:
    """A list of dicts of scalars (a table), else None."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        if all(not isinstance(x, (list, dict)) for v in value for x in v.values()):
            return value
    return None


def detail_tables(records: list[RunRecord]) -> list[Table]:
    """Competition eval details (e.g. top competing pairs): first rows of each list of rows."""
    tables = []
    for rec in records:
        for name, value in iter_details(rec.details.get("competition")):
            rows = _scalar_rows(value)
            if not rows:
                continue
            cols = list(dict.fromkeys(k for row in rows for k in row))
            shown = rows[:MAX_DETAIL_ROWS]
            tables.append(Table(f"{rec.label}: {name.replace('_', ' ')}", cols,
                                [[row.get(c) for c in cols] for row in shown],
                                note=f"first {len(shown)} of {len(rows)} rows", row_header=False,
                                id=f"detail-{rec.run}-{name}"))
    return tables


def build_tables(records: list[RunRecord], points: Optional[list[RunRecord]] = None) -> Tables:
    """points: the records with seeds merged (seeds.group_seeds) for the comparisons; the
    configuration and detail tables list every run."""
    points = records if points is None else points
    return Tables(key=key_table(points), matched=matched_table(points), sections=section_tables(points),
                  configs=config_table(records), details=detail_tables(records))
