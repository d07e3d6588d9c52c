"""Short statements derived from the records, always at matched L0.

A finding never compares two single runs at different sparsity: it interpolates each
method's frontier at common L0 values (frontier.py), and says so plainly when the methods'
L0 ranges do not overlap and no matched comparison is possible.
"""

from __future__ import annotations

import math

from featsep.report.collect import RunRecord, baseline_methods, methods_of
from featsep.report.frontier import frontier, interpolate, l0_range, matched_grid, matched_values
from featsep.report.metrics import comparison_keys, metric, value_caveats, verdict


def fmt(value: float) -> str:
    """Numbers in sentences: 3 significant digits."""
    return f"{value:.3g}"


def _range_text(rng: tuple[float, float]) -> str:
    return fmt(rng[0]) if rng[0] == rng[1] else f"{fmt(rng[0])}-{fmt(rng[1])}"


def _metric_finding(records: list[RunRecord], key: str, l0s: list[float]) -> str | None:
    """"At matched L0 ..., <method> has the best <metric>" (per L0 when winners differ); no
    method is named where it leads the next by less than the metric's min_gap."""
    info = metric(key)
    if info.higher_is_better is None:
        return None
    table = matched_values(records, key, l0s)
    spreads = matched_values(records, key, l0s, spread=True)
    verdicts = [(l0, v, values) for l0, values in table.items()
                if (v := verdict(key, values, spreads[l0])) is not None]
    if not verdicts:
        return None
    word = "highest" if info.higher_is_better else "lowest"
    name = info.name[0].upper() + info.name[1:]
    names = {v.best for _, v, _ in verdicts}
    if names == {None}:
        gaps = _range_text((min(v.gap for _, v, _ in verdicts), max(v.gap for _, v, _ in verdicts)))
        if any(v.spread >= v.min_gap for _, v, _ in verdicts):
            spread = _range_text((min(v.spread for _, v, _ in verdicts), max(v.spread for _, v, _ in verdicts)))
            return (f"{name}: no method is {word} at matched L0; the best two are within noise at every matched "
                    f"L0 (gap {gaps} < the larger of spread over seeds {spread} and min gap "
                    f"{fmt(verdicts[0][1].min_gap)}).")
        return (f"{name}: no method is {word} at matched L0; the best two are within noise at every matched L0 "
                f"(gap {gaps} < {fmt(verdicts[0][1].min_gap)}).")
    if len(names) == 1:
        l0, best, values = verdicts[len(verdicts) // 2]
        best = best.best
        others = ", ".join(f"{m} {fmt(v)}" for m, v in values.items() if m != best)
        where = (f"at every matched L0 ({', '.join(fmt(w[0]) for w in verdicts)})"
                 if len(verdicts) > 1 else f"at matched L0 {fmt(l0)}")
        lead = _range_text((min(v.gap for _, v, _ in verdicts), max(v.gap for _, v, _ in verdicts)))
        return (f"{best} has the {word} {info.name} {where}, ahead of the next method by {lead}: "
                f"{fmt(values[best])} vs {others} at L0 {fmt(l0)}.")
    parts = [f"L0 {fmt(l0)}: {v.best} ({fmt(values[v.best])})" if v.best is not None else f"L0 {fmt(l0)}: {v.text}"
             for l0, v, values in verdicts]
    return f"{name}, {word} at matched L0 differs with sparsity: " + "; ".join(parts) + "."


def _status_finding(records: list[RunRecord], key: str) -> str | None:
    """The statuses of the runs behind a compared metric, so no finding hides them."""
    by_note: dict[str, None] = {}
    for rec in records:
        if key in rec.metrics:
            for caveat in value_caveats(rec, key):
                by_note.setdefault(caveat.note, None)
    return f"Caveat on {metric(key).name}: " + " ".join(by_note) if by_note else None


def baseline_findings(records: list[RunRecord]) -> list[str]:
    """Each trained method against each baseline, at the geometric middle of the L0 range the two
    share: where it leads, trails, or is within the metric's minimum gap (noise)."""
    baselines = baseline_methods(records)
    out = []
    for method in (m for m in methods_of(records) if m not in baselines):
        for base in (b for b in methods_of(records) if b in baselines):
            ranges = [l0_range(records, m) for m in (method, base)]
            if None in ranges:
                continue
            lo, hi = max(r[0] for r in ranges), min(r[1] for r in ranges)
            if lo > hi:
                out.append(f"{method} vs {base}: L0 ranges do not overlap ({_range_text(ranges[0])} vs "
                           f"{_range_text(ranges[1])}); no matched comparison.")
                continue
            l0 = math.sqrt(lo * hi)
            ahead, behind, even = [], [], []
            for key in comparison_keys(records):
                values = {m: v for m in (method, base)
                          if (v := interpolate(frontier(records, m, key), l0)) is not None}
                spreads = {m: v for m in (method, base)
                           if (v := interpolate(frontier(records, m, key, spread=True), l0)) is not None}
                v = verdict(key, values, spreads)
                if v is None:
                    continue
                text = f"{metric(key).name} {fmt(values[method])} vs {fmt(values[base])}"
                (even if v.best is None else ahead if v.best == method else behind).append(text)
            parts = [f"{label}: {', '.join(items)}" for label, items in
                     (("ahead on", ahead), ("behind on", behind), ("within noise on", even)) if items]
            if parts:
                out.append(f"{method} vs {base} at matched L0 {fmt(l0)}: " + "; ".join(parts) + ".")
    return out


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
            if (caveat := _status_finding(records, key)) is not None:
                findings.append(caveat)
    findings.extend(baseline_findings(records))
    findings.extend(_health_findings(records))
    findings.extend(_eval_caveats(records))
    return findings


def _eval_caveats(records: list[RunRecord]) -> list[str]:
    """Each distinct caveat an eval wrote (e.g. sparse probing's LLM top-k baseline decided by
    one model dimension), once, with the runs it concerns."""
    by_text: dict[tuple[str, str], list[str]] = {}
    for rec in records:
        for section, caveat in rec.caveats.items():
            by_text.setdefault((section, caveat), []).append(rec.label)
    return [f"Caveat on {section.replace('_', ' ')}: {caveat} ({', '.join(labels)})."
            for (section, caveat), labels in by_text.items()]
