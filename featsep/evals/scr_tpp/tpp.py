"""TPP: targeted probe perturbation, one one-vs-rest probe per class (see featsep.evals.scr_tpp)."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from featsep.data.probing import LOADERS_VERSION
from featsep.evals.common.context import EvalContext, sae_scale
from featsep.evals.common.pooling import balanced_indices, dataset_activations, segment_mean
from featsep.evals.common.probes import LinearProbe
from featsep.evals.registry import EvalResult, register_eval
from featsep.evals.scr_tpp.common import (
    DIFFERENCES, SHARED_SECTION, ProbeSettings, TextActivations, ablated_pooled, check_linear_decoder, node_effects,
    set_sizes, texts_sae_pooled, top_n_latents, train_probe,
)


class TppSettings(ProbeSettings):
    datasets: list[str] = ["bbc-news"]  # SAEBench's: LabHC/bias_in_bios_class_set1, canrager/amazon_reviews_mcauley_1and5
    text_column: str = "text"  # for local labelled files (see featsep.data.probing)
    label_column: str = "label"

# ---- TPP -----------------------------------------------------------------------------------------


def tpp_metrics(clean: dict[str, float], ablated: dict[str, dict[int, dict[str, float]]]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """SAEBench's create_tpp_plotting_dict. clean[c]: class c's probe accuracy; ablated[i][N][c]:
    class c's probe accuracy after removing class i's top N latents. Returns (means, per class)."""
    classes = list(clean)
    per_class = {}
    for i in classes:
        m = {}
        for n, accs in ablated[i].items():
            intended = clean[i] - accs[i]
            unintended = float(np.mean([clean[j] - accs[j] for j in classes if j != i]))
            m[f"tpp_threshold_{n}_total_metric"] = intended - unintended
            m[f"tpp_threshold_{n}_intended_diff_only"] = intended
            m[f"tpp_threshold_{n}_unintended_diff_only"] = unintended
        per_class[i] = m
    keys = next(iter(per_class.values())).keys()
    return {k: float(np.mean([per_class[c][k] for c in classes])) for k in keys}, per_class


def tpp_ablations(sae, classes: list[str], pooled: dict, codes: dict, sets: dict, probes: dict, n_values: list[int]) -> dict:
    """ablated[i][N][j]: class j's probe accuracy on its test set after removing class i's top N
    latents. sets[(split, c)]: (text indices, labels) of class c's one-vs-rest data."""
    scale, W_dec = sae_scale(sae), sae.W_dec.detach().float().cpu()  # once, not per ablation
    ablated: dict[str, dict[int, dict[str, float]]] = {}
    for c in classes:
        idx, y = sets[("train", c)]
        effects = node_effects(codes["train"][idx][y == 1], codes["train"][idx][y == 0], probes[c].weight, W_dec, scale, scr=False)
        ablated[c] = {}
        for n in n_values:
            # every test text ablated once; each class's probe reads its own test items
            x = ablated_pooled(pooled["test"], codes["test"], top_n_latents(effects, n), W_dec, scale)
            ablated[c][n] = {j: probes[j].accuracy(x[sets[("test", j)][0]], sets[("test", j)][1]) for j in classes}
    return ablated


def _tpp_dataset(ctx: EvalContext, name: str, s: TppSettings, n_train: int, n_test: int):
    acts = dataset_activations(ctx, name, s, n_train, n_test)  # same cache keys as sparse_probing
    classes = acts["classes"]
    if len(classes) < 2:
        raise ValueError(f"TPP needs at least 2 classes; dataset {name!r} has {len(classes)}")
    # pack every class's texts into one TextActivations per split
    out = {}
    for split in ("train", "test"):
        rows, lengths, groups, offset = [], [], {}, 0
        for c in classes:
            packed = acts[split][c]
            rows.append(packed["rows"])
            lengths.append(packed["lengths"])
            groups[c] = list(range(offset, offset + len(packed["lengths"])))
            offset += len(packed["lengths"])
        out[split] = TextActivations({"rows": torch.cat(rows), "lengths": torch.cat(lengths)}, groups)
    return classes, out


@register_eval("tpp", eval_type_id="tpp", settings=TppSettings, **SHARED_SECTION)
def run_tpp(saes: list, ctx: EvalContext, s: TppSettings) -> list[EvalResult]:
    if not s.datasets:
        raise ValueError("tpp.datasets is empty; name at least one (e.g. ['bbc-news'])")
    sizes = set_sizes(ctx, s, cpu=(200, 100))
    s = s.model_copy(update={"train_set_size": sizes[0], "test_set_size": sizes[1]})
    n_train, n_test = max(1, sizes[0] // 2), max(1, sizes[1] // 2)  # per class, as SAEBench's quadrant sampling gives
    for sae in saes:
        check_linear_decoder(sae)
    per_sae_details: list[list[dict]] = [[] for _ in saes]
    per_sae_classes: list[dict] = [{} for _ in saes]
    clean_all = {}
    for name in s.datasets:
        classes, splits = _tpp_dataset(ctx, name, s, n_train, n_test)
        pooled = {split: segment_mean(a.packed["rows"], a.packed["lengths"]) for split, a in splits.items()}
        sets = {}
        for ci, c in enumerate(classes):
            gen = torch.Generator().manual_seed(s.seed + ci)
            for split in ("train", "test"):
                groups = splits[split].groups
                items, y = balanced_indices({k: len(groups[k]) for k in classes}, c, gen)
                sets[(split, c)] = (torch.tensor([groups[k][j] for k, j in items], dtype=torch.long), y)

        def fit():
            out = {}
            for ci, c in enumerate(classes):
                (tr, y_tr), (te, y_te) = sets[("train", c)], sets[("test", c)]
                probe, _ = train_probe(pooled["train"][tr], y_tr, pooled["test"][te], y_te, s, s.seed + ci)
                out[c] = {"weight": probe.weight, "bias": probe.bias}
            return out

        probe_key = {"dataset": name, "n_train": n_train, "n_test": n_test, "seed": s.seed, "context_length": s.context_length,
                     "local_copies": s.local_copies, "text_column": s.text_column, "label_column": s.label_column,
                     "loaders_version": LOADERS_VERSION,  # as the activations' key: a loader change retrains the probes
                     "probe": s.model_dump(include={"probe_lr", "probe_batch_size", "probe_epochs", "probe_l1_penalty", "early_stopping_patience"})}
        probes = {c: LinearProbe(v["weight"], v["bias"]) for c, v in ctx.cached("tpp_probes", probe_key, fit).items()}
        clean = {c: probes[c].accuracy(pooled["test"][sets[("test", c)][0]], sets[("test", c)][1]) for c in classes}
        clean_all[name] = clean
        for i, sae in enumerate(tqdm(saes, desc=f"tpp: {name}", disable=not ctx.verbose)):
            codes = {split: texts_sae_pooled(sae, splits[split], s) for split in splits}
            ablated = tpp_ablations(sae, classes, pooled, codes, sets, probes, s.n_values)
            means, per_class = tpp_metrics(clean, ablated)
            per_sae_details[i].append({"dataset_name": f"{name}_tpp_results", **means})
            per_sae_classes[i][name] = per_class
    results = []
    for details, per_class in zip(per_sae_details, per_sae_classes):
        keys = [k for k in details[0] if k != "dataset_name"]
        mean = {k: float(np.mean([d[k] for d in details])) for k in keys}
        unstructured = {**per_class, "clean_probe_accuracies": clean_all, "differences_from_saebench": DIFFERENCES[:2]}
        results.append(EvalResult({"tpp_metrics": mean}, details, unstructured, s.model_dump()))
    return results
