"""Runs of one grid point over several seeds, read as one mean with a measured spread.

A seeded sweep (sweep.json run entries with "seed" and "point") trains each grid point once
per seed; the tables, matched-L0 comparison, findings and L0 figures compare the points'
means, and a method is named best only when it leads by more than the seeds' spread.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from featsep.report.collect import RunRecord

SPREAD_NOTE = "± = sample standard deviation over seeds (n - 1 in the denominator)."


@dataclass(frozen=True)
class Spread:
    """A mean over seeds, its spread and how many seeds it is made of."""

    mean: float
    spread: float
    n: int


def sample_std(values: list[float]) -> float:
    """Standard deviation with n - 1 in the denominator (what the report's notes say)."""
    return statistics.stdev(values)


def _merge(group: list[RunRecord]) -> RunRecord:
    """One record of a point's seeds: mean metrics, their spreads, every note and status kept."""
    first = group[0]
    keys = dict.fromkeys(k for r in group for k in r.metrics)
    metrics, spreads = {}, {}
    for key in keys:
        values = [r.metrics[key] for r in group if key in r.metrics]
        metrics[key] = sum(values) / len(values)
        if len(values) >= 2:
            spreads[key] = sample_std(values)
    statuses = {s: v for r in group for s, v in r.statuses.items()}
    caveats = {s: v for r in group for s, v in r.caveats.items()}
    notes = [f"{r.run}: {n}" for r in group for n in r.notes]
    return RunRecord(run="+".join(r.run for r in group), label=str(first.point), method=first.method, path=first.path,
                     metrics=metrics, history=[], config=dict(first.config), details={},
                     eval_configs=dict(first.eval_configs), statuses=statuses, caveats=caveats,
                     sections=list(dict.fromkeys(s for r in group for s in r.sections)), notes=notes,
                     point=first.point, spreads=spreads, seeds=[r.seed for r in group])


def group_seeds(records: list[RunRecord]) -> list[RunRecord]:
    """Records with the seeds of each grid point merged (in first-seen order); a point with one
    seed, and a run of an unseeded sweep, stays the record it is."""
    groups: dict[tuple, list[RunRecord]] = {}
    for rec in records:
        key = (rec.method, rec.point) if rec.point is not None and rec.seed is not None else ("run", rec.run)
        groups.setdefault(key, []).append(rec)
    return [g[0] if len(g) == 1 else _merge(g) for g in groups.values()]


def has_spreads(records: list[RunRecord]) -> bool:
    return any(r.spreads for r in records)


def with_spread(rec: RunRecord, key: str, value):
    """The value to show for `key`: a Spread for a mean over >= 2 seeds, else the value itself."""
    if value is None or key not in rec.spreads:
        return value
    return Spread(value, rec.spreads[key], len(rec.seeds))
