"""Short statements derived from the records, always at matched L0.

A finding never compares two single runs at different sparsity: it interpolates each
method's frontier at common L0 values (frontier.py), and says so plainly when the methods'
L0 ranges do not overlap and no matched comparison is possible.
"""

from __future__ import annotations

from featsep.report.collect import RunRecord, methods_of
from featsep.report.frontier import matched_grid, matched_values
from featsep.report.metrics import comparison_keys, metric


def fmt(value: float) -> str:
    """Numbers in sentences: 3 significant digits."""
    return f"{value:.3g}"


def _range_text(rng: tuple[float, float]) -> str:
    return fmt(rng[0]) if rng[0] == rng[1] else f"{fmt(rng[0])}-{fmt(rng[1])}"


def _metric_finding(records: list[RunRecord], key: str, l0s: list[float]) -> str | None:
    """"At matched L0 ..., <method> has the best <metric>" (per L0 when winners differ)."""
    info = metric(key)
    if info.higher_is_better is None:
        return None
    table = matched_values(records, key, l0s)
    winners = []  # (l0, best method, values)
    for l0, values in table.items():
        if len(values) < 2:
            continue
        pick = max if info.higher_is_better else min
        best = pick(values, key=values.get)
        winners.append((l0, best, values))
    if not winners:
        return None
    word = "highest" if info.higher_is_better else "lowest"
    names = {w[1] for w in winners}
    if len(names) == 1:
        l0, best, values = winners[len(winners) // 2]
        others = ", ".join(f"{m} {fmt(v)}" for m, v in values.items() if m != best)
        margins = [min(abs(v[b] - x) for m, x in v.items() if m != b) for _, b, v in winners]
        where = (f"at every matched L0 ({', '.join(fmt(w[0]) for w in winners)})"
                 if len(winners) > 1 else f"at matched L0 {fmt(l0)}")
        lead = _range_text((min(margins), max(margins)))
        return (f"{best} has the {word} {info.name} {where}, ahead of the next method by {lead}: "
                f"{fmt(values[best])} vs {others} at L0 {fmt(l0)}.")
    parts = [f"L0 {fmt(l0)}: {best} ({fmt(values[best])})" for l0, best, values in winners]
    return f"{info.name[0].upper() + info.name[1:]}, {word} at matched L0 differs with sparsity: " + "; ".join(parts) + "."


def _health_findings(records: list[RunRecord]) -> list[str]:
    """Runs whose numbers say the SAE is broken, whatever the comparison says."""
    out = []
    for rec in records:
        ev = rec.metrics.get("core.explained_variance")
        if ev is not None and ev < 0:
            out.append(f"{rec.label}: explained variance {fmt(ev)} < 0, reconstruction has collapsed.")
        dead = rec.metrics.get("train.final_dead_fraction")
        if dead is not None and dead > 0.5:
            out.append(f"{rec.label}: {fmt(100 * dead)}% of latents are dead at the end of training.")
    return out


def main_findings(records: list[RunRecord]) -> list[str]:
    """Automatically derived statements comparing methods at matched L0."""
    methods = methods_of(records)
    findings: list[str] = []
    if not records:
        return ["No runs with results were found."]
    grid = matched_grid(records)
    if len(methods) < 2:
        findings.append(f"Only one method ({methods[0]}): no comparison between methods is possible.")
    elif len(grid.ranges) < 2:
        findings.append("Fewer than two methods have an L0 (core eval or training log): no matched-L0 comparison.")
    for a, b in grid.disjoint_pairs:
        findings.append(
            f"L0 ranges do not overlap for {a} ({_range_text(grid.ranges[a])}) and {b} "
            f"({_range_text(grid.ranges[b])}): no matched-L0 comparison is possible between them."
        )
    if grid.ranges and len(grid.ranges) >= 2 and grid.all_overlap:
        shared = f"{fmt(min(grid.l0s))}-{fmt(max(grid.l0s))}" if len(grid.l0s) > 1 else fmt(grid.l0s[0])
        findings.append(f"All {len(grid.ranges)} methods cover L0 {shared}; comparisons below interpolate "
                        "each method's frontier (linear in log L0) at matched L0.")
    single = [m for m, r in grid.ranges.items() if r[0] == r[1] and len(methods) > 1]
    if single:
        findings.append("Single-L0 methods (a point, not a frontier): " + ", ".join(single) + ".")
    for key in comparison_keys(records):
        if (text := _metric_finding(records, key, grid.l0s)) is not None:
            findings.append(text)
    findings.extend(_health_findings(records))
    return findings
