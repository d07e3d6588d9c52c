"""Core eval: reconstruction, sparsity and downstream-loss metrics (SAEBench evals/core).

Formulas follow SAEBench 8042bb38 / SAELens evals.py, quirks included, with the corrected
versions alongside where SAEBench is known to be wrong (see METRIC_CONVENTIONS, which is
also written into every result).

Token stream: documents from `dataset` packed into BOS-led rows of `context_size` tokens;
the first n_eval_reconstruction_batches batches feed the KL/CE metrics, the next
n_eval_sparsity_variance_batches batches the sparsity/variance metrics. Special tokens
(pad, eos, bos) are left out of every mean.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from featsep.evals.common.context import EvalContext, encode_decode, not_special
from featsep.evals.common.tokens import token_rows
from featsep.evals.registry import EvalResult, EvalSettings, register_eval
from featsep.rundir import MISSING_METRICS_KEY, with_results_file

METRIC_CONVENTIONS = {
    "explained_variance": "conventional R^2 over all tokens: 1 - E||x - x_hat||^2 / (E||x||^2 - ||E x||^2) "
    "(SAELens after PR #665; not what SAEBench reports)",
    "explained_variance_saebench": "SAEBench 8042bb38's `explained_variance` (known bug, SAELens issue #659): "
    "1 - E||r||^2 / (E||x||^2 - m^2) with m the mean of x^2 over tokens and dims",
    "explained_variance_legacy": "per-token 1 - ||r||^2 / ||x - batch_mean(x)||^2, averaged (SAEBench paper numbers)",
    "mse": "SAEBench convention: per-token ||x - x_hat||^2 divided by the number of unmasked tokens in its batch, "
    "averaged (scales with 1/batch size)",
    "mse_per_token": "mean over tokens of ||x - x_hat||^2 (SAELens after PR #711)",
    "l0": "mean count of latents != 0 per token",
    "l1": "mean signed sum of latents per token (SAEBench; equals the L1 norm for non-negative codes)",
    "kl_div": "per-token KL(p_clean || p_patched) with log-softmax (SAEBench: log of softmax)",
    "ce_loss_score": "(CE_ablation - CE_sae) / (CE_ablation - CE_clean); ablation = hook output set to 0",
    "kl_div_score": "(KL_ablation - KL_sae) / KL_ablation",
}


class CoreSettings(EvalSettings):
    dataset: str = "bbc-news"  # the real path: "Skylion007/openwebtext"
    text_column: str = "text"
    split: str = "train"
    context_size: int = 128
    batch_size_prompts: int = 16
    n_eval_reconstruction_batches: Optional[int] = None  # None: scaled to the model, see auto_budget
    n_eval_sparsity_variance_batches: Optional[int] = None
    lm_batch_size: int = 4  # prompts per full forward; logits are [lm_batch_size, L, vocab] floats
    # True: pad/eos/bos positions keep the model's own activation in the spliced forward. Our
    # SAEs are trained without those positions (Gemma's BOS norm is ~10x the others), so
    # reconstructing them measures something the SAE never learned. SAEBench's flag; False
    # reproduces its command-line default.
    exclude_special_tokens_from_reconstruction: bool = True
    compute_featurewise_weight_based_metrics: bool = True
    seed: int = 42


def auto_budget(lm) -> tuple[int, int]:
    """(reconstruction, sparsity) batches: the paper's on a GPU, SAEBench's defaults for tiny CPU
    models, and a few batches for real models on CPU (a full forward there is ~100 tokens/s)."""
    if lm.device.type != "cpu":
        return 200, 2000
    n_params = sum(p.numel() for p in lm.model.parameters())
    return (10, 1) if n_params < 50_000_000 else (2, 8)


# ---- downstream loss (KL, CE) --------------------------------------------------------------------


def per_token_kl(clean_logits: Tensor, new_logits: Tensor) -> Tensor:
    log_p = F.log_softmax(clean_logits.float(), dim=-1)
    log_q = F.log_softmax(new_logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def per_token_ce(logits: Tensor, input_ids: Tensor) -> Tensor:
    """[B, L-1] next-token cross entropy."""
    b, length, vocab = logits.shape
    return F.cross_entropy(
        logits[:, :-1].float().reshape(-1, vocab), input_ids[:, 1:].reshape(-1).to(logits.device), reduction="none"
    ).view(b, length - 1)


def kl_ce_scores(kl_sae: float, kl_abl: float, ce_sae: float, ce_clean: float, ce_abl: float) -> dict[str, float]:
    return {
        "kl_div_score": (kl_abl - kl_sae) / kl_abl if kl_abl != 0 else math.nan,
        "ce_loss_score": (ce_abl - ce_sae) / (ce_abl - ce_clean) if ce_abl != ce_clean else math.nan,
    }


@torch.no_grad()
def downstream_metrics(ctx: EvalContext, saes: list, rows: Tensor, s: CoreSettings) -> list[dict[str, dict]]:
    """KL and CE with the SAE spliced in vs. zero ablation, for every SAE.

    Clean and zero-ablation per-token values do not depend on the SAE: they are computed once
    and cached; every SAE then costs one spliced forward per batch (plus the clean forward
    that all SAEs of this call share).
    """
    lm, hook = ctx.lm, ctx.hook
    ref_key = {"rows": _tensor_digest(rows)}
    reference = ctx.lookup("core_reference", ref_key)
    fresh: dict[str, list[Tensor]] = {"kl_abl": [], "ce_abl": [], "ce_clean": []}
    kl_sae: list[list[Tensor]] = [[] for _ in saes]
    ce_sae: list[list[Tensor]] = [[] for _ in saes]
    masks_kl, masks_ce = [], []
    device = lm.device
    for start in tqdm(range(0, rows.shape[0], s.lm_batch_size), desc="core: KL/CE", disable=not ctx.verbose):
        ids = rows[start : start + s.lm_batch_size].to(device)
        keep = not_special(lm, ids)
        masks_kl.append(keep.cpu())
        masks_ce.append(keep[:, :-1].cpu())
        splice_mask = keep if s.exclude_special_tokens_from_reconstruction else torch.ones_like(keep)
        clean = lm.logits(ids)
        if reference is None:
            zero = lm.run_with_hook(ids, None, hook, torch.zeros_like)
            fresh["kl_abl"].append(per_token_kl(clean, zero).cpu())
            fresh["ce_abl"].append(per_token_ce(zero, ids).cpu())
            fresh["ce_clean"].append(per_token_ce(clean, ids).cpu())
            del zero
        for i, sae in enumerate(saes):

            def splice(acts: Tensor, sae=sae) -> Tensor:
                _, x_hat = encode_decode(sae, acts)
                return torch.where(splice_mask[..., None], x_hat, acts)

            patched = lm.run_with_hook(ids, None, hook, splice)
            kl_sae[i].append(per_token_kl(clean, patched).cpu())
            ce_sae[i].append(per_token_ce(patched, ids).cpu())
            del patched
    if reference is None:
        reference = ctx.store("core_reference", ref_key, {k: torch.cat(v) for k, v in fresh.items()})
    mask_kl, mask_ce = torch.cat(masks_kl), torch.cat(masks_ce)
    kl_abl = reference["kl_abl"][mask_kl].mean().item()
    ce_abl = reference["ce_abl"][mask_ce].mean().item()
    ce_clean = reference["ce_clean"][mask_ce].mean().item()
    out = []
    for i in range(len(saes)):
        kl = torch.cat(kl_sae[i])[mask_kl].mean().item()
        ce = torch.cat(ce_sae[i])[mask_ce].mean().item()
        scores = kl_ce_scores(kl, kl_abl, ce, ce_clean, ce_abl)
        out.append(
            {
                "model_behavior_preservation": {
                    "kl_div_score": scores["kl_div_score"],
                    "kl_div_with_ablation": kl_abl,
                    "kl_div_with_sae": kl,
                },
                "model_performance_preservation": {
                    "ce_loss_score": scores["ce_loss_score"],
                    "ce_loss_with_ablation": ce_abl,
                    "ce_loss_with_sae": ce,
                    "ce_loss_without_sae": ce_clean,
                },
            }
        )
    return out


def _tensor_digest(t: Tensor) -> str:
    import hashlib

    return hashlib.sha256(t.contiguous().cpu().numpy().tobytes()).hexdigest()[:24]


# ---- sparsity and variance -----------------------------------------------------------------------


MAX_CACHED_ACT_BYTES = 2 * 2**30


class SparsityVarianceAccumulator:
    """Per-batch sums for one SAE; `add` takes one batch of prompts, `result` the metrics."""

    def __init__(self, d_sae: int):
        self.per_token: dict[str, list[Tensor]] = {
            k: [] for k in ("l2_norm_in", "l2_norm_out", "l2_ratio", "l0", "l1", "mse", "mse_per_token", "cossim",
                            "explained_variance_legacy")
        }
        self.rrb: list[Tensor] = []
        # SAEBench's (buggy) explained variance pieces, one entry per batch
        self.mean_sum_sq: list[Tensor] = []
        self.mean_sq_per_dim: list[Tensor] = []
        self.mean_resid: list[Tensor] = []
        # the conventional explained variance, float64 sums over all tokens
        self.sum_x: Optional[Tensor] = None
        self.sum_sq = 0.0
        self.sum_resid = 0.0
        self.n_tokens = 0
        self.fired_tokens = torch.zeros(d_sae, dtype=torch.float64)
        self.fired_prompts = torch.zeros(d_sae, dtype=torch.float64)

    def add(self, x_BLD: Tensor, x_hat_BLD: Tensor, codes_BLF: Tensor, keep_BL: Tensor) -> None:
        x, x_hat, codes = x_BLD[keep_BL].float(), x_hat_BLD[keep_BL].float(), codes_BLF[keep_BL].float()
        n = x.shape[0]
        if n == 0:
            return
        l2_in, l2_out = x.norm(dim=-1), x_hat.norm(dim=-1)
        pt = self.per_token
        pt["l2_norm_in"].append(l2_in)
        pt["l2_norm_out"].append(l2_out)
        pt["l2_ratio"].append(l2_out / torch.where(l2_in.abs() < 1e-4, torch.ones_like(l2_in), l2_in))
        self.rrb.append((l2_out.pow(2).mean() / (x * x_hat).sum(-1).mean()).reshape(1))
        pt["l0"].append((codes != 0).sum(-1).float())
        pt["l1"].append(codes.sum(-1))
        resid = (x - x_hat).pow(2).sum(-1)
        pt["mse"].append(resid / n)
        pt["mse_per_token"].append(resid)
        pt["explained_variance_legacy"].append(1 - resid / (x - x.mean(0)).pow(2).sum(-1))
        pt["cossim"].append(((x / x.norm(dim=-1, keepdim=True)) * (x_hat / x_hat.norm(dim=-1, keepdim=True))).sum(-1))
        self.mean_sum_sq.append(x.pow(2).sum(-1).mean().reshape(1))
        self.mean_sq_per_dim.append(x.pow(2).mean(0))
        self.mean_resid.append(resid.mean().reshape(1))
        x64 = x.double()
        self.sum_x = x64.sum(0) if self.sum_x is None else self.sum_x + x64.sum(0)
        self.sum_sq += x64.pow(2).sum().item()
        self.sum_resid += (x64 - x_hat.double()).pow(2).sum().item()
        self.n_tokens += n
        fired = (codes_BLF > 0) & keep_BL[..., None]  # bool: no float copies of the [B, L, F] codes
        self.fired_tokens += fired.sum(dim=(0, 1)).cpu()
        self.fired_prompts += fired.any(dim=1).sum(0).cpu()

    def result(self) -> tuple[dict[str, float], dict[str, Tensor]]:
        m = {k: torch.cat(v).mean().item() for k, v in self.per_token.items()}
        m["relative_reconstruction_bias"] = torch.cat(self.rrb).mean().item()
        # SAEBench: torch.cat collapses the per-dim means into one scalar before squaring
        total_saebench = torch.cat(self.mean_sum_sq).mean() - torch.cat(self.mean_sq_per_dim).mean() ** 2
        m["explained_variance_saebench"] = (1 - torch.cat(self.mean_resid).mean() / total_saebench).item()
        mean_x = self.sum_x / self.n_tokens
        total = self.sum_sq / self.n_tokens - mean_x.pow(2).sum().item()
        m["explained_variance"] = 1 - (self.sum_resid / self.n_tokens) / total if total > 0 else math.nan
        per_latent = {
            "feature_density": (self.fired_tokens / self.n_tokens).float(),
            "consistent_activation_heuristic": (self.fired_tokens / self.fired_prompts).float(),
        }
        return m, per_latent


@torch.no_grad()
def sparsity_variance_metrics(ctx: EvalContext, saes: list, rows: Tensor, s: CoreSettings):
    """Per SAE: (scalar metrics, per-latent density stats), batch by batch of batch_size_prompts."""
    accs = [SparsityVarianceAccumulator(int(sae.cfg.d_sae)) for sae in saes]
    batches = list(range(0, rows.shape[0], s.batch_size_prompts))
    # activations are cached (disk only) unless the budget is paper-sized
    cache = rows.numel() * ctx.lm.d_model * 4 <= MAX_CACHED_ACT_BYTES
    for start in tqdm(batches, desc="core: sparsity/variance", disable=not ctx.verbose):
        ids = rows[start : start + s.batch_size_prompts]
        compute = lambda ids=ids: ctx.hook_acts(ids, None, s.lm_batch_size)  # noqa: E731
        acts = ctx.cached("core_acts", {"rows": _tensor_digest(ids)}, compute, memory=False) if cache else compute()
        keep = not_special(ctx.lm, ids)
        for sae, acc in zip(saes, accs):
            codes, x_hat = encode_decode(sae, acts)
            acc.add(acts, x_hat, codes.cpu(), keep)
    return [acc.result() for acc in accs]


# ---- weights -------------------------------------------------------------------------------------


def max_cosine_to_others(vectors_FD: Tensor, chunk: int = 1024) -> Tensor:
    """For each row, the largest cosine similarity with any other row (no F x F matrix)."""
    unit = F.normalize(vectors_FD.float(), dim=-1)
    out = torch.empty(unit.shape[0])
    for start in range(0, unit.shape[0], chunk):
        sims = unit[start : start + chunk] @ unit.T
        idx = torch.arange(start, min(start + chunk, unit.shape[0]))
        sims[idx - start, idx] = -math.inf
        out[start : start + chunk] = sims.max(dim=1).values.cpu()
    return out


@torch.no_grad()
def weight_metrics(sae) -> dict[str, Tensor]:
    W_enc, W_dec = sae.W_enc.detach().float().cpu(), sae.W_dec.detach().float().cpu()
    b_enc = getattr(sae, "b_enc", None)
    return {
        "encoder_bias": b_enc.detach().float().cpu() if b_enc is not None else torch.zeros(W_enc.shape[1]),
        "encoder_norm": W_enc.norm(dim=0),
        "encoder_decoder_cosine_sim": F.cosine_similarity(W_enc.T, W_dec, dim=-1),
        "max_encoder_cosine_sim": max_cosine_to_others(W_enc.T),
        "max_decoder_cosine_sim": max_cosine_to_others(W_dec),
    }


def misc_metrics(per_latent: dict[str, Tensor]) -> dict[str, float]:
    density = per_latent["feature_density"].float()
    total = density.sum()
    out = {
        "frac_alive": (density > 0).float().mean().item(),
        "freq_over_1_percent": (density > 0.01).float().mean().item(),
        "freq_over_10_percent": (density > 0.1).float().mean().item(),
        "normalized_freq_over_1_percent": (density[density > 0.01].sum() / total).item() if total > 0 else 0.0,
        "normalized_freq_over_10_percent": (density[density > 0.1].sum() / total).item() if total > 0 else 0.0,
    }
    for name in ("max_encoder_cosine_sim", "max_decoder_cosine_sim"):
        if name in per_latent:
            out[f"average_{name}"] = per_latent[name].mean().item()
    return out


# ---- the eval ------------------------------------------------------------------------------------


# ---- final_info.json: the reference runs' core layout -----------------------------------------

# final_info name -> result file name, in reconstruction_quality. The reference runs' SAEBench
# (Jan-Feb 2025, with SAELens 5.3) wrote the per-token legacy formula as `explained_variance`;
# the result file keeps SAEBench 8042bb38's names, where `explained_variance` is the R^2.
FINAL_INFO_RECONSTRUCTION = {
    "explained_variance": "explained_variance_legacy",
    "explained_variance_legacy": "explained_variance_legacy",
    "explained_variance_conventional": "explained_variance",
    "explained_variance_saebench": "explained_variance_saebench",
    "mse": "mse",
    "mse_per_token": "mse_per_token",
    "cossim": "cossim",
}
FINAL_INFO_CONVENTIONS = {
    **{k: v for k, v in METRIC_CONVENTIONS.items() if not k.startswith("explained_variance")},
    "explained_variance": "the reference runs' explained_variance (SAEBench/SAELens 5.3, Feb 2025): "
    + METRIC_CONVENTIONS["explained_variance_legacy"],
    "explained_variance_legacy": METRIC_CONVENTIONS["explained_variance_legacy"],
    "explained_variance_conventional": METRIC_CONVENTIONS["explained_variance"]
    + "; `explained_variance` in the core result file",
    "explained_variance_saebench": METRIC_CONVENTIONS["explained_variance_saebench"],
}
# what core always computes, under the names of SAEBench's core flags
COMPUTED_FLAGS = ("compute_kl", "compute_ce_loss", "compute_l2_norms", "compute_sparsity_metrics",
                  "compute_variance_metrics", "compute_featurewise_density_statistics")


def final_info_metric_path(path: str) -> list[str]:
    """A dotted path of the result file's metrics -> the same metric's paths in final_info."""
    category, _, name = path.partition(".")
    if category != "reconstruction_quality":
        return [path]
    return [f"{category}.{k}" for k, v in FINAL_INFO_RECONSTRUCTION.items() if v == name] or [path]


def final_info_section(result: dict[str, Any], results_file: Optional[Path]) -> dict[str, Any]:
    """The core result as the reference runs wrote it (SAEBench's core output before its
    eval_result_metrics schema): unique_id, sae_set, sae_id, eval_cfg, metrics. Per-latent
    details stay in the result file; every explained-variance convention is kept, the
    reference's under its key (FINAL_INFO_CONVENTIONS says which is which)."""
    cfg = result.get("eval_config", {})
    metrics = {k: dict(v) for k, v in result["eval_result_metrics"].items()}
    if "reconstruction_quality" in metrics:
        file_rq = metrics["reconstruction_quality"]
        metrics["reconstruction_quality"] = {k: file_rq[v] for k, v in FINAL_INFO_RECONSTRUCTION.items() if v in file_rq}
    sae_set, sae_id = result.get("sae_lens_release_id"), result.get("sae_lens_id")
    section: dict[str, Any] = {
        "unique_id": f"{sae_set}_{sae_id}",
        "sae_set": sae_set,
        "sae_id": sae_id,
        "eval_cfg": {
            "model_name": cfg.get("model_name"),
            "llm_dtype": cfg.get("llm_dtype"),  # not recorded by featsep's runner: null
            **{k: cfg[k] for k in ("batch_size_prompts", "n_eval_reconstruction_batches",
                                   "n_eval_sparsity_variance_batches", "dataset", "context_size") if k in cfg},
            **{flag: True for flag in COMPUTED_FLAGS},
            **{k: v for k, v in cfg.items() if k != "model_name"},
        },
        "metrics": metrics,
        "metric_conventions": FINAL_INFO_CONVENTIONS,
        "eval_id": result.get("eval_id"),
        "datetime_epoch_millis": result.get("datetime_epoch_millis"),
        "sae_bench_commit_hash": result.get("sae_bench_commit_hash"),
    }
    unstructured = result.get("eval_result_unstructured")
    missing = unstructured.get(MISSING_METRICS_KEY) if isinstance(unstructured, dict) else None
    if missing:
        section[MISSING_METRICS_KEY] = [p for m in missing for p in final_info_metric_path(m)]
    return with_results_file(section, results_file)


@register_eval("core", eval_type_id="core", final_info_key="core evaluation results", settings=CoreSettings,
               final_info_section=final_info_section)
def run_core(saes: list, ctx: EvalContext, s: CoreSettings) -> list[EvalResult]:
    n_recon, n_sparse = auto_budget(ctx.lm)
    n_recon = s.n_eval_reconstruction_batches if s.n_eval_reconstruction_batches is not None else n_recon
    n_sparse = s.n_eval_sparsity_variance_batches if s.n_eval_sparsity_variance_batches is not None else n_sparse
    if n_recon < 1 or n_sparse < 1:
        raise ValueError("core needs n_eval_reconstruction_batches >= 1 and n_eval_sparsity_variance_batches >= 1")
    s = s.model_copy(update={"n_eval_reconstruction_batches": n_recon, "n_eval_sparsity_variance_batches": n_sparse})
    rows = token_rows(ctx, s, (n_recon + n_sparse) * s.batch_size_prompts)
    split = n_recon * s.batch_size_prompts
    downstream = downstream_metrics(ctx, saes, rows[:split], s)
    sparsity = sparsity_variance_metrics(ctx, saes, rows[split:], s)
    results = []
    for sae, down, (sv, per_latent) in zip(saes, downstream, sparsity):
        if s.compute_featurewise_weight_based_metrics:
            per_latent = {**per_latent, **weight_metrics(sae)}
        metrics = {
            **down,
            "reconstruction_quality": {
                k: sv[k]
                for k in ("explained_variance", "explained_variance_saebench", "explained_variance_legacy", "mse",
                          "mse_per_token", "cossim")
            },
            "shrinkage": {k: sv[k] for k in ("l2_norm_in", "l2_norm_out", "l2_ratio", "relative_reconstruction_bias")},
            "sparsity": {"l0": sv["l0"], "l1": sv["l1"]},
            "token_stats": {
                "total_tokens_eval_reconstruction": split * s.context_size,
                "total_tokens_eval_sparsity_variance": n_sparse * s.batch_size_prompts * s.context_size,
            },
            "misc_metrics": misc_metrics(per_latent),
        }
        lists = {k: v.tolist() for k, v in per_latent.items()}
        details = [{"index": i, **{k: v[i] for k, v in lists.items()}} for i in range(int(sae.cfg.d_sae))]
        results.append(EvalResult(metrics, details, {"metric_conventions": METRIC_CONVENTIONS}, s.model_dump()))
    return results
