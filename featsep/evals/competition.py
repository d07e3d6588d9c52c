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

from featsep.evals.common.context import EvalContext, encode, not_special
from featsep.evals.registry import EvalResult, EvalSettings, register_eval
from featsep.codes import Codes
from featsep.penalties.pairs import coactive_pairs, gather_or, merge_add, merge_sorted, split_keys

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


def column_normalized(codes: Tensor) -> Tensor:
    """N = codes / (column L2 norm + eps) of nonnegative codes [B, n]."""
    if bool((codes < 0).any()):
        raise ValueError("competition needs nonnegative codes (ReLU/TopK/JumpReLU SAEs); these codes have negatives")
    return codes / (codes.norm(dim=0) + NORM_EPS)


def _competition(N: Tensor, mode: str) -> Tensor:
    rowsum = N.T @ N.sum(1)
    return rowsum - 1 if mode == "reference" else rowsum - (N * N).sum(0)


def batch_competition(codes: Tensor, mode: str = "specified") -> Tensor:
    """[n] competition of one batch of nonnegative codes [B, n] via rowsum(c) = N^T (N 1)."""
    return _competition(column_normalized(codes), mode)


def pair_sums(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Over rows of x [B, n] (sparse in practice): for every pair i < j non-zero together in some
    row, (sorted keys i * n + j, sum_b x_bi x_bj, number of rows where both are non-zero).
    Uses the penalties' chunked pair enumeration (O(B k^2) time, memory bounded per chunk)."""
    pairs = coactive_pairs(Codes.from_dense(x.detach()))
    return pairs.keys.long(), pairs.gram * x.shape[0], pairs.counts.long()


def stability(keys_a: Tensor, rate_a: Tensor, keys_b: Tensor, rate_b: Tensor) -> dict[str, float]:
    """Compare co-activation rates of two halves (sorted unique pair keys, as competition_stats
    gives them) over pairs co-active in either (absent = rate 0)."""
    union, at_a, at_b = merge_sorted(keys_a, keys_b)
    ra, rb = torch.zeros(union.numel(), dtype=torch.float64), torch.zeros(union.numel(), dtype=torch.float64)
    ra[at_a] = rate_a.double()
    rb[at_b] = rate_b.double()
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
    c_keys, c_sums = [], []
    half_keys: list[list[Tensor]] = [[], []]
    half_counts: list[list[Tensor]] = [[], []]
    half_tokens = [0, 0]
    n_tokens, n_batches, l0_sum = 0, 0, 0.0
    for codes, half in batches:
        codes = codes.float()
        N = column_normalized(codes)
        comp += _competition(N, mode).double()
        active = codes != 0
        fires += active.sum(0).double()
        l0_sum += float(active.sum())
        n_tokens += codes.shape[0]
        n_batches += 1
        # N is non-zero exactly where the codes are: one pair enumeration gives c's sums and the
        # co-activation counts
        keys, sums, counts = pair_sums(N)
        c_keys.append(keys)
        c_sums.append(sums)
        half_keys[half].append(keys)
        half_counts[half].append(counts)
        half_tokens[half] += codes.shape[0]
    if n_batches == 0:
        raise ValueError("competition: no token batches; use more tokens (competition.n_tokens) or a smaller batch_size")
    if min(half_tokens) == 0:
        raise ValueError("competition: one half of the data has no batch; raise competition.n_tokens or lower batch_size")
    pair_keys, pair_c = merge_add(torch.cat(c_keys), torch.cat(c_sums))
    halves = []
    for h in range(2):
        keys, counts = merge_add(torch.cat(half_keys[h]), torch.cat(half_counts[h]))
        halves.append((keys, counts.double() / half_tokens[h]))
    return CompetitionStats(
        comp / n_batches, fires / n_tokens, pair_keys, pair_c.double() / n_batches, halves, n_tokens, n_batches, l0_sum / n_tokens
    )


def decoder_cosines(W_dec: Tensor, first: Tensor, second: Tensor, chunk_elements: int = 1 << 22) -> Tensor:
    """cos(W_dec[first[p]], W_dec[second[p]]) per pair p, about `chunk_elements` numbers of
    [pairs, d] at a time (all co-active pairs can be tens of millions: never [pairs, d] at once)."""
    W = W_dec.detach().float().cpu()
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    chunk = max(1, chunk_elements // W.shape[1])
    return torch.cat([(W[a] * W[b]).sum(1) for a, b in zip(first.split(chunk), second.split(chunk))])


def strongest_partners(n: int, keys: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Per latent: the partner j with the largest c_ij (-1 if none) and that c."""
    best = torch.full((n,), -1.0, dtype=torch.float64)
    partner = torch.full((n,), -1, dtype=torch.long)
    if keys.numel() == 0:
        return partner, best.clamp_min(0)
    i, j = split_keys(keys, n)
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
    all_first, all_second = split_keys(stats.pair_keys, n)
    pair_cos = decoder_cosines(W_dec, all_first, all_second)
    top = torch.topk(stats.pair_c, min(s.n_top_pairs, stats.pair_c.numel()))
    cos = pair_cos[top.indices]
    rates = _rates_at(stats.halves, stats.pair_keys[top.indices])
    top_pairs = [
        {"latent_a": int(a), "latent_b": int(b), "competition": float(c), "decoder_cosine": float(k), **r}
        for a, b, c, k, r in zip(all_first[top.indices], all_second[top.indices], top.values, cos, rates)
    ]
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
            "coactive_pairs_mean_abs_decoder_cosine": float(pair_cos.abs().mean()) if pair_cos.numel() else math.nan,
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
    """Per pair key, its co-activation rate in each half (0 where it never fired there)."""
    first, second = (gather_or(rates, half_keys, keys).tolist() for half_keys, rates in halves)
    return [{"coactivation_rate_half1": a, "coactivation_rate_half2": b} for a, b in zip(first, second)]


# ---- activations and the eval --------------------------------------------------------------------


def _n_tokens(ctx: EvalContext, s: CompetitionSettings) -> int:
    return ctx.budget(s.n_tokens, gpu=1 << 20, cpu=1 << 15)


@torch.no_grad()
def held_out_activations(ctx: EvalContext, s: CompetitionSettings, n_tokens: int) -> dict[str, Tensor]:
    """{"first", "second"}: activations [T, d] at non-special positions of disjoint halves of the
    token rows, each shuffled with the seed (cached: every SAE of the group reuses them)."""
    from featsep.evals.common.tokens import token_rows

    n_rows = math.ceil(n_tokens / max(s.context_size - 1, 1)) + 1

    def compute():
        rows = token_rows(ctx, s, n_rows)
        halves = {}
        gen = torch.Generator().manual_seed(s.seed)
        for name, part in (("first", rows[: n_rows // 2]), ("second", rows[n_rows // 2 :])):
            acts = []
            for start in tqdm(range(0, part.shape[0], s.llm_batch_size), desc=f"competition: {name} half", disable=not ctx.verbose):
                ids = part[start : start + s.llm_batch_size]
                acts.append(ctx.hook_acts(ids, None, len(ids))[not_special(ctx.lm, ids)])
            flat = torch.cat(acts)[: n_tokens // 2]
            halves[name] = flat[torch.randperm(flat.shape[0], generator=gen)]
        return halves

    key = {k: getattr(s, k) for k in ("dataset", "text_column", "split", "context_size", "seed")}
    # disk only: the halves are read once per call, and at GPU sizes hold ~n_tokens * d_model * 4 bytes
    return ctx.cached("competition_acts", {**key, "n_tokens": n_tokens}, compute, memory=False)


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
