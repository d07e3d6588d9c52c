"""Competition diagnostics (our own schema): how much a trained SAE's latents co-activate.

The quantities of docs/methods.md, measured on activations the SAE did not train on:

  per-latent competition  batches of `batch_size` tokens, codes F [B, n] (nonnegative),
                          N = F / (column L2 norm over the batch + 1e-6), c = N^T N;
                          competition_i = sum_{j != i} c_ij ("specified") or rowsum_i(c) - 1
                          ("reference"), averaged over batches. Computed with the row-sum
                          identity rowsum(c) = N^T (N 1): O(B n), never n x n.
  share over tau          fraction of latents whose competition exceeds tau (what the momentum
                          penalty would weight 2x).
  top competing pairs     pairs (i < j) with the largest batch-mean c_ij, with their decoder
                          cosine (competing latents writing the same direction are redundant).
  co-activation stability token rows split in two halves (disjoint documents); per half the
                          co-activation rate r_ij = #tokens where both fire / #tokens; over pairs
                          co-active in either half: Pearson correlation of r_first and r_second,
                          mean |r_first - r_second| and mean |r_first - r_second| / max(r_first,
                          r_second) (the temporal method's deviation factor).

Metrics go to final_info under "competition evaluation results"; per-latent values (competition,
density, strongest partner) are the eval_result_details, the histogram and top pairs are in
eval_result_unstructured so the report can draw them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal, Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from featsep.evals.activations import EvalContext, encode, not_special
from featsep.evals.registry import EvalResult, EvalSettings, register_eval

NORM_EPS = 1e-6  # the reference's column-norm epsilon (penalties.reference.MOMENTUM_EPS)


class CompetitionSettings(EvalSettings):
    dataset: str = "bbc-news"  # text for the held-out activations (any featsep.data.text_source spec)
    text_column: str = "text"
    split: str = "train"
    context_size: int = 128
    n_tokens: Optional[int] = None  # None: 1,048,576 on a GPU, 32,768 on CPU
    batch_size: int = 2048  # tokens per competition batch (the reference's SAE batch)
    llm_batch_size: int = 8
    mode: Literal["specified", "reference"] = "specified"
    tau: float = 0.4
    n_top_pairs: int = 50
    histogram_bins: int = 50
    seed: int = 7  # differs from training's 42 so the token order (and batches) are new


# ---- the arithmetic, on codes -------------------------------------------------------------------


def batch_competition(codes: Tensor, mode: str = "specified") -> Tensor:
    """[n] competition of one batch of nonnegative codes [B, n] via rowsum(c) = N^T (N 1)."""
    if bool((codes < 0).any()):
        raise ValueError("competition needs nonnegative codes (ReLU/TopK/JumpReLU SAEs); these codes have negatives")
    N = codes / (codes.norm(dim=0) + NORM_EPS)
    rowsum = N.T @ N.sum(1)
    return rowsum - 1 if mode == "reference" else rowsum - (N * N).sum(0)


def pair_sums(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Over rows of x [B, n] (sparse in practice): for every pair i < j non-zero together in some
    row, (sorted keys i * n + j, sum_b x_bi x_bj, number of rows where both are non-zero).
    Uses the penalties' chunked pair enumeration (O(B k^2) time, memory bounded per chunk)."""
    from featsep.penalties.base import to_sparse_codes
    from featsep.penalties.pairs import coactive_pairs

    pairs = coactive_pairs(to_sparse_codes(x.detach(), None, x.shape[1]))
    return pairs.keys.long(), pairs.gram * x.shape[0], pairs.counts.long()


def merge_pairs(keys: list[Tensor], sums: list[Tensor], counts: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Union of several (keys, sums, counts) with equal keys added."""
    if len(keys) == 1:
        return keys[0], sums[0], counts[0]
    uniq, inverse = torch.unique(torch.cat(keys), sorted=True, return_inverse=True)
    s = torch.cat(sums)
    return (
        uniq,
        s.new_zeros(uniq.numel()).index_add_(0, inverse, s),
        torch.zeros(uniq.numel(), dtype=torch.long).index_add_(0, inverse, torch.cat(counts)),
    )


def _lookup(sorted_keys: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
    if sorted_keys.numel() == 0:
        return torch.zeros_like(query), torch.zeros_like(query, dtype=torch.bool)
    pos = torch.searchsorted(sorted_keys, query).clamp_(max=sorted_keys.numel() - 1)
    return pos, sorted_keys[pos] == query


def stability(keys_a: Tensor, rate_a: Tensor, keys_b: Tensor, rate_b: Tensor) -> dict[str, float]:
    """Compare co-activation rates of two halves over pairs co-active in either (absent = rate 0)."""
    union = torch.unique(torch.cat([keys_a, keys_b]), sorted=True)
    ra, rb = torch.zeros(union.numel(), dtype=torch.float64), torch.zeros(union.numel(), dtype=torch.float64)
    pos, found = _lookup(union, keys_a)
    ra[pos[found]] = rate_a.double()[found]
    pos, found = _lookup(union, keys_b)
    rb[pos[found]] = rate_b.double()[found]
    n_pairs = union.numel()
    if n_pairs < 2:
        corr = math.nan
    else:
        da, db = ra - ra.mean(), rb - rb.mean()
        denom = (da.norm() * db.norm()).item()
        corr = float((da * db).sum().item() / denom) if denom > 0 else math.nan
    diff = (ra - rb).abs()
    both = int(((ra > 0) & (rb > 0)).sum())
    return {
        "coactivation_rate_correlation": corr,
        "mean_abs_rate_diff": float(diff.mean()) if n_pairs else math.nan,
        "mean_relative_rate_diff": float((diff / torch.maximum(ra, rb)).mean()) if n_pairs else math.nan,
        "n_pairs_compared": n_pairs,
        "pair_set_jaccard": both / n_pairs if n_pairs else math.nan,
    }


@dataclass
class CompetitionStats:
    competition: Tensor  # [n] batch-mean competition
    density: Tensor  # [n] fraction of tokens where the latent fires
    pair_keys: Tensor  # pairs with non-zero batch-mean c
    pair_c: Tensor  # batch-mean c_ij of those pairs
    halves: list[tuple[Tensor, Tensor]]  # per half: (pair keys, co-activation rate)
    n_tokens: int
    n_batches: int
    l0: float


def competition_stats(batches: Iterable[tuple[Tensor, int]], n: int, mode: str = "specified") -> CompetitionStats:
    """All statistics from (codes [B_b, n], half 0 or 1) batches, consumed one at a time (so
    dense codes of many tokens never sit in memory together)."""
    comp = torch.zeros(n, dtype=torch.float64)
    fires = torch.zeros(n, dtype=torch.float64)
    c_parts: tuple[list, list, list] = ([], [], [])
    half_parts: list[tuple[list, list, list]] = [([], [], []), ([], [], [])]
    half_tokens = [0, 0]
    n_tokens, n_batches, l0_sum = 0, 0, 0.0
    for codes, half in batches:
        codes = codes.float()
        comp += batch_competition(codes, mode).double()
        active = codes != 0
        fires += active.sum(0).double()
        l0_sum += float(active.sum())
        n_tokens += codes.shape[0]
        n_batches += 1
        N = codes / (codes.norm(dim=0) + NORM_EPS)
        for part, value in zip(c_parts, pair_sums(N)):
            part.append(value)
        keys, _, counts = pair_sums(active.float())
        half_parts[half][0].append(keys)
        half_parts[half][1].append(counts.float())
        half_parts[half][2].append(counts)
        half_tokens[half] += codes.shape[0]
    if n_batches == 0:
        raise ValueError("competition: no token batches; use more tokens (competition.n_tokens) or a smaller batch_size")
    if min(half_tokens) == 0:
        raise ValueError("competition: one half of the data has no batch; raise competition.n_tokens or lower batch_size")
    pair_keys, pair_c, _ = merge_pairs(*c_parts)
    halves = []
    for h in range(2):
        keys, _, counts = merge_pairs(*half_parts[h])
        halves.append((keys, counts.double() / half_tokens[h]))
    return CompetitionStats(
        comp / n_batches, fires / n_tokens, pair_keys, pair_c.double() / n_batches, halves, n_tokens, n_batches, l0_sum / n_tokens
    )


def decoder_cosines(W_dec: Tensor, first: Tensor, second: Tensor) -> Tensor:
    W = W_dec.detach().float().cpu()
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (W[first] * W[second]).sum(1)


def strongest_partners(n: int, keys: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Per latent: the partner j with the largest c_ij (-1 if none) and that c."""
    best = torch.full((n,), -1.0, dtype=torch.float64)
    partner = torch.full((n,), -1, dtype=torch.long)
    if keys.numel() == 0:
        return partner, best.clamp_min(0)
    i, j = keys // n, keys % n
    for a in (i, j):
        best.scatter_reduce_(0, a, c.double(), reduce="amax", include_self=True)
    for a, b in ((i, j), (j, i)):
        hit = c.double() == best[a]
        partner[a[hit]] = b[hit]
    return partner, best.clamp_min(0)


def summarise(stats: CompetitionStats, W_dec: Tensor, s: CompetitionSettings) -> EvalResult:
    n = stats.competition.numel()
    comp = stats.competition.float()
    alive = stats.density > 0
    q = torch.quantile(comp, torch.tensor([0.5, 0.9, 0.99])).tolist()
    alive_comp = comp[alive]
    top = torch.topk(stats.pair_c, min(s.n_top_pairs, stats.pair_c.numel()))
    first, second = stats.pair_keys[top.indices] // n, stats.pair_keys[top.indices] % n
    cos = decoder_cosines(W_dec, first, second)
    rate_first = _rates_at(stats.halves, stats.pair_keys[top.indices])
    top_pairs = [
        {"latent_a": int(a), "latent_b": int(b), "competition": float(c), "decoder_cosine": float(k), **r}
        for a, b, c, k, r in zip(first, second, top.values, cos, rate_first)
    ]
    all_first, all_second = stats.pair_keys // n, stats.pair_keys % n
    partner, partner_c = strongest_partners(n, stats.pair_keys, stats.pair_c)
    has_partner = partner >= 0
    partner_cos = torch.zeros(n)
    partner_cos[has_partner] = decoder_cosines(W_dec, torch.arange(n)[has_partner], partner[has_partner])
    hist_hi = float(comp.max()) if float(comp.max()) > 0 else 1.0
    counts = torch.histc(comp, bins=s.histogram_bins, min=0.0, max=hist_hi)
    edges = torch.linspace(0.0, hist_hi, s.histogram_bins + 1)
    metrics = {
        "competition": {
            "mean": float(comp.mean()),
            "mean_alive": float(alive_comp.mean()) if alive_comp.numel() else math.nan,
            "median": q[0],
            "p90": q[1],
            "p99": q[2],
            "max": float(comp.max()),
            "share_over_tau": float((comp > s.tau).float().mean()),
            "share_alive_over_tau": float((alive_comp > s.tau).float().mean()) if alive_comp.numel() else math.nan,
        },
        "pairs": {
            "n_coactive_pairs": int(stats.pair_keys.numel()),
            "mean_pair_competition": float(stats.pair_c.mean()) if stats.pair_c.numel() else math.nan,
            "top_pairs_mean_competition": float(top.values.mean()) if top.values.numel() else math.nan,
            "top_pairs_mean_decoder_cosine": float(cos.mean()) if cos.numel() else math.nan,
            "coactive_pairs_mean_abs_decoder_cosine": float(decoder_cosines(W_dec, all_first, all_second).abs().mean())
            if stats.pair_keys.numel()
            else math.nan,
        },
        "stability": stability(*stats.halves[0], *stats.halves[1]),
        "sparsity": {"l0": stats.l0, "frac_alive": float(alive.float().mean()), "n_tokens": stats.n_tokens, "n_batches": stats.n_batches},
    }
    details = [
        {
            "index": i,
            "competition": float(comp[i]),
            "density": float(stats.density[i]),
            "strongest_partner": int(partner[i]),
            "strongest_partner_competition": float(partner_c[i]),
            "strongest_partner_decoder_cosine": float(partner_cos[i]),
        }
        for i in range(n)
    ]
    unstructured = {
        "competition_histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        "top_pairs": top_pairs,
        "definitions": {
            "competition": f"mode={s.mode}: batch-mean of sum_j c_ij with c = N^T N, N = codes / (column norm + 1e-6) "
            f"over batches of {s.batch_size} tokens" + (" (j != i)" if s.mode == "specified" else " (rowsum - 1)"),
            "share_over_tau": f"fraction of latents with competition > tau = {s.tau}",
            "stability": "token rows split in two halves; co-activation rate per pair per half; pairs co-active in either",
        },
    }
    return EvalResult(metrics, details, unstructured, s.model_dump())


def _rates_at(halves: list[tuple[Tensor, Tensor]], keys: Tensor) -> list[dict[str, float]]:
    out = [dict() for _ in range(keys.numel())]
    for h, (hk, hr) in enumerate(halves):
        pos, found = _lookup(hk, keys)
        rates = torch.where(found, hr[pos] if hr.numel() else torch.zeros(keys.numel(), dtype=torch.float64), 0.0)
        for d, r in zip(out, rates.tolist()):
            d[f"coactivation_rate_half{h + 1}"] = r
    return out


# ---- activations and the eval --------------------------------------------------------------------


def _n_tokens(ctx: EvalContext, s: CompetitionSettings) -> int:
    if s.n_tokens is not None:
        return s.n_tokens
    return 1 << 20 if ctx.lm.device.type != "cpu" else 1 << 15


@torch.no_grad()
def held_out_activations(ctx: EvalContext, s: CompetitionSettings, n_tokens: int) -> dict[str, Tensor]:
    """{"first", "second"}: activations [T, d] at non-special positions of disjoint halves of the
    token rows, each shuffled with the seed (cached: every SAE of the group reuses them)."""
    from featsep.evals.core import token_rows

    n_rows = math.ceil(n_tokens / max(s.context_size - 1, 1)) + 1

    def compute():
        rows = token_rows(ctx, s, n_rows)
        halves = {}
        gen = torch.Generator().manual_seed(s.seed)
        for name, part in (("first", rows[: n_rows // 2]), ("second", rows[n_rows // 2 :])):
            acts = []
            for start in tqdm(range(0, part.shape[0], s.llm_batch_size), desc=f"competition: {name} half", disable=not ctx.verbose):
                ids = part[start : start + s.llm_batch_size]
                a = ctx.lm.forward_to_hook(ids, None, ctx.hook).float().cpu()
                acts.append(a[not_special(ctx.lm, ids)])
            flat = torch.cat(acts)[: n_tokens // 2]
            halves[name] = flat[torch.randperm(flat.shape[0], generator=gen)]
        return halves

    key = {k: getattr(s, k) for k in ("dataset", "text_column", "split", "context_size", "seed")}
    return ctx.cached("competition_acts", {**key, "n_tokens": n_tokens}, compute)


@torch.no_grad()
def code_batches(sae, acts: dict[str, Tensor], batch_size: int) -> Iterator[tuple[Tensor, int]]:
    """(codes, half) in batches of batch_size tokens; a short last batch of each half is dropped."""
    for half, name in enumerate(("first", "second")):
        x = acts[name]
        for start in range(0, x.shape[0] - batch_size + 1, batch_size):
            yield encode(sae, x[start : start + batch_size]).float().cpu(), half


@register_eval(
    "competition",
    eval_type_id="competition",
    final_info_key="competition evaluation results",
    settings=CompetitionSettings,
)
def run_competition(saes: list, ctx: EvalContext, s: CompetitionSettings) -> list[EvalResult]:
    n_tokens = _n_tokens(ctx, s)
    if n_tokens < 4 * s.batch_size:
        raise ValueError(
            f"competition.n_tokens={n_tokens} gives fewer than 2 batches of {s.batch_size} tokens per half; "
            "raise n_tokens or lower batch_size"
        )
    s = s.model_copy(update={"n_tokens": n_tokens})
    acts = held_out_activations(ctx, s, n_tokens)
    results = []
    for sae in saes:
        stats = competition_stats(code_batches(sae, acts, s.batch_size), int(sae.cfg.d_sae), s.mode)
        results.append(summarise(stats, sae.W_dec, s))
    return results
