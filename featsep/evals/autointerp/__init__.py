"""Autointerp (SAEBench evals/autointerp): can a judge explain a latent and then predict from
the explanation alone where it fires?

Per SAE: token rows of `dataset` (SAEBench: monology/pile-uncopyrighted, 2M tokens of 128-token
rows; CPU default: bbc-news, fewer tokens), latent sparsity over non-special tokens; alive
latents = fired on more than dead_latent_threshold tokens (SAEBench scales this to 2M tokens);
n_latents of them sampled with the seed. Per latent, windows of +-buffer tokens:
  top      n_top_ex highest activations, non-overlapping (SAEBench's get_k_largest_indices);
  weighted n_iw_sampled_ex sampled with probability ~ act^2 among activations below the weakest
           top example (disjoint from the top set);
  random   n_random_ex_for_scoring random windows.
act_threshold = act_threshold_frac x the largest top activation; a window is "active" when any
token exceeds it. Generation sees n_top_ex_for_generation top + n_iw_sampled_ex_for_generation
weighted windows (active tokens marked); scoring shows the other top + weighted windows and the
random ones, shuffled, and the judge says which fire. Score = fraction classified correctly;
autointerp_score = mean over latents, autointerp_std_dev their sample standard deviation.
Judge: featsep.evals.autointerp.judges (an OpenAI-compatible server, or the offline lexical judge).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from featsep.evals.common.context import EvalContext, encode, not_special
from featsep.evals.autointerp.judges import Example, Judge, LexicalJudge, make_judge, score_detection
from featsep.evals.registry import EvalResult, EvalSettings, register_eval


class AutointerpSettings(EvalSettings):
    dataset: str = "bbc-news"  # SAEBench: "monology/pile-uncopyrighted"
    text_column: str = "text"
    split: str = "train"
    context_size: int = 128
    total_tokens: Optional[int] = None  # None: 2,000,000 on a GPU, 32,768 on CPU
    n_latents: Optional[int] = None  # None: 1000 on a GPU, 100 on CPU
    latents: Optional[list[int]] = None  # explicit latents instead of a sample
    dead_latent_threshold: float = 15  # alive: density x 2M tokens > this (SAEBench's rule, scaled)
    buffer: int = 10
    no_overlap: bool = True
    act_threshold_frac: float = 0.01
    n_top_ex: int = 12
    n_top_ex_for_generation: int = 10
    n_iw_sampled_ex: int = 7
    n_iw_sampled_ex_for_generation: int = 5
    n_random_ex_for_scoring: int = 10
    judge: Literal["lexical", "openai"] = "lexical"
    judge_base_url: str = "https://api.openai.com/v1"
    judge_model: str = "gpt-4o-mini"
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_workers: int = 4  # concurrent judge calls (HTTP judge)
    llm_batch_size: int = 8
    seed: int = 42


SAEBENCH_TOTAL_TOKENS = 2_000_000


def _resolved(ctx: EvalContext, s: AutointerpSettings) -> AutointerpSettings:
    if s.n_top_ex_for_generation >= s.n_top_ex or s.n_iw_sampled_ex_for_generation >= s.n_iw_sampled_ex:
        raise ValueError("autointerp: the *_for_generation counts must leave examples for scoring (be < n_top_ex / n_iw_sampled_ex)")
    return s.model_copy(update={
        "total_tokens": ctx.budget(s.total_tokens or None, gpu=SAEBENCH_TOTAL_TOKENS, cpu=1 << 15),
        "n_latents": ctx.budget(s.n_latents or None, gpu=1000, cpu=100),
    })


# ---- window selection (SAEBench's indexing utils, on [rows, L] activations) ----------------------


def k_largest_windows(acts: Tensor, k: int, buffer: int, no_overlap: bool) -> Tensor:
    """[<=k, 2] (row, position) of the largest activations at least `buffer` from both row ends;
    with no_overlap, no two within `buffer` of each other in the same row."""
    inner = acts[:, buffer : acts.shape[1] - buffer]
    order = inner.flatten().argsort(descending=True, stable=True)
    rows, cols = order // inner.shape[1], order % inner.shape[1] + buffer
    if not no_overlap:
        return torch.stack([rows, cols], 1)[:k]
    chosen, seen = [], set()
    for r, c in zip(rows.tolist(), cols.tolist()):
        if (r, c) in seen:
            continue
        chosen.append((r, c))
        seen.update((r, c + o) for o in range(-buffer, buffer + 1))
        if len(chosen) == k:
            break
    return torch.tensor(chosen, dtype=torch.long).view(-1, 2)


def importance_windows(acts: Tensor, k: int, buffer: int, gen: torch.Generator) -> Tensor:
    """[k, 2] positions sampled without replacement with probability ~ act^2."""
    inner = acts[:, buffer : acts.shape[1] - buffer].double().pow(2)
    probs = inner.flatten() / inner.sum()
    k = min(k, int((probs > 0).sum()))
    idx = torch.multinomial(probs, k, replacement=False, generator=gen)
    return torch.stack([idx // inner.shape[1], idx % inner.shape[1] + buffer], 1)


def gather_windows(x: Tensor, positions: Tensor, buffer: int) -> Tensor:
    """[k, 2 buffer + 1] values of x around each (row, position)."""
    offsets = torch.arange(-buffer, buffer + 1)
    return x[positions[:, :1], positions[:, 1:] + offsets]


# ---- model-side data -----------------------------------------------------------------------------


def token_data(ctx: EvalContext, s: AutointerpSettings) -> Tensor:
    from featsep.evals.common.tokens import token_rows

    n_rows = math.ceil(s.total_tokens / s.context_size)
    return token_rows(ctx, s, n_rows)


KEEP_HOOK_ACTS_BYTES = 1 << 29  # hook activations up to this size are kept for the second pass


@torch.no_grad()
def latent_activations(ctx: EvalContext, saes: list, rows: Tensor, s: AutointerpSettings, latents: Optional[list[Tensor]],
                       kept: Optional[list] = None) -> list[Tensor]:
    """latents None: per SAE the count of non-special tokens each latent fires on [d_sae];
    else per SAE the activations [rows, L, len(latents)] of those latents (0 at special tokens).
    One model forward per batch serves every SAE; `kept` (a list) stores the batches' hook
    activations on the first pass so the second pass needs no model forward."""
    out = [torch.zeros(int(sae.cfg.d_sae), dtype=torch.float64) for sae in saes] if latents is None else \
        [torch.zeros(rows.shape[0], rows.shape[1], len(lat)) for lat in latents]
    for b, start in enumerate(tqdm(range(0, rows.shape[0], s.llm_batch_size), desc="autointerp: activations", disable=not ctx.verbose)):
        ids = rows[start : start + s.llm_batch_size]
        if kept is not None and b < len(kept):
            acts = kept[b]
        else:
            acts = ctx.lm.forward_to_hook(ids, None, ctx.hook)
            if kept is not None:
                kept.append(acts)
        keep = not_special(ctx.lm, ids).to(acts.device)
        for i, sae in enumerate(saes):
            codes = encode(sae, acts).float()
            codes = codes * keep[..., None]
            if latents is None:
                out[i] += (codes > 0).sum((0, 1)).double().cpu()
            else:
                out[i][start : start + ids.shape[0]] = codes[..., latents[i].to(codes.device)].cpu()
    return out


class TokenStrings:
    """Token id -> display string, decoded once per id."""

    def __init__(self, tokenizer):
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, ids: list[int]) -> list[str]:
        missing = [i for i in set(ids) if i not in self.cache]
        if missing:
            for i, text in zip(missing, self.tokenizer.batch_decode([[i] for i in missing])):
                self.cache[i] = text
        return [self.cache[i] for i in ids]


def latent_examples(acts: Tensor, rows: Tensor, s: AutointerpSettings, gen: torch.Generator, strings: TokenStrings):
    """(generation examples, scoring examples) of one latent, or None when it has too little data."""
    b = s.buffer
    top = k_largest_windows(acts, s.n_top_ex, b, s.no_overlap)
    if top.shape[0] < s.n_top_ex:
        return None
    top_acts = gather_windows(acts, top, b)
    act_threshold = s.act_threshold_frac * float(top_acts.max())
    weakest_top = float(top_acts[:, b].min())
    below = torch.where(acts >= weakest_top, torch.zeros_like(acts), acts)
    if float(below[:, b : acts.shape[1] - b].max()) < 1e-6:
        return None
    iw = importance_windows(below, s.n_iw_sampled_ex, b, gen)
    if iw.shape[0] < s.n_iw_sampled_ex:
        return None
    rand = torch.stack([
        torch.randint(0, rows.shape[0], (s.n_random_ex_for_scoring,), generator=gen),
        torch.randint(b, rows.shape[1] - b, (s.n_random_ex_for_scoring,), generator=gen),
    ], 1)

    def make(positions: Tensor, values: Optional[Tensor]) -> list[Example]:
        toks = gather_windows(rows, positions, b)
        vals = values if values is not None else gather_windows(acts, positions, b)
        return [Example(strings(t.tolist()), v.tolist(), act_threshold) for t, v in zip(toks, vals)]

    top_split, iw_split = torch.randperm(s.n_top_ex, generator=gen), torch.randperm(s.n_iw_sampled_ex, generator=gen)
    g_top, s_top = top_split[: s.n_top_ex_for_generation], top_split[s.n_top_ex_for_generation :]
    g_iw, s_iw = iw_split[: s.n_iw_sampled_ex_for_generation], iw_split[s.n_iw_sampled_ex_for_generation :]
    generation = make(top[g_top], top_acts[g_top]) + make(iw[g_iw], None)
    generation.sort(key=lambda ex: max(ex.acts), reverse=True)
    scoring = make(top[s_top], top_acts[s_top]) + make(iw[s_iw], None) + make(rand, None)
    order = torch.randperm(len(scoring), generator=gen).tolist()
    return generation, [scoring[i] for i in order]


def interpret_latent(judge: Judge, generation: list[Example], scoring: list[Example]) -> dict:
    explanation = judge.explain(generation)
    predictions = judge.detect(explanation, scoring)
    return {
        "explanation": explanation,
        "predictions": [i + 1 for i, p in enumerate(predictions) if p],
        "correct seqs": [i + 1 for i, ex in enumerate(scoring) if ex.is_active],
        "score": score_detection(predictions, scoring),
    }


def background_counts(rows: Tensor, keep: Tensor, strings: TokenStrings) -> Counter:
    """Token string -> count over the kept positions (ids that decode alike are added up)."""
    counts = Counter(rows[keep].tolist())
    out: Counter = Counter()
    for text, c in zip(strings(list(counts)), counts.values()):
        out[text] += c
    return out


@register_eval("autointerp", eval_type_id="autointerp", final_info_key="autointerp evaluation results", settings=AutointerpSettings)
def run_autointerp(saes: list, ctx: EvalContext, s: AutointerpSettings) -> list[EvalResult]:
    s = _resolved(ctx, s)
    judge = make_judge(s.judge, s.judge_base_url, s.judge_model, s.judge_api_key_env)
    rows = token_data(ctx, s)
    if rows.shape[1] <= 2 * s.buffer:
        raise ValueError(f"autointerp.context_size={s.context_size} leaves no room for +-{s.buffer}-token windows; raise it")
    strings = TokenStrings(ctx.lm.tokenizer)
    keep = not_special(ctx.lm, rows)
    if isinstance(judge, LexicalJudge):
        judge.set_background(background_counts(rows, keep, strings))
    n_tokens = int(keep.sum())
    small = rows.numel() * ctx.lm.d_model * 4 <= KEEP_HOOK_ACTS_BYTES
    kept: Optional[list] = [] if small else None
    counts = latent_activations(ctx, saes, rows, s, None, kept)
    rng = random.Random(s.seed)
    chosen = []
    for c in counts:
        if s.latents is not None:
            chosen.append(torch.tensor(s.latents, dtype=torch.long))
            continue
        alive = torch.nonzero(c / n_tokens * SAEBENCH_TOTAL_TOKENS > s.dead_latent_threshold).flatten().tolist()
        chosen.append(torch.tensor(sorted(rng.sample(alive, min(s.n_latents, len(alive)))), dtype=torch.long))
    acts = latent_activations(ctx, saes, rows, s, chosen, kept)
    del kept
    results = []
    for i, _sae in enumerate(saes):
        gen = torch.Generator().manual_seed(s.seed)
        jobs = {}
        for j, latent in enumerate(chosen[i].tolist()):
            examples = latent_examples(acts[i][..., j], rows, s, gen, strings)
            if examples is not None:
                jobs[latent] = examples
        with ThreadPoolExecutor(max_workers=max(1, s.judge_workers if s.judge == "openai" else 1)) as pool:
            futures = {lat: pool.submit(interpret_latent, judge, *ex) for lat, ex in jobs.items()}
            per_latent = {lat: f.result() for lat, f in tqdm(futures.items(), desc="autointerp: judge", disable=not ctx.verbose)}
        scores = torch.tensor([r["score"] for r in per_latent.values()], dtype=torch.float64)
        metrics = {"autointerp": {
            "autointerp_score": float(scores.mean()) if scores.numel() else math.nan,
            "autointerp_std_dev": float(scores.std()) if scores.numel() > 1 else math.nan,
        }}
        unstructured = {str(lat): {"latent": lat, **r} for lat, r in sorted(per_latent.items())}
        unstructured["summary"] = {"n_latents_sampled": int(chosen[i].numel()), "n_latents_scored": len(per_latent),
                                   "judge": s.judge if s.judge == "lexical" else f"{s.judge}:{s.judge_model}", "n_tokens": n_tokens}
        results.append(EvalResult(metrics, [], unstructured, s.model_dump()))
    return results
