"""The metrics the report compares: display names, units, which direction is better.

Keys are collect.py's "<section>.<name>" keys. Metrics not listed here are still shown in
the per-section tables under their raw key; this catalogue only decides what is plotted,
compared at matched L0 and named in the findings.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Optional

from featsep.report.collect import RunRecord

PREFERRED_THRESHOLD = 20  # SCR/TPP: number of ablated latents shown by default
PREFERRED_TOP_K = 5  # sparse probing: top-k shown next to top-1


@dataclass(frozen=True)
class Metric:
    key: str
    name: str  # short name for tables and sentences
    axis: str  # axis label, with unit or range
    higher_is_better: Optional[bool]


def _catalogue(*metrics: Metric) -> dict[str, Metric]:
    return {m.key: m for m in metrics}


METRICS: dict[str, Metric] = _catalogue(
    Metric("core.l0", "L0", "L0 (active latents per token)", None),
    Metric("core.ce_loss_score", "CE loss score", "CE loss score (1 = clean model)", True),
    Metric("core.kl_div_score", "KL div score", "KL divergence score (1 = clean model)", True),
    Metric("core.explained_variance", "explained variance", "Explained variance (fraction)", True),
    Metric("core.explained_variance_legacy", "explained variance (legacy)", "Explained variance, legacy (fraction)", True),
    Metric("core.mse", "MSE", "MSE", False),
    Metric("core.cossim", "cosine similarity", "cos(x, x̂)", True),
    Metric("absorption.mean_absorption_fraction_score", "mean absorption", "Mean absorption fraction (lower is better)", False),
    Metric("absorption.mean_full_absorption_score", "full absorption", "Full-absorption rate (lower is better)", False),
    Metric("absorption.mean_num_split_features", "split features", "Split features per letter", None),
    Metric("sparse_probing.sae_test_accuracy", "probing acc. (all latents)", "Probe accuracy, all latents", True),
    Metric("sparse_probing.sae_top_1_test_accuracy", "probing top-1 acc.", "Probe accuracy, top-1 latent", True),
    Metric("sparse_probing.llm_test_accuracy", "LLM probe acc.", "Probe accuracy, LLM residual", True),
    Metric("unlearning.unlearning_score", "unlearning score", "Unlearning score", True),
    Metric("competition.mean_competition", "mean competition", "Mean competition", False),
    Metric("competition.share_over_tau", "share over tau", "Share with momentum > tau", False),
    Metric("competition.stability_corr", "stability corr.", "Co-activation stability (corr.)", True),
    Metric("train.final_loss", "final loss", "Final training loss", False),
    Metric("train.final_dead_fraction", "dead fraction", "Dead latents (fraction)", False),
    Metric("cost.tokens_per_s", "tokens/s", "Throughput (tokens / s)", True),
    Metric("cost.wall_time_s", "wall time", "Wall time (s)", False),
    Metric("cost.state_memory_bytes", "training state (bytes)",
           "Training state: parameters + Adam + penalty state (bytes)", False),
)


def metric(key: str) -> Metric:
    """Catalogue entry, or a generic one built from the key (for SCR/TPP thresholds etc.)."""
    if key in METRICS:
        return METRICS[key]
    name = key.split(".", 1)[-1]
    if name.startswith("scr_metric_threshold_"):
        n = name.rsplit("_", 1)[-1]
        return Metric(key, f"SCR (top {n})", f"SCR score, top {n} latents ablated", True)
    if name.startswith("tpp_threshold_") and name.endswith("_total_metric"):
        n = name.split("_")[2]
        return Metric(key, f"TPP (top {n})", f"TPP score, top {n} latents ablated", True)
    if name.startswith("sae_top_") and name.endswith("_test_accuracy"):
        n = name.split("_")[2]
        return Metric(key, f"probing top-{n} acc.", f"Probe accuracy, top-{n} latents", True)
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
