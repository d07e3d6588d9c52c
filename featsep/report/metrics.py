"""The metrics the report compares: display names, units, which direction is better, and the
minimum gap below which no method is called better (nor, with seeds, below the spread over seeds).

Keys are collect.py's "<section>.<name>" keys. Metrics not listed here are still shown in
the per-section tables under their raw key; this catalogue only decides what is plotted,
compared at matched L0 and named in the findings.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Optional

from featsep.report.collect import SECTION_BY_NAME, RunRecord

PREFERRED_THRESHOLD = 20  # SCR/TPP: number of ablated latents shown by default
PREFERRED_TOP_K = 5  # sparse probing: top-k shown next to top-1


def _fmt(value: float) -> str:
    return f"{value:.3g}"


@dataclass(frozen=True)
class MinGap:
    """The smallest difference the report reads as a difference, even with no (or a small)
    spread over seeds: a smaller gap between the best two methods is called noise, not a win."""

    absolute: float = 0.0
    relative: float = 0.0  # of the best value's magnitude

    def threshold(self, best: float) -> float:
        return max(self.absolute, self.relative * abs(best))


SCORE_GAP = MinGap(absolute=0.01)  # scores in [0, 1] (SCR/TPP/unlearning may dip below 0)
COST_GAP = MinGap(relative=0.05)  # timings and throughput vary run to run by a few percent


@dataclass(frozen=True)
class Metric:
    key: str
    name: str  # short name for tables and sentences
    axis: str  # axis label, with unit or range
    higher_is_better: Optional[bool]
    min_gap: Optional[MinGap] = None  # required when higher_is_better is set

    def __post_init__(self):
        if self.higher_is_better is not None and self.min_gap is None:
            raise ValueError(f"metric {self.key!r} has a direction but no min_gap: no winner can be named")


def _catalogue(*metrics: Metric) -> dict[str, Metric]:
    return {m.key: m for m in metrics}


METRICS: dict[str, Metric] = _catalogue(
    Metric("core.l0", "L0", "L0 (active latents per token)", None),
    Metric("core.ce_loss_score", "CE loss score", "CE loss score (1 = clean model)", True, SCORE_GAP),
    Metric("core.kl_div_score", "KL div score", "KL divergence score (1 = clean model)", True, SCORE_GAP),
    Metric("core.explained_variance", "explained variance", "Explained variance (fraction)", True, SCORE_GAP),
    Metric("core.explained_variance_legacy", "explained variance (legacy)", "Explained variance, legacy (fraction)",
           True, SCORE_GAP),
    # SAEBench's formula (SAELens issue #659): not a fraction, so not compared
    Metric("core.explained_variance_saebench", "explained variance (SAEBench)",
           "Explained variance, SAEBench's formula (can exceed 1)", None),
    Metric("core.mse", "MSE", "MSE", False, MinGap(relative=0.02)),
    Metric("core.cossim", "cosine similarity", "cos(x, x̂)", True, SCORE_GAP),
    Metric("absorption.mean_absorption_fraction_score", "mean absorption", "Mean absorption fraction (lower is better)",
           False, SCORE_GAP),
    Metric("absorption.mean_full_absorption_score", "full absorption", "Full-absorption rate (lower is better)", False,
           SCORE_GAP),
    Metric("absorption.mean_num_split_features", "split features", "Split features per letter", None),
    Metric("sparse_probing.sae_test_accuracy", "probing acc. (all latents)", "Probe accuracy, all latents", True,
           SCORE_GAP),
    Metric("sparse_probing.sae_top_1_test_accuracy", "probing top-1 acc.", "Probe accuracy, top-1 latent", True,
           SCORE_GAP),
    Metric("sparse_probing.llm_test_accuracy", "LLM probe acc.", "Probe accuracy, LLM residual", True, SCORE_GAP),
    Metric("unlearning.unlearning_score", "unlearning score", "Unlearning score", True, SCORE_GAP),
    Metric("competition.mean_competition", "mean competition", "Mean competition", False, SCORE_GAP),
    Metric("competition.share_over_tau", "share over tau", "Share with momentum > tau", False, SCORE_GAP),
    Metric("competition.stability_corr", "stability corr.", "Co-activation stability (corr.)", True, SCORE_GAP),
    Metric("train.final_loss", "final loss", "Final training loss", False, MinGap(relative=0.02)),
    Metric("train.final_dead_fraction", "dead fraction", "Dead latents (fraction)", False, SCORE_GAP),
    Metric("cost.tokens_per_s", "tokens/s", "Throughput (tokens / s)", True, COST_GAP),
    Metric("cost.wall_time_s", "wall time", "Wall time (s)", False, COST_GAP),
    Metric("cost.state_memory_bytes", "training state (bytes)",
           "Training state: parameters + Adam + penalty state (bytes)", False, MinGap(relative=0.01)),
)


@dataclass(frozen=True)
class Verdict:
    """Which method is best on one comparison, or that the best two are within noise."""

    best: Optional[str]  # None: the gap to the runner-up is below the metric's min_gap
    leader: str  # the method with the best value, winner or not
    gap: float  # best value vs runner-up
    min_gap: float
    spread: float = 0.0  # the larger spread over seeds of the two (0: single runs)

    @property
    def text(self) -> str:
        if self.best is not None:
            return self.best
        if self.spread >= self.min_gap:
            return f"within noise (gap {_fmt(self.gap)} < spread {_fmt(self.spread)})"
        return f"within noise (gap {_fmt(self.gap)} < {_fmt(self.min_gap)})"


def verdict(key: str, values: dict[str, float], spreads: Optional[dict[str, float]] = None) -> Optional[Verdict]:
    """The best method among `values` (method -> value) by the metric's direction, named only
    when it leads the runner-up by at least the metric's min_gap and by more than the larger of
    the two methods' spreads over seeds (`spreads`, method -> spread); None when nothing is
    compared."""
    info = metric(key)
    if info.higher_is_better is None or len(values) < 2:
        return None
    ranked = sorted(values, key=values.get, reverse=info.higher_is_better)
    leader, second = ranked[0], ranked[1]
    gap = abs(values[leader] - values[second])
    threshold = info.min_gap.threshold(values[leader])
    spread = max((spreads or {}).get(leader, 0.0), (spreads or {}).get(second, 0.0))
    return Verdict(leader if gap >= threshold and gap > spread else None, leader, gap, threshold, spread)


@dataclass(frozen=True)
class Caveat:
    """What a reader must see beside a value: `mark` goes next to it, `note` once nearby."""

    mark: str
    note: str


EV_SAEBENCH_NOTE = ("explained variance (SAEBench) follows SAEBench 8042bb38's formula (SAELens issue #659), "
                    "which can exceed 1: such a value is that convention's, not more than all of the variance.")


def value_caveats(rec: RunRecord, key: str) -> list[Caveat]:
    """The eval status of the key's section (e.g. absorption's too few letters) and convention
    warnings about the value itself."""
    out = []
    section = key.split(".", 1)[0]
    if (status := rec.statuses.get(section)) is not None:
        title = SECTION_BY_NAME[section].title if section in SECTION_BY_NAME else section
        out.append(Caveat(status.split(":", 1)[0], f"{rec.label}: {title} status: {status}."))
    value = rec.metrics.get(key)
    if key == "core.explained_variance_saebench" and value is not None and value > 1:
        out.append(Caveat("> 1: SAEBench convention", EV_SAEBENCH_NOTE))
    return out


def probing_datasets(records: Iterable[RunRecord]) -> Optional[str]:
    """A sentence naming the sparse probing datasets (from each result's eval_config), or None."""
    per_run = {rec.label: [str(d) for d in rec.eval_configs.get("sparse_probing", {}).get("datasets", [])]
               for rec in records if "sparse_probing" in rec.sections}
    per_run = {label: names for label, names in per_run.items() if names}
    if not per_run:
        return None
    distinct = {tuple(names) for names in per_run.values()}
    if len(distinct) == 1:
        return "Sparse probing datasets: " + ", ".join(next(iter(distinct))) + "."
    return ("Sparse probing datasets differ between runs: "
            + "; ".join(f"{label}: {', '.join(names)}" for label, names in per_run.items()) + ".")


def metric(key: str) -> Metric:
    """Catalogue entry, or a generic one built from the key (for SCR/TPP thresholds etc.)."""
    if key in METRICS:
        return METRICS[key]
    name = key.split(".", 1)[-1]
    if name.startswith("scr_metric_threshold_"):
        n = name.rsplit("_", 1)[-1]
        return Metric(key, f"SCR (top {n})", f"SCR score, top {n} latents ablated", True, SCORE_GAP)
    if name.startswith("tpp_threshold_") and name.endswith("_total_metric"):
        n = name.split("_")[2]
        return Metric(key, f"TPP (top {n})", f"TPP score, top {n} latents ablated", True, SCORE_GAP)
    if name.startswith("sae_top_") and name.endswith("_test_accuracy"):
        n = name.split("_")[2]
        return Metric(key, f"probing top-{n} acc.", f"Probe accuracy, top-{n} latents", True, SCORE_GAP)
    return Metric(key, name.replace("_", " "), name.replace("_", " "), None)


def _thresholds(records: Iterable[RunRecord], prefix: str, suffix: str) -> Counter:
    counts: Counter = Counter()
    for rec in records:
        for key in rec.metrics:
            if key.startswith(prefix) and key.endswith(suffix):
                middle = key[len(prefix): len(key) - len(suffix)]
                if middle.isdigit():
                    counts[int(middle)] += 1
    return counts


def _pick(records: list[RunRecord], prefix: str, suffix: str, preferred: int) -> Optional[str]:
    counts = _thresholds(records, prefix, suffix)
    if not counts:
        return None
    n = preferred if preferred in counts else max(counts, key=lambda t: (counts[t], -abs(t - preferred)))
    return f"{prefix}{n}{suffix}"


def scr_key(records: list[RunRecord]) -> Optional[str]:
    """SCR at threshold 20 latents, or the threshold most runs have."""
    return _pick(records, "scr.scr_metric_threshold_", "", PREFERRED_THRESHOLD)


def tpp_key(records: list[RunRecord]) -> Optional[str]:
    return _pick(records, "tpp.tpp_threshold_", "_total_metric", PREFERRED_THRESHOLD)


def probing_top_k_key(records: list[RunRecord]) -> Optional[str]:
    """Top-k probing accuracy for a k > 1 (5 if present)."""
    counts = _thresholds(records, "sparse_probing.sae_top_", "_test_accuracy")
    counts.pop(1, None)
    if not counts:
        return None
    k = PREFERRED_TOP_K if PREFERRED_TOP_K in counts else min(counts)
    return f"sparse_probing.sae_top_{k}_test_accuracy"


def comparison_keys(records: list[RunRecord]) -> list[str]:
    """Metrics compared at matched L0 (in the matched table and the findings)."""
    keys = [
        "core.ce_loss_score",
        "core.explained_variance",
        "absorption.mean_absorption_fraction_score",
        "absorption.mean_full_absorption_score",
        "sparse_probing.sae_top_1_test_accuracy",
        scr_key(records),
        tpp_key(records),
        "unlearning.unlearning_score",
    ]
    return [k for k in keys if k and any(k in r.metrics for r in records)]
