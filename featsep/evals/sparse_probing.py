"""Sparse probing (SAEBench evals/sparse_probing): how well do a few SAE latents classify text?

Per dataset and class (one-vs-rest, balanced as SAEBench balances), on mean-pooled features:
  llm_test_accuracy / sae_test_accuracy: a Linear(d, 1) probe on all model dims / all latents;
  {llm,sae}_top_{k}_test_accuracy: logistic regression on the k dims with the largest class-mean
  difference. Accuracies are averaged over classes, then over datasets.
  llm_top_{k}_standardized_test_accuracy (featsep's, beside SAEBench's): the same after each model
  dim is standardised by the training set's mean/std, so the ranking reads class separation, not
  scale. Why: gemma-3's residual stream has one massive dimension whose class-mean difference
  outweighs every other's by its scale; SAEBench's ranking then picks it first for every class
  and llm_top_1 sits at chance (0.50 on every class). The result records, per dataset, the top-1
  dim and its share of the |class-mean difference| mass (llm_top_1_dim), and a `caveat` text in
  eval_result_unstructured when one dimension dominates (DOMINANT_SHARE, or top-1 at exactly 0.5
  on every class).

Pooling (SAEBench): activations at pad/bos/eos positions are zeroed; a text's feature is the mean
over positions whose activation is non-zero. SAE features: encode every position, zero the same
positions, same mean. Model activations are cached per dataset, so many SAEs share them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from pydantic import field_validator
from torch import Tensor

from featsep.data.probing import LOADERS_VERSION
from featsep.data.registry import DATASETS, PROBING
from featsep.evals.common.context import EvalContext
from featsep.evals.common.pooling import balanced_indices, dataset_activations, gather, sae_pooled, segment_mean
from featsep.evals.common.probes import standardized_top_k_accuracy, top_dim_share, top_k_accuracy, train_binary_probe
from featsep.evals.registry import EvalResult, EvalSettings, register_eval
from featsep.evals.schema import saebench_section

OFFLINE_DATASETS = ["bbc-news", "code-languages", "manpage-languages"]
SAEBENCH_DATASETS = [
    "LabHC/bias_in_bios_class_set1",
    "LabHC/bias_in_bios_class_set2",
    "LabHC/bias_in_bios_class_set3",
    "canrager/amazon_reviews_mcauley_1and5",
    "canrager/amazon_reviews_mcauley_1and5_sentiment",
    "codeparrot/github-code",
    "fancyzhx/ag_news",
    "Helsinki-NLP/europarl",
]
DOMINANT_SHARE = 0.5  # mean top-1 share of the class-mean-difference mass that earns the caveat
LLM_PROBE_CACHE_VERSION = 2  # 2: standardised top-k and the top-1 dim's share


class SparseProbingSettings(EvalSettings):
    datasets: list[str] = OFFLINE_DATASETS  # SAEBench's: SAEBENCH_DATASETS (needs the hub or local_copies)
    probe_train_set_size: Optional[int] = None  # texts per class; None: SAEBench's 2000 on a GPU, 100 on CPU
    probe_test_set_size: Optional[int] = None  # None: 500 on a GPU, 50 on CPU
    context_length: int = 128
    k_values: list[int] = [1, 2, 5, 10, 20, 50]
    llm_batch_size: int = 8
    sae_batch_size: int = 125
    probe_lr: float = 1e-2
    probe_batch_size: int = 250
    probe_epochs: int = 100
    probe_patience: int = 10
    text_column: str = "text"  # for local labelled files
    label_column: str = "label"
    local_copies: dict[str, str] = {}  # HF name -> local copy in the hub's format
    seed: int = 42

    @field_validator("datasets", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, value):
        return [value] if isinstance(value, str) else value  # `--set sparse_probing.datasets=a.jsonl`

    @field_validator("datasets")
    @classmethod
    def _registered_or_local(cls, names: list[str]) -> list[str]:
        for name in names:
            if DATASETS.get(name, PROBING) is None and not Path(name).expanduser().is_file():
                raise DATASETS.unknown(name, PROBING)  # when the config is read, not after training
        return names


def _set_sizes(ctx: EvalContext, s: SparseProbingSettings) -> tuple[int, int]:
    return ctx.budget(s.probe_train_set_size, gpu=2000, cpu=100), ctx.budget(s.probe_test_set_size, gpu=500, cpu=50)


# ---- the eval ------------------------------------------------------------------------------------


def class_splits(train: dict[str, Tensor], test: dict[str, Tensor], classes: list[str], seed: int):
    """Per class: (class, x_train, y_train, x_test, y_test), one-vs-rest balanced as SAEBench."""
    for ci, cls in enumerate(classes):
        gen = torch.Generator().manual_seed(seed + ci)
        tr_items, y_tr = balanced_indices({c: len(train[c]) for c in classes}, cls, gen)
        te_items, y_te = balanced_indices({c: len(test[c]) for c in classes}, cls, gen)
        yield cls, gather(train, tr_items), y_tr, gather(test, te_items), y_te


def probe_accuracies(
    train: dict[str, Tensor], test: dict[str, Tensor], classes: list[str], s: SparseProbingSettings, prefix: str,
    standardized: bool = False,
) -> dict[str, dict[str, float]]:
    """class -> {prefix_test_accuracy, prefix_top_k_test_accuracy...} for pooled features (with
    standardized, also prefix_top_k_standardized_test_accuracy)."""
    out = {}
    for cls, x_tr, y_tr, x_te, y_te in class_splits(train, test, classes, s.seed):
        accs = {
            f"{prefix}_test_accuracy": train_binary_probe(
                x_tr, y_tr, x_te, y_te, s.probe_lr, s.probe_batch_size, s.probe_epochs, s.probe_patience, s.seed
            )[1]
        }
        for k in s.k_values:
            accs[f"{prefix}_top_{k}_test_accuracy"] = top_k_accuracy(x_tr, y_tr, x_te, y_te, k, s.seed)
        if standardized:
            for k in s.k_values:
                accs[f"{prefix}_top_{k}_standardized_test_accuracy"] = standardized_top_k_accuracy(x_tr, y_tr, x_te, y_te, k, s.seed)
        out[cls] = accs
    return out


def top_dims(train: dict[str, Tensor], test: dict[str, Tensor], classes: list[str], seed: int) -> dict[str, dict]:
    """class -> {"dim", "mass_share"}: SAEBench's top-1 pick on the probe's training set."""
    out = {}
    for cls, x_tr, y_tr, _, _ in class_splits(train, test, classes, seed):
        dim, share = top_dim_share(x_tr, y_tr)
        out[cls] = {"dim": dim, "mass_share": share}
    return out


def dominance_caveat(dataset: str, tops: dict[str, dict], per_class: dict[str, dict[str, float]]) -> Optional[str]:
    """A caveat when one model dim decides SAEBench's top-k ranking on this dataset, else None."""
    shares = [t["mass_share"] for t in tops.values()]
    mean_share = sum(shares) / len(shares)
    top1 = [acc.get("llm_top_1_test_accuracy") for acc in per_class.values()]
    at_chance = all(a == 0.5 for a in top1)
    if mean_share < DOMINANT_SHARE and not at_chance:
        return None
    dims = [t["dim"] for t in tops.values()]
    dim = max(set(dims), key=dims.count)
    return (
        f"{dataset}: model dim {dim} is SAEBench's top-1 pick for {dims.count(dim)}/{len(dims)} classes and holds "
        f"{mean_share:.0%} of the |class-mean difference| mass (mean over classes)"
        + ("; llm_top_1 accuracy is exactly 0.5 on every class" if at_chance else "")
        + ": llm_top_k_test_accuracy measures that dimension's scale, not the k most informative dims; "
        "compare llm_top_k_standardized_test_accuracy (dims standardised by the training set's mean/std)"
    )


def _mean_over(per_class: dict[str, dict[str, float]]) -> dict[str, float]:
    keys = next(iter(per_class.values())).keys()
    return {k: sum(v[k] for v in per_class.values()) / len(per_class) for k in keys}


# every top-k accuracy SAEBench's schema has; the reference runs hold null for those not measured
SAEBENCH_K_VALUES = (1, 2, 5, 10, 20, 50, 100)


def _all_k(accuracies: dict[str, Any], prefixes: tuple[str, ...]) -> dict[str, Any]:
    schema = [f"{p}_{name}" for p in prefixes
              for name in ["test_accuracy"] + [f"top_{k}_test_accuracy" for k in SAEBENCH_K_VALUES]]
    return {**{k: accuracies.get(k) for k in schema}, **accuracies}


def final_info_section(result: dict[str, Any], results_file: Optional[Path]) -> dict[str, Any]:
    """The result as the reference runs wrote it: SAEBench's per-dataset names
    ("<dataset>_results"; the result file keeps the names as given) and every top-k accuracy of
    SAEBench's schema, null for the k not in k_values."""
    section = saebench_section(result, results_file)
    section["eval_result_metrics"] = {cat: _all_k(v, (cat,)) if cat in ("llm", "sae") else v
                                      for cat, v in section["eval_result_metrics"].items()}
    section["eval_result_details"] = [
        {"dataset_name": f"{d['dataset_name']}_results",
         **_all_k({k: v for k, v in d.items() if k != "dataset_name"}, ("llm", "sae"))}
        for d in section.get("eval_result_details", [])
    ]
    return section


@register_eval(
    "sparse_probing",
    eval_type_id="sparse_probing",
    final_info_key="sparse probing evaluation results",
    settings=SparseProbingSettings,
    final_info_section=final_info_section,
)
def run_sparse_probing(saes: list, ctx: EvalContext, s: SparseProbingSettings) -> list[EvalResult]:
    if not s.datasets:
        raise ValueError("sparse_probing.datasets is empty; name at least one dataset (e.g. ['bbc-news'])")
    n_train, n_test = _set_sizes(ctx, s)
    s = s.model_copy(update={"probe_train_set_size": n_train, "probe_test_set_size": n_test})
    details: list[list[dict]] = [[] for _ in saes]
    per_class_all: list[dict] = [{} for _ in saes]
    llm_top_1_dim: dict[str, dict] = {}
    caveats: dict[str, str] = {}
    for name in s.datasets:
        acts = dataset_activations(ctx, name, s, n_train, n_test)
        classes = acts["classes"]

        def llm_accuracies() -> dict[str, dict]:  # pooled only when not cached
            train, test = ({c: segment_mean(**acts[split][c]) for c in classes} for split in ("train", "test"))
            return {"accuracies": probe_accuracies(train, test, classes, s, "llm", standardized=True),
                    "top_1_dim": top_dims(train, test, classes, s.seed)}

        cached = ctx.cached(
            "sparse_probing_llm",
            # with the loaders' version, as the activations' key: a loader change means new texts
            {"dataset": name, "loaders_version": LOADERS_VERSION, "version": LLM_PROBE_CACHE_VERSION,
             "settings": s.model_dump(exclude={"datasets", "llm_batch_size", "sae_batch_size"})},
            llm_accuracies,
        )
        llm = cached["accuracies"]
        llm_top_1_dim[name] = cached["top_1_dim"]
        caveat = dominance_caveat(name, cached["top_1_dim"], llm)
        if caveat:
            caveats[name] = caveat
        llm_mean = _mean_over(llm)
        for i, sae in enumerate(saes):
            sae_train = {c: sae_pooled(sae, acts["train"][c], s.sae_batch_size * s.context_length) for c in classes}
            sae_test = {c: sae_pooled(sae, acts["test"][c], s.sae_batch_size * s.context_length) for c in classes}
            sae_acc = probe_accuracies(sae_train, sae_test, classes, s, "sae")
            details[i].append({"dataset_name": name, **llm_mean, **_mean_over(sae_acc)})
            per_class_all[i][name] = {c: {**llm[c], **sae_acc[c]} for c in classes}
    results = []
    for i in range(len(saes)):
        keys = [k for k in details[i][0] if k != "dataset_name"]
        overall = {k: sum(d[k] for d in details[i]) / len(details[i]) for k in keys}
        metrics = {
            "llm": {k: v for k, v in overall.items() if k.startswith("llm_")},
            "sae": {k: v for k, v in overall.items() if k.startswith("sae_")},
        }
        unstructured = {"per_class": per_class_all[i], "llm_top_1_dim": llm_top_1_dim,
                        "caveat": " | ".join(caveats.values()) or None, "caveats_per_dataset": caveats}
        results.append(EvalResult(metrics, details[i], unstructured, s.model_dump()))
    return results
