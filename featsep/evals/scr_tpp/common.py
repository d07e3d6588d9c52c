"""What SCR and TPP share: probe settings and training, latent effects, the ablation shortcut,
text activations, and their one final_info section (see featsep.evals.scr_tpp)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from featsep.data.scr import SAEBENCH_SIZES
from featsep.evals.common.context import EvalContext, encode, sae_scale
from featsep.evals.common.pooling import kept_positions, sae_pooled
from featsep.evals.common.probes import LinearProbe, train_binary_probe
from featsep.evals.registry import EvalSettings
from featsep.evals.schema import saebench_section

FINAL_INFO_KEY = "scr and tpp evaluations results"
# SCR and TPP write one final_info section (the reference runs' key), merged by eval name
SHARED_SECTION = dict(
    final_info_key=FINAL_INFO_KEY,
    merge_section=lambda existing, section: merge_scr_tpp_section(existing, section),
    final_info_section=saebench_section,
)
N_VALUES = [2, 5, 10, 20, 50, 100, 500]
MIN_DENOMINATOR = 0.001

# Probe keys of one SCR pair run (SAEBench's "professor / nurse", "male / female",
# "male_professor / female_nurse").
CLASS, SPURIOUS, BIASED = "class", "spurious", "biased"
SCR_PROBES = (CLASS, SPURIOUS, BIASED)


class ProbeSettings(EvalSettings):
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

def set_sizes(ctx: EvalContext, s: ProbeSettings, cpu: tuple[int, int], gpu: tuple[int, int] = SAEBENCH_SIZES) -> tuple[int, int]:
    """Set sizes: the settings', else SAEBench's (gpu) on an accelerator and smaller ones on CPU."""
    return ctx.budget(s.train_set_size, gpu=gpu[0], cpu=cpu[0]), ctx.budget(s.test_set_size, gpu=gpu[1], cpu=cpu[1])


# ---- probes --------------------------------------------------------------------------------------


def train_probe(
    x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, s: ProbeSettings, seed: int
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

# ---- shared model-side work ----------------------------------------------------------------------


@dataclass
class TextActivations:
    """Packed activations of a list of unique texts and which texts belong to which group."""

    packed: dict[str, Tensor]  # rows [n_kept, d], lengths [n_texts]
    groups: dict[str, list[int]]  # group name -> text indices


def text_activations(ctx: EvalContext, kind: str, key: dict, groups: dict[str, list[str]], s: ProbeSettings) -> TextActivations:
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


def texts_sae_pooled(sae, acts: TextActivations, s: ProbeSettings) -> Tensor:
    return sae_pooled(sae, acts.packed, s.sae_batch_size * s.context_length)

DIFFERENCES = [
    "mean pooling over kept (non-special, non-zero) positions only; pads are never encoded or ablated",
    "seeded probes and negative samples; clean and ablated accuracies on the same test items",
    "two-attribute cells shuffled with the seed before taking their first rows",
    "scr_metric_threshold_N uses dir1 when the biased probe's accuracies on class and spurious data tie",
]

# ---- final_info: scr and tpp share one section ---------------------------------------------------


def merge_scr_tpp_section(existing: Optional[dict], section: dict) -> dict:
    """The reference runs keep SCR and TPP under one final_info key, with SCR's fields (its
    eval_type_id, config and per-pair details) at the top, whose eval_result_metrics is read as
    ["scr_metrics"]: SCR's section when it has run (else TPP's), whichever eval ran last, with
    the union of both evals' metric categories (scr_metrics + tpp_metrics) and each eval's own
    section under "per_eval" {"scr": ..., "tpp": ...}."""
    name = section.get("eval_type_id", "unknown")
    per_eval = dict((existing or {}).get("per_eval", {}))
    if existing and existing.get("eval_type_id") in ("scr", "tpp") and not per_eval:
        per_eval[existing["eval_type_id"]] = {k: v for k, v in existing.items() if k != "per_eval"}
    per_eval[name] = section
    metrics: dict = {}
    for eval_name in ("scr", "tpp"):
        if eval_name in per_eval:
            metrics.update(per_eval[eval_name].get("eval_result_metrics", {}))
    top = per_eval.get("scr", section)
    return {**top, "eval_result_metrics": metrics, "per_eval": per_eval}
