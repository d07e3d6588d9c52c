"""Sparse pair machinery shared by the pair penalties (orthogonality, temporal).

With D = F^T F / B, D_ij is non-zero only for pairs (i, j) that fire together in some sample,
so everything is computed over those pairs: at most B k (k - 1) / 2 of them for codes with k
non-zeros per row, instead of n^2. A pair i < j is the int64 key i * n + j; sets of pairs are
sorted key tensors, lookups use searchsorted and unions use a sorted merge (no re-sort).

How the batch's pairs are found (coactive_pairs). Each row's firing entries are sorted by
latent, so in row b the entries at positions f < g make the pair (idx[f], idx[g]) with
idx[f] < idx[g]. Every firing entry is an "anchor" for the g - f pairs after it; anchors are
ordered by latent (a CSC view of the batch), and the entry pairs are generated anchor-range by
anchor-range, each range holding about `chunk_elements` entry pairs. A range covers whole
latents, so its keys (first latent in the range) are disjoint from, and sorted before, the next
range's: the batch's sorted unique keys are the concatenation of the per-range uniques, with no
global sort or merge, and peak memory is bounded by one range. Inside a range the keys are
offset to the range's first latent, which keeps them in int32 (a faster sort) for most n.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import Tensor

from featsep.penalties.base import SparseCodes

DEFAULT_CHUNK_ELEMENTS = 1 << 22
INT32_MAX = 2**31 - 1


def merge_add(keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted unique keys, with the values of equal keys summed (values may be [P] or [P, c])."""
    uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    out = values.new_zeros((uniq.numel(),) + tuple(values.shape[1:]))
    out.index_add_(0, inverse, values)
    return uniq, out


def merge_sorted(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Union of two sorted unique key tensors without re-sorting: (union, where each key of `a`
    lands, where each key of `b` lands). One searchsorted of b in a, then linear passes; the
    landing positions let callers carry values along (see merge_sorted_add)."""
    m, p = a.numel(), b.numel()
    if m == 0 or p == 0:
        ar = torch.arange(max(m, p), device=a.device)
        return (b, ar[:0], ar) if m == 0 else (a, ar, ar[:0])
    pos = torch.searchsorted(a, b)
    found = a[pos.clamp(max=m - 1)] == b
    new = (~found).long()
    inserted_before = torch.zeros(m + 1, dtype=torch.long, device=a.device).index_add_(0, pos, new).cumsum_(0)
    at_a = torch.arange(m, device=a.device) + inserted_before[:m]
    at_b = torch.where(found, at_a[pos.clamp(max=m - 1)], pos + new.cumsum(0) - 1)
    out = a.new_empty(m + int(inserted_before[-1]))
    out[at_a] = a
    out[at_b] = b
    return out, at_a, at_b


def merge_sorted_add(a_keys: Tensor, a_vals: Tensor, b_keys: Tensor, b_vals: Tensor) -> tuple[Tensor, Tensor]:
    """merge_add of two sorted unique (keys, values) sets, by a sorted merge."""
    if b_keys.numel() == 0:
        return a_keys, a_vals
    if a_keys.numel() == 0:
        return b_keys, b_vals.to(a_vals.dtype)
    keys, at_a, at_b = merge_sorted(a_keys, b_keys)
    vals = a_vals.new_zeros((keys.numel(),) + tuple(a_vals.shape[1:]))
    vals[at_a] = a_vals
    vals.index_add_(0, at_b, b_vals.to(vals.dtype))
    return keys, vals


@dataclass
class _Layout:
    """The batch seen by anchors: rows sorted (firing entries first, by latent), anchors (flat
    entries b * k + f) in latent order with their pair count and first entry-pair offset."""

    idx: Tensor  # [B * k] latents, rows sorted
    vals: Tensor  # [B * k] detached values, rows sorted
    order: Tensor  # [B, k] row sort permutation (sorted[b, f] = original[b, order[b, f]])
    anchor: Tensor  # [A] flat entries in latent order
    count: Tensor  # [A] pairs each anchor starts
    start: Tensor  # [A] offset of each anchor's first entry pair
    total: int

    def entry_pairs(self, a0: int, a1: int) -> tuple[Tensor, Tensor]:
        """Flat (anchor, partner) entries of the entry pairs of anchors a0..a1, in order."""
        count = self.count[a0:a1]
        anchor = torch.repeat_interleave(self.anchor[a0:a1], count)
        base = torch.repeat_interleave(self.start[a0:a1] - self.start[a0], count)
        partner = anchor + 1 + (torch.arange(anchor.numel(), device=anchor.device) - base)
        return anchor, partner


def _layout(codes: SparseCodes) -> _Layout:
    n, k = codes.d_sae, codes.indices.shape[1]
    _, order = (codes.indices + n * (~codes.active).long()).sort(dim=1)
    idx = codes.indices.gather(1, order)
    vals = codes.values.detach().gather(1, order)
    firing = codes.active.sum(1, keepdim=True)
    count = (firing - 1 - torch.arange(k, device=idx.device)).clamp_(min=0).reshape(-1)
    anchor = torch.argsort(idx.reshape(-1), stable=True)
    count = count[anchor]
    keep = count > 0
    anchor, count = anchor[keep], count[keep]
    end = count.cumsum(0)
    return _Layout(idx.reshape(-1), vals.reshape(-1), order, anchor, count, end - count,
                   int(end[-1]) if end.numel() else 0)


def _anchor_ranges(lay: _Layout, chunk_elements: int) -> list[tuple[int, int]]:
    """Cut the anchors into ranges of about chunk_elements entry pairs, never inside a latent."""
    if lay.total == 0:
        return []
    if lay.total <= chunk_elements:
        return [(0, lay.anchor.numel())]
    marks = torch.arange(chunk_elements, lay.total, chunk_elements, device=lay.start.device)
    at = torch.searchsorted(lay.start, marks, right=True) - 1  # anchor holding each mark
    lat = lay.idx[lay.anchor]
    cut = torch.searchsorted(lat, lat[at])  # back to the first anchor of that latent
    cuts = sorted({0, lay.anchor.numel(), *cut.tolist()})
    return list(zip(cuts[:-1], cuts[1:]))


@dataclass
class BatchPairs:
    """The pairs i < j firing together in a batch: sorted keys, in how many samples (counts,
    int32), and per segment of rows (keys, counts) when the batch was split. `gram` / `diag`
    are D at the keys and on the diagonal (detached); `ranges`/`positions` map each entry pair
    of each anchor range to its key, for the backward pass."""

    keys: Tensor
    counts: Tensor
    segments: list[tuple[Tensor, Tensor]]
    gram: Tensor
    diag: Tensor
    layout: Optional[_Layout] = None
    ranges: list[tuple[int, int]] = field(default_factory=list)
    positions: list[Tensor] = field(default_factory=list)


def _unique_range(lay: _Layout, a0: int, a1: int, n: int, seg_of_row: Optional[Tensor], nseg: int, k: int):
    """Unique pair keys of one anchor range: (keys, counts, D sums, per-(pair, segment) uniques,
    inverse of each entry pair)."""
    anchor, partner = lay.entry_pairs(a0, a1)
    first = lay.idx[lay.anchor[a0]]
    span = (int(lay.idx[lay.anchor[a1 - 1]]) - int(first) + 1) * n * nseg
    local = (lay.idx[anchor] - first) * n + lay.idx[partner]
    if nseg > 1:
        local = local * nseg + seg_of_row[torch.div(anchor, k, rounding_mode="floor")]
    if span <= INT32_MAX:
        local = local.to(torch.int32)
    uniq, inverse, counts = torch.unique(local, sorted=True, return_inverse=True, return_counts=True)
    uniq = uniq.long()
    sums = lay.vals.new_zeros(uniq.numel()).index_add_(0, inverse, lay.vals[anchor] * lay.vals[partner])
    by_segment = None
    if nseg > 1:  # (pair, segment) uniques -> pair uniques; consecutive, since seg is the low digit
        seg, pair = uniq % nseg, torch.div(uniq, nseg, rounding_mode="floor")
        by_segment = (seg, pair + first * n, counts)
        uniq, pair_inverse = torch.unique_consecutive(pair, return_inverse=True)
        counts = torch.zeros(uniq.numel(), dtype=counts.dtype, device=counts.device).index_add_(0, pair_inverse, counts)
        sums = sums.new_zeros(uniq.numel()).index_add_(0, pair_inverse, sums)
        inverse = pair_inverse[inverse]
    return uniq + first * n, counts, sums, by_segment, inverse


def coactive_pairs(codes: SparseCodes, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                   boundaries: Sequence[int] = ()) -> BatchPairs:
    """Which pairs fire together in the batch, in how many samples, and their D entries, in
    O(B k^2) time and O(pairs + chunk_elements) memory (see the module docstring).
    `boundaries` split the rows into segments whose own pair counts are also returned. Only
    `codes.active` entries count."""
    n, (bsz, k) = codes.d_sae, codes.indices.shape
    device, values = codes.indices.device, codes.values.detach()
    cuts = sorted({0, bsz, *[b for b in boundaries if 0 < b < bsz]})
    nseg = len(cuts) - 1
    empty = torch.zeros(0, dtype=torch.long, device=device)
    diag = values.new_zeros(n).index_add_(0, codes.indices.reshape(-1), (values * values).reshape(-1)) / max(bsz, 1)
    if k < 2 or bsz == 0:
        return BatchPairs(empty, empty.int(), [(empty, empty.int())] * max(nseg, 1), values.new_zeros(0), diag)
    lay = _layout(codes)
    ranges = _anchor_ranges(lay, chunk_elements)
    seg_of_row = None
    if nseg > 1:
        seg_of_row = torch.bucketize(torch.arange(bsz, device=device), torch.tensor(cuts[1:-1], device=device), right=True)
    keys, counts, grams, positions, segs = [], [], [], [], []
    offset = 0
    for a0, a1 in ranges:
        uniq, cnt, sums, by_segment, inverse = _unique_range(lay, a0, a1, n, seg_of_row, nseg, k)
        keys.append(uniq)
        counts.append(cnt.int())
        grams.append(sums)
        positions.append((inverse + offset).to(torch.int32 if offset + uniq.numel() <= INT32_MAX else torch.long))
        segs.append(by_segment)
        offset += uniq.numel()
    keys, counts = torch.cat(keys) if keys else empty, torch.cat(counts) if counts else empty.int()
    gram = (torch.cat(grams) if grams else values.new_zeros(0)) / bsz
    if nseg == 1:
        segments = [(keys, counts)]
    else:
        seg = torch.cat([s for s, _, _ in segs]) if segs else empty
        pair = torch.cat([p for _, p, _ in segs]) if segs else empty
        cnt = torch.cat([c for _, _, c in segs]).int() if segs else empty.int()
        segments = []
        for s in range(nseg):
            mine = seg == s
            segments.append((pair[mine], cnt[mine]))
    return BatchPairs(keys, counts, segments, gram, diag, lay, ranges, positions)


def lookup(sorted_keys: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
    """Positions of `query` in `sorted_keys` (clamped) and whether each key is there."""
    if sorted_keys.numel() == 0:
        zeros = torch.zeros_like(query)
        return zeros, torch.zeros_like(query, dtype=torch.bool)
    pos = torch.searchsorted(sorted_keys, query, out_int32=sorted_keys.numel() <= INT32_MAX)
    pos = pos.clamp_(max=sorted_keys.numel() - 1)
    return pos, sorted_keys[pos] == query


def gather_or(values: Tensor, sorted_keys: Tensor, query: Tensor, default: float = 0.0) -> Tensor:
    """values[position of each query key], or `default` where the key is absent."""
    pos, found = lookup(sorted_keys, query)
    if values.numel() == 0:
        return torch.full(query.shape + values.shape[1:], default, dtype=values.dtype, device=query.device)
    got = values[pos]
    mask = found.view(found.shape + (1,) * (got.dim() - found.dim()))
    return torch.where(mask, got, torch.full_like(got, default))


class _PairGram(torch.autograd.Function):
    """D at the batch's pair keys and on the diagonal, differentiable w.r.t. the values:
    dL/dv_{b,a} = (sum_{c != a} g[pair(a, c)] v_{b,c} + 2 g_diag[i_a] v_{b,a}) / B, summed over
    the entry pairs of each anchor range, regenerated from the layout (no search, and no
    per-entry-pair memory but the int32 positions)."""

    @staticmethod
    def forward(ctx, values: Tensor, indices: Tensor, pairs: BatchPairs):
        ctx.save_for_backward(values, indices)
        ctx.pairs = pairs
        return pairs.gram.to(values.dtype).clone(), pairs.diag.to(values.dtype).clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_gram: Tensor, grad_diag: Tensor):
        values, indices = ctx.saved_tensors
        pairs, lay = ctx.pairs, ctx.pairs.layout
        bsz, k = values.shape
        grad = 2.0 * grad_diag[indices] * values
        if lay is not None and pairs.keys.numel():
            vals = lay.vals.to(values.dtype)
            flat = values.new_zeros(bsz * k)
            for (a0, a1), pos in zip(pairs.ranges, pairs.positions):
                anchor, partner = lay.entry_pairs(a0, a1)
                g = grad_gram[pos]
                flat.index_add_(0, anchor, g * vals[partner])
                flat.index_add_(0, partner, g * vals[anchor])
            grad = grad + values.new_zeros(bsz, k).scatter_(1, lay.order, flat.view(bsz, k))
        return grad / max(bsz, 1), None, None


def pair_gram(codes: SparseCodes, pairs: BatchPairs) -> tuple[Tensor, Tensor]:
    """Entries of D = F^T F / B at the batch's pair keys (i < j) and its diagonal [n],
    differentiable w.r.t. codes.values at firing entries (non-firing entries get no gradient),
    in O(B k^2) time and O(pairs + n) memory."""
    return _PairGram.apply(codes.values, codes.indices, pairs)


def split_keys(keys: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(i, j) of pair keys i * n + j."""
    return keys // n, keys % n


def tensor_bytes(*tensors: Optional[Tensor]) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t)))
