"""SCR and TPP (SAEBench evals/scr_and_tpp): do SAE latents isolate one concept from another?

Both train linear probes on mean-pooled model activations, rank latents by their effect on a
probe, remove the top N (N in n_values) from the activations and re-test probes:

SCR (spurious correlation removal). Data with two binary attributes (bias_in_bios: profession
pair x gender; Amazon: category pair x rating 1/5; offline: BBC topic pair x byline gender, see
featsep.data.offline). Three probes: `class` (attribute 1, balanced over attribute 2),
`spurious` (attribute 2, balanced over attribute 1) and `biased` (trained where the two are
perfectly confounded). dir1 removes the spurious probe's latents and scores the biased probe on
class data; dir2 removes the class probe's latents and scores it on spurious data:
    S = (A_ablated - A_biased) / (A_clean - A_biased), 0 when the denominator < 0.001,
A_biased = biased probe's clean accuracy on that data, A_clean = the matching probe's.
scr_metric_threshold_N takes dir1 when the biased probe is no better on class data than on
spurious data (it leans on the spurious attribute), else dir2. Averaged over the pairs.
TPP (targeted probe perturbation). One one-vs-rest probe per class; for class i, remove its
latents: intended = acc_i(clean) - acc_i(ablated), unintended = mean_{j != i} acc_j(clean) -
acc_j(ablated), total = intended - unintended; mean over classes, then datasets.

Latent effects (train data): e_f = (mean pooled code of positives - of negatives)_f *
(w_probe . W_dec[f]) / normalisation factor; SCR ranks |e|, TPP clamps the mean difference at 0
first. The top N non-zero effects are removed: x' = dec(f with them zeroed) + (x - dec(f)). With
a linear decoder that is x - sum_{f in S} f W_dec[f] (scaled), and mean pooling is linear, so the
pooled ablated activation is pooled(x) - pooled(f)[S] W_dec[S]: exact and cheap, checked per SAE.

Where we differ from SAEBench (on purpose, recorded in the result):
- pooling over kept positions only (SAEBench also encodes and ablates pad positions, whose
  zero inputs can make the ablation leak into the pooled mean);
- probes and negative samples seeded, and clean and ablated accuracies measured on the same
  test items (SAEBench redraws TPP's negatives each time);
- cells of the two-attribute data are shuffled with the seed before taking the first rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from pydantic import field_validator
from torch import Tensor
from tqdm.auto import tqdm

from featsep.data.probing import LOADERS_VERSION
from featsep.data.scr import SAEBENCH_SIZES, SCR_CPU_SIZES, ScrDatasetSpec, scr_frames, scr_spec
from featsep.evals.common.context import EvalContext, encode, sae_scale
from featsep.evals.common.pooling import balanced_indices, dataset_activations, kept_positions, sae_pooled, segment_mean
from featsep.evals.common.probes import LinearProbe, train_binary_probe
from featsep.evals.registry import EvalResult, EvalSettings, register_eval

FINAL_INFO_KEY = "scr and tpp evaluations results"
# SCR and TPP write one final_info section (the reference runs' key), merged by eval name
_SHARED_SECTION = dict(
    final_info_key=FINAL_INFO_KEY,
    merge_section=lambda existing, section: merge_scr_tpp_section(existing, section),
)
N_VALUES = [2, 5, 10, 20, 50, 100, 500]
MIN_DENOMINATOR = 0.001

# Probe keys of one SCR pair run (SAEBench's "professor / nurse", "male / female",
# "male_professor / female_nurse").
CLASS, SPURIOUS, BIASED = "class", "spurious", "biased"
SCR_PROBES = (CLASS, SPURIOUS, BIASED)


class _ProbeSettings(EvalSettings):
    train_set_size: Optional[int] = None  # None: SAEBench's 4000 on a GPU (SCR: the dataset's gpu_sizes), a CPU-sized default otherwise
    test_set_size: Optional[int] = None  # None: 1000 on a GPU, CPU default otherwise
    context_length: int = 128
    n_values: list[int] = N_VALUES
    llm_batch_size: int = 8
    sae_batch_size: int = 125  # texts per SAE encoding batch (x context_length rows)
    probe_lr: float = 1e-3
    probe_batch_size: int = 16  # SAEBench: do not change (it sets how much spurious signal the probe learns)
    probe_epochs: int = 20
    probe_l1_penalty: float = 1e-3
    early_stopping_patience: int = 20
    local_copies: dict[str, str] = {}  # HF name -> local copy in the hub's format (a file, or a dir with train.* / test.*)
    seed: int = 42


class ScrSettings(_ProbeSettings):
    datasets: list[str] = ["bbc-news-byline"]  # SAEBench's: LabHC/bias_in_bios_class_set1, canrager/amazon_reviews_mcauley_1and5
    pairs: dict[str, list[tuple[str, str]]] = {}  # dataset -> attribute-1 pairs; missing: SAEBench's (built-in's) pairs
    pairs_per_dataset: Optional[int] = None  # None: all on a GPU, 2 on CPU

    @field_validator("datasets")
    @classmethod
    def _registered(cls, names: list[str]) -> list[str]:
        for name in names:
            scr_spec(name)  # an unknown name: the registry's one error, listing the SCR sets
        return names


class TppSettings(_ProbeSettings):
    datasets: list[str] = ["bbc-news"]  # SAEBench's: LabHC/bias_in_bios_class_set1, canrager/amazon_reviews_mcauley_1and5
    text_column: str = "text"  # for local labelled files (see featsep.data.probing)
    label_column: str = "label"


def _sizes(ctx: EvalContext, s: _ProbeSettings, cpu: tuple[int, int], gpu: tuple[int, int] = SAEBENCH_SIZES) -> tuple[int, int]:
    """Set sizes: the settings', else SAEBench's (gpu) on an accelerator and smaller ones on CPU."""
    return ctx.budget(s.train_set_size, gpu=gpu[0], cpu=cpu[0]), ctx.budget(s.test_set_size, gpu=gpu[1], cpu=cpu[1])


# ---- probes --------------------------------------------------------------------------------------


def train_probe(
    x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, s: _ProbeSettings, seed: int
) -> tuple[LinearProbe, float]:
    """SAEBench's train_probe_gpu for SCR/TPP: the shared probe trainer with their L1 penalty."""
    return train_binary_probe(
        x_train, y_train, x_test, y_test, lr=s.probe_lr, batch_size=s.probe_batch_size,
        epochs=s.probe_epochs, patience=s.early_stopping_patience, seed=seed, l1_penalty=s.probe_l1_penalty,
    )


# ---- latent effects and ablation -----------------------------------------------------------------


def node_effects(pos_codes: Tensor, neg_codes: Tensor, probe_weight: Tensor, W_dec: Tensor, scale: float, scr: bool) -> Tensor:
    """[d_sae] effect of each latent on the probe's logit (see module doc)."""
    diff = pos_codes.float().mean(0) - neg_codes.float().mean(0)
    if not scr:
        diff = diff.clamp(min=0.0)
    effects = diff * (W_dec.detach().float().cpu() @ probe_weight.float()) / scale
    return effects.abs() if scr else effects


def top_n_latents(effects: Tensor, n: int) -> Tensor:
    """Indices of the min(n, #non-zero) largest effects (SAEBench's select_top_n_features)."""
    k = min(n, int((effects != 0).sum()))
    return torch.topk(effects, k).indices if k else torch.zeros(0, dtype=torch.long)


def ablated_pooled(pooled_x: Tensor, pooled_codes: Tensor, latents: Tensor, W_dec: Tensor, scale: float) -> Tensor:
    """Pooled activations with `latents` removed: pooled(x) - pooled(f)[:, S] W_dec[S] / scale."""
    if latents.numel() == 0:
        return pooled_x
    return pooled_x - pooled_codes[:, latents].float() @ W_dec.detach().float().cpu()[latents] / scale


@torch.no_grad()
def ablate_positions(sae, x: Tensor, latents: Tensor) -> Tensor:
    """The definition, per position: x' = dec(f with `latents` zeroed) + (x - dec(f)), raw scale."""
    scale = sae_scale(sae)
    f = encode(sae, x)
    error = x - sae.decode(f).float().cpu() / scale
    f = f.clone()
    f[..., latents] = 0.0
    return sae.decode(f).float().cpu() / scale + error


@torch.no_grad()
def check_linear_decoder(sae) -> None:
    """The pooled-ablation shortcut needs decode(f) = f W_dec + b_dec; say so if an SAE differs."""
    g = torch.Generator().manual_seed(0)
    f = torch.rand(4, int(sae.cfg.d_sae), generator=g).to(sae.W_dec.dtype).to(sae.W_dec.device)
    expected = f @ sae.W_dec + sae.b_dec
    if not torch.allclose(sae.decode(f).float(), expected.float(), rtol=1e-3, atol=1e-3 * float(expected.abs().max()) + 1e-6):
        raise ValueError(
            f"SCR/TPP need an SAE whose decode is codes @ W_dec + b_dec; {type(sae).__name__}.decode is not "
            "(all featsep architectures are): evaluate a linear-decoder SAE"
        )


# ---- SCR data ------------------------------------------------------------------------------------


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


# ---- shared model-side work ----------------------------------------------------------------------


@dataclass
class TextActivations:
    """Packed activations of a list of unique texts and which texts belong to which group."""

    packed: dict[str, Tensor]  # rows [n_kept, d], lengths [n_texts]
    groups: dict[str, list[int]]  # group name -> text indices


def text_activations(ctx: EvalContext, kind: str, key: dict, groups: dict[str, list[str]], s: _ProbeSettings) -> TextActivations:
    def compute():
        texts: list[str] = []
        index: dict[str, int] = {}
        idx_groups = {}
        for g, items in groups.items():
            ids = []
            for t in items:
                if t not in index:
                    index[t] = len(texts)
                    texts.append(t)
                ids.append(index[t])
            idx_groups[g] = ids
        packed = kept_positions(ctx, texts, s)
        return {"packed": packed, "groups": idx_groups}

    value = ctx.cached(kind, key, compute)
    return TextActivations(value["packed"], value["groups"])


def _sae_pooled(sae, acts: TextActivations, s: _ProbeSettings) -> Tensor:
    return sae_pooled(sae, acts.packed, s.sae_batch_size * s.context_length)


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
    sizes = {name: _sizes(ctx, s, cpu=SCR_CPU_SIZES, gpu=scr_spec(name).gpu_sizes) for name in s.datasets}
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


@register_eval("scr", eval_type_id="scr", settings=ScrSettings, **_SHARED_SECTION)
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
                codes = {split: _sae_pooled(sae, splits[split], s) for split in splits}
                metrics = scr_pair_results(sae, pooled, codes, sets, probes, clean, s.n_values)
                per_sae[i].append({"dataset_name": f"{run}_results", **metrics})
    results = []
    for details in per_sae:
        keys = [k for k in details[0] if k != "dataset_name"]
        mean = {k: float(np.mean([d[k] for d in details])) for k in keys}
        unstructured = {"clean_probe_accuracies": clean_all, "set_sizes": {k: list(v) for k, v in sizes.items()},
                        "differences_from_saebench": _DIFFERENCES}
        results.append(EvalResult({"scr_metrics": mean}, details, unstructured, s.model_dump()))
    return results


_DIFFERENCES = [
    "mean pooling over kept (non-special, non-zero) positions only; pads are never encoded or ablated",
    "seeded probes and negative samples; clean and ablated accuracies on the same test items",
    "two-attribute cells shuffled with the seed before taking their first rows",
    "scr_metric_threshold_N uses dir1 when the biased probe's accuracies on class and spurious data tie",
]


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


@register_eval("tpp", eval_type_id="tpp", settings=TppSettings, **_SHARED_SECTION)
def run_tpp(saes: list, ctx: EvalContext, s: TppSettings) -> list[EvalResult]:
    if not s.datasets:
        raise ValueError("tpp.datasets is empty; name at least one (e.g. ['bbc-news'])")
    sizes = _sizes(ctx, s, cpu=(200, 100))
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
            codes = {split: _sae_pooled(sae, splits[split], s) for split in splits}
            ablated = tpp_ablations(sae, classes, pooled, codes, sets, probes, s.n_values)
            means, per_class = tpp_metrics(clean, ablated)
            per_sae_details[i].append({"dataset_name": f"{name}_tpp_results", **means})
            per_sae_classes[i][name] = per_class
    results = []
    for details, per_class in zip(per_sae_details, per_sae_classes):
        keys = [k for k in details[0] if k != "dataset_name"]
        mean = {k: float(np.mean([d[k] for d in details])) for k in keys}
        unstructured = {**per_class, "clean_probe_accuracies": clean_all, "differences_from_saebench": _DIFFERENCES[:2]}
        results.append(EvalResult({"tpp_metrics": mean}, details, unstructured, s.model_dump()))
    return results


# ---- final_info: scr and tpp share one section ---------------------------------------------------


def merge_scr_tpp_section(existing: Optional[dict], section: dict) -> dict:
    """The reference runs keep SCR and TPP under one final_info key whose eval_result_metrics is
    read as ["scr_metrics"]: keep the newest section's fields and the union of both evals'
    metric categories (scr_metrics + tpp_metrics), with each eval's own section under
    "per_eval" {"scr": ..., "tpp": ...}. For the runner's final_info writer (see the report)."""
    name = section.get("eval_type_id", "unknown")
    per_eval = dict((existing or {}).get("per_eval", {}))
    if existing and existing.get("eval_type_id") in ("scr", "tpp") and not per_eval:
        per_eval[existing["eval_type_id"]] = {k: v for k, v in existing.items() if k != "per_eval"}
    per_eval[name] = section
    metrics: dict = {}
    for eval_name in ("scr", "tpp"):
        if eval_name in per_eval:
            metrics.update(per_eval[eval_name].get("eval_result_metrics", {}))
    return {**section, "eval_result_metrics": metrics, "per_eval": per_eval}
