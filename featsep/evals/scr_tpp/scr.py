"""SCR: spurious correlation removal on two-attribute data (see featsep.evals.scr_tpp)."""

from __future__ import annotations

import hashlib
from typing import Optional

import numpy as np
import torch
from pydantic import field_validator
from torch import Tensor
from tqdm.auto import tqdm

from featsep.data.scr import SCR_CPU_SIZES, ScrDatasetSpec, scr_frames, scr_spec
from featsep.evals.common.context import EvalContext, sae_scale
from featsep.evals.common.pooling import segment_mean
from featsep.evals.common.probes import LinearProbe
from featsep.evals.registry import EvalResult, register_eval
from featsep.evals.scr_tpp.common import (
    BIASED, CLASS, DIFFERENCES, MIN_DENOMINATOR, SCR_PROBES, SHARED_SECTION, SPURIOUS, ProbeSettings, ablated_pooled,
    check_linear_decoder, node_effects, set_sizes, text_activations, texts_sae_pooled, top_n_latents, train_probe,
)


class ScrSettings(ProbeSettings):
    datasets: list[str] = ["bbc-news-byline"]  # SAEBench's: LabHC/bias_in_bios_class_set1, canrager/amazon_reviews_mcauley_1and5
    pairs: dict[str, list[tuple[str, str]]] = {}  # dataset -> attribute-1 pairs; missing: SAEBench's (built-in's) pairs
    pairs_per_dataset: Optional[int] = None  # None: all on a GPU, 2 on CPU

    @field_validator("datasets")
    @classmethod
    def _registered(cls, names: list[str]) -> list[str]:
        for name in names:
            scr_spec(name)  # an unknown name: the registry's one error, listing the SCR sets
        return names

# ---- SCR probe sets ---------------------------------------------------------------------------------


def _column1_value(spec: ScrDatasetSpec, df, name: str):
    """A class name as stored: ids for int columns (SAEBench's mappings), else the name itself."""
    column = df[spec.column1]
    if spec.column1_ids and column.dtype.kind in "iuf":
        if name not in spec.column1_ids:
            raise ValueError(f"class {name!r} is not one of {spec.column1}'s names ({', '.join(spec.column1_ids)})")
        return spec.column1_ids[name]
    return name


def spurious_corr_data(df, spec: ScrDatasetSpec, pair: tuple[str, str], per_quadrant: int, seed: int, where: str) -> dict[str, list[str]]:
    """SAEBench's get_spurious_corr_data: six lists of 2 * per_quadrant texts.

    class/class_neg: attribute-1 pos/neg, each half attribute-2 pos and half neg; spurious/
    spurious_neg: attribute-2 pos/neg, balanced over attribute 1; biased/biased_neg: the (pos, pos)
    and (neg, neg) cells only, where the attributes are perfectly confounded."""
    c1_pos, c1_neg = (_column1_value(spec, df, p) for p in pair)
    c2_pos, c2_neg = spec.column2_values
    rng = np.random.default_rng(seed)

    def cell(a, b) -> list[str]:
        texts = df[(df[spec.column1] == a) & (df[spec.column2] == b)][spec.text_column].tolist()
        texts = [t for t in texts if isinstance(t, str) and t.strip()]
        rng.shuffle(texts)
        return texts

    pos_pos, pos_neg, neg_pos, neg_neg = cell(c1_pos, c2_pos), cell(c1_pos, c2_neg), cell(c1_neg, c2_pos), cell(c1_neg, c2_neg)
    q = per_quadrant
    short = {
        f"({pair[0]}, {c2_pos})": (len(pos_pos), 2 * q), f"({pair[1]}, {c2_neg})": (len(neg_neg), 2 * q),
        f"({pair[0]}, {c2_neg})": (len(pos_neg), q), f"({pair[1]}, {c2_pos})": (len(neg_pos), q),
    }
    missing = {k: v for k, v in short.items() if v[0] < v[1]}
    if missing:
        cells = ", ".join(f"{k} has {have} < {need}" for k, (have, need) in missing.items())
        raise ValueError(f"SCR {where} split, pair {pair}: too few texts ({cells}); lower scr.train_set_size / test_set_size")
    out = {
        CLASS: pos_pos[:q] + pos_neg[:q],
        f"{CLASS}_neg": neg_pos[:q] + neg_neg[:q],
        SPURIOUS: pos_pos[:q] + neg_pos[:q],
        f"{SPURIOUS}_neg": pos_neg[:q] + neg_neg[:q],
        BIASED: pos_pos[: 2 * q],
        f"{BIASED}_neg": neg_neg[: 2 * q],
    }
    for texts in out.values():
        rng.shuffle(texts)
    return out


def binary_set(pos_idx: list[int], neg_idx: list[int], gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """(text indices, labels) of positives then negatives, shuffled."""
    idx = torch.tensor(pos_idx + neg_idx, dtype=torch.long)
    y = torch.tensor([1] * len(pos_idx) + [0] * len(neg_idx))
    order = torch.randperm(len(idx), generator=gen)
    return idx[order], y[order]

# ---- SCR -----------------------------------------------------------------------------------------


def scr_score(ablated: float, biased: float, clean: float) -> float:
    denominator = clean - biased
    return 0.0 if denominator < MIN_DENOMINATOR else (ablated - biased) / denominator


def scr_pair_metrics(clean: dict[str, float], ablated: dict[int, dict[str, float]]) -> dict[str, float]:
    """SAEBench's get_scr_plotting_dict with named accuracies.

    clean: class_on_class, spurious_on_spurious, biased_on_class, biased_on_spurious;
    ablated[N]: biased_on_class_dir1 (spurious latents removed), biased_on_spurious_dir2."""
    use_dir1 = clean["biased_on_class"] <= clean["biased_on_spurious"]
    out = {}
    for n, acc in ablated.items():
        d1 = scr_score(acc["biased_on_class_dir1"], clean["biased_on_class"], clean["class_on_class"])
        d2 = scr_score(acc["biased_on_spurious_dir2"], clean["biased_on_spurious"], clean["spurious_on_spurious"])
        out[f"scr_dir1_threshold_{n}"] = d1
        out[f"scr_dir2_threshold_{n}"] = d2
        out[f"scr_metric_threshold_{n}"] = d1 if use_dir1 else d2
    return out


def _scr_pair_context(ctx: EvalContext, name: str, pair: tuple[str, str], spec, train_df, test_df, s: ScrSettings, sizes):
    """Activations, probes and clean accuracies of one pair run (shared by every SAE)."""
    q_train, q_test = sizes[0] // 4, sizes[1] // 4
    key = {"dataset": name, "pair": list(pair), "q_train": q_train, "q_test": q_test, "seed": s.seed,
           "context_length": s.context_length, "local_copies": s.local_copies}
    splits, digest = {}, hashlib.sha256()
    for split, df, q in (("train", train_df, q_train), ("test", test_df, q_test)):
        data = spurious_corr_data(df, spec, pair, q, s.seed, split)
        for group in sorted(data):  # the texts themselves key the cache: a rebuilt offline set never reads stale entries
            digest.update("\x00".join(data[group]).encode())
        splits[split] = text_activations(ctx, "scr_acts", {**key, "split": split, "texts": digest.hexdigest()[:16]}, data, s)
    key["texts"] = digest.hexdigest()[:16]
    pooled = {split: segment_mean(a.packed["rows"], a.packed["lengths"]) for split, a in splits.items()}
    gen = torch.Generator().manual_seed(s.seed)
    sets = {split: {p: binary_set(splits[split].groups[p], splits[split].groups[f"{p}_neg"], gen)
                    for p in SCR_PROBES} for split in splits}

    def fit():
        probes = {}
        for i, p in enumerate(SCR_PROBES):
            (tr_idx, y_tr), (te_idx, y_te) = sets["train"][p], sets["test"][p]
            probe, _ = train_probe(pooled["train"][tr_idx], y_tr, pooled["test"][te_idx], y_te, s, s.seed + i)
            probes[p] = {"weight": probe.weight, "bias": probe.bias}
        return probes

    probe_key = {**key, "probe": s.model_dump(include={"probe_lr", "probe_batch_size", "probe_epochs", "probe_l1_penalty", "early_stopping_patience"})}
    probes = {p: LinearProbe(v["weight"], v["bias"]) for p, v in ctx.cached("scr_probes", probe_key, fit).items()}
    return splits, pooled, sets, probes


def _scr_accuracies(probes, pooled_test: Tensor, sets_test) -> dict[str, float]:
    def acc(probe: str, data: str) -> float:
        idx, y = sets_test[data]
        return probes[probe].accuracy(pooled_test[idx], y)

    return {
        "class_on_class": acc(CLASS, CLASS),
        "spurious_on_spurious": acc(SPURIOUS, SPURIOUS),
        "biased_on_class": acc(BIASED, CLASS),
        "biased_on_spurious": acc(BIASED, SPURIOUS),
        "biased_on_biased": acc(BIASED, BIASED),
    }


def scr_pair_results(sae, pooled: dict, codes: dict, sets: dict, probes: dict, clean: dict, n_values: list[int]) -> dict[str, float]:
    """One SAE on one pair run: effects on train data, ablations on test data, SCR metrics.

    pooled/codes: {"train", "test"} pooled model activations / SAE codes per text; sets[split][p]:
    (text indices, labels) of probe p's data; probes: {class, spurious, biased} LinearProbes."""
    scale, W_dec = sae_scale(sae), sae.W_dec.detach().float().cpu()  # once, not per ablation
    effects = {}
    for p in (CLASS, SPURIOUS):
        idx, y = sets["train"][p]
        c = codes["train"][idx]
        effects[p] = node_effects(c[y == 1], c[y == 0], probes[p].weight, W_dec, scale, scr=True)
    ablated = {}
    for n in n_values:
        accs = {}
        for removed, data, label in ((SPURIOUS, CLASS, "biased_on_class_dir1"), (CLASS, SPURIOUS, "biased_on_spurious_dir2")):
            latents = top_n_latents(effects[removed], n)
            idx, y = sets["test"][data]
            x = ablated_pooled(pooled["test"][idx], codes["test"][idx], latents, W_dec, scale)
            accs[label] = probes[BIASED].accuracy(x, y)
        ablated[n] = accs
    return scr_pair_metrics(clean, ablated)


def _pairs(name: str, s: ScrSettings, ctx: EvalContext, spec: ScrDatasetSpec) -> list[tuple[str, str]]:
    pairs = [tuple(p) for p in s.pairs.get(name, spec.pairs)]
    limit = ctx.budget(s.pairs_per_dataset, gpu=None, cpu=2)
    return pairs[:limit] if limit else pairs


def scr_set_sizes(ctx: EvalContext, s: ScrSettings) -> dict[str, tuple[int, int]]:
    """dataset -> (train, test) set sizes: the settings', else the dataset's on an accelerator
    (ScrDatasetSpec.gpu_sizes) and SCR_CPU_SIZES on CPU. Checks every name before any work."""
    if not s.datasets:
        raise ValueError("scr.datasets is empty; name at least one (e.g. ['bbc-news-byline'])")
    sizes = {name: set_sizes(ctx, s, cpu=SCR_CPU_SIZES, gpu=scr_spec(name).gpu_sizes) for name in s.datasets}
    small = {name: v for name, v in sizes.items() if min(v) < 8}
    if small:
        raise ValueError(f"scr train/test set sizes {small} are too small; use at least 8 (4 quadrants x 2)")
    return sizes


def config_with_sizes(s: ScrSettings, sizes: dict[str, tuple[int, int]]) -> ScrSettings:
    """The settings as recorded: with one size for every dataset, the sizes used (SAEBench's
    eval_config holds numbers); else as given (the per-dataset sizes are always in "set_sizes")."""
    if len(set(sizes.values())) != 1:
        return s
    train_size, test_size = next(iter(sizes.values()))
    return s.model_copy(update={"train_set_size": train_size, "test_set_size": test_size})


@register_eval("scr", eval_type_id="scr", settings=ScrSettings, **SHARED_SECTION)
def run_scr(saes: list, ctx: EvalContext, s: ScrSettings) -> list[EvalResult]:
    sizes = scr_set_sizes(ctx, s)
    s = config_with_sizes(s, sizes)
    for sae in saes:
        check_linear_decoder(sae)
    per_sae: list[list[dict]] = [[] for _ in saes]
    clean_all: dict[str, dict] = {}
    for name in s.datasets:
        spec, train_df, test_df = scr_frames(name, s.seed, s.local_copies)
        for pair in _pairs(name, s, ctx, spec):
            run = f"{name}_scr_{pair[0]}_{pair[1]}"
            splits, pooled, sets, probes = _scr_pair_context(ctx, name, pair, spec, train_df, test_df, s, sizes[name])
            clean = _scr_accuracies(probes, pooled["test"], sets["test"])
            clean_all[run] = clean
            for i, sae in enumerate(tqdm(saes, desc=f"scr: {run}", disable=not ctx.verbose)):
                codes = {split: texts_sae_pooled(sae, splits[split], s) for split in splits}
                metrics = scr_pair_results(sae, pooled, codes, sets, probes, clean, s.n_values)
                per_sae[i].append({"dataset_name": f"{run}_results", **metrics})
    results = []
    for details in per_sae:
        keys = [k for k in details[0] if k != "dataset_name"]
        mean = {k: float(np.mean([d[k] for d in details])) for k in keys}
        unstructured = {"clean_probe_accuracies": clean_all, "set_sizes": {k: list(v) for k, v in sizes.items()},
                        "differences_from_saebench": DIFFERENCES}
        results.append(EvalResult({"scr_metrics": mean}, details, unstructured, s.model_dump()))
    return results
