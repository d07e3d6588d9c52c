"""Sparsity-fidelity frontiers and comparisons at matched L0.

Single runs of different methods sit at different L0s, so comparing them point by point
confounds sparsity with the method (methods.md, "Lesson"). Each method's runs form a
frontier (metric as a function of L0); methods are compared by interpolating each frontier
at common L0 values inside the range every compared method covers. Interpolation is linear
in log(L0), the axis the frontier plots use; nothing is extrapolated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from featsep.report.collect import RunRecord, methods_of

Point = tuple[float, float]


def frontier(records: list[RunRecord], method: str, key: str, spread: bool = False) -> list[Point]:
    """(L0, value) of the method's runs that have both, sorted by L0 (equal L0s averaged).
    spread: the value's spread over seeds instead (0 for a single seed), at the same L0s."""
    by_l0: dict[float, list[float]] = {}
    for rec in records:
        l0, value = rec.l0, rec.metrics.get(key)
        if rec.method == method and l0 is not None and l0 > 0 and value is not None:
            by_l0.setdefault(l0, []).append(rec.spreads.get(key, 0.0) if spread else value)
    return [(l0, sum(v) / len(v)) for l0, v in sorted(by_l0.items())]


def _weights(points: list[Point], l0: float) -> Optional[list[tuple[int, float]]]:
    """(point index, weight) of the points the value at `l0` is made of; None outside the range."""
    if not points or l0 <= 0:
        return None
    lo, hi = points[0][0], points[-1][0]
    tol = 1e-9 * max(abs(hi), 1.0)
    if l0 < lo - tol or l0 > hi + tol:
        return None
    for i, ((x0, _), (x1, _)) in enumerate(zip(points, points[1:])):
        if x0 - tol <= l0 <= x1 + tol:
            t = min(max((math.log(l0) - math.log(x0)) / (math.log(x1) - math.log(x0)), 0.0), 1.0)
            return [(i, 1.0 - t), (i + 1, t)]
    return [(0, 1.0)]  # a single-run frontier matched at its own L0


def interpolate(points: list[Point], l0: float) -> Optional[float]:
    """Value at `l0`, linear in log(L0) between neighbouring runs; None outside the range."""
    weights = _weights(points, l0)
    if weights is None:
        return None
    if len(weights) == 1:
        return points[0][1]
    (i, _), (j, t) = weights
    return points[i][1] + t * (points[j][1] - points[i][1])


def support(points: list[Point], l0: float) -> list[float]:
    """The L0s of the runs the value at `l0` is interpolated from (those with weight > 0), so
    what is said about those runs (an eval's status) travels with the matched value."""
    return [points[i][0] for i, w in _weights(points, l0) or [] if w > 0]


def l0_range(records: list[RunRecord], method: str) -> Optional[tuple[float, float]]:
    l0s = [r.l0 for r in records if r.method == method and r.l0 is not None and r.l0 > 0]
    return (min(l0s), max(l0s)) if l0s else None


def _geometric_grid(lo: float, hi: float, n: int) -> list[float]:
    if hi <= lo * 1.01 or n < 2:
        return [math.sqrt(lo * hi)]
    step = (math.log(hi) - math.log(lo)) / (n - 1)
    return [math.exp(math.log(lo) + i * step) for i in range(n)]


@dataclass
class MatchedGrid:
    """Common L0 values, and which methods' L0 ranges do not overlap."""

    l0s: list[float]
    ranges: dict[str, tuple[float, float]]
    all_overlap: bool  # one L0 range shared by every method
    disjoint_pairs: list[tuple[str, str]]


def matched_grid(records: list[RunRecord], n: int = 3) -> MatchedGrid:
    """`n` log-spaced L0 values spanning the L0 range all methods share.

    With no range shared by all, each overlapping pair contributes the geometric middle of
    its overlap, and non-overlapping pairs are listed (no matched comparison for them).
    """
    ranges = {m: r for m in methods_of(records) if (r := l0_range(records, m)) is not None}
    methods = list(ranges)
    disjoint = []
    pair_mids = []
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            lo = max(ranges[a][0], ranges[b][0])
            hi = min(ranges[a][1], ranges[b][1])
            if lo > hi:
                disjoint.append((a, b))
            else:
                pair_mids.append(math.sqrt(lo * hi))
    if len(methods) < 2:
        return MatchedGrid([], ranges, False, [])
    lo = max(r[0] for r in ranges.values())
    hi = min(r[1] for r in ranges.values())
    if lo <= hi:
        return MatchedGrid(_geometric_grid(lo, hi, n), ranges, True, [])
    grid: list[float] = []
    for mid in sorted(pair_mids):
        if not grid or mid > grid[-1] * 1.01:
            grid.append(mid)
    return MatchedGrid(grid, ranges, False, disjoint)


def matched_values(records: list[RunRecord], key: str, l0s: list[float],
                   spread: bool = False) -> dict[float, dict[str, float]]:
    """{L0: {method: interpolated value}} for every method whose frontier covers that L0
    (spread: the spread over seeds, interpolated with the same weights)."""
    out: dict[float, dict[str, float]] = {}
    for l0 in l0s:
        row = {}
        for method in methods_of(records):
            value = interpolate(frontier(records, method, key, spread), l0)
            if value is not None:
                row[method] = value
        out[l0] = row
    return out


def supporting_runs(records: list[RunRecord], method: str, key: str, l0: float) -> list[RunRecord]:
    """The method's runs whose values make up its matched value of `key` at `l0`."""
    l0s = set(support(frontier(records, method, key), l0))
    return [r for r in records if r.method == method and key in r.metrics and r.l0 in l0s]
