"""Sparse pair machinery shared by the pair penalties (orthogonality, temporal).

With D = F^T F / B, D_ij is non-zero only for pairs (i, j) that fire together in some sample,
so everything is computed over those pairs: at most B k (k - 1) / 2 of them for codes with k
non-zeros per row, instead of n^2. A pair i < j is the int64 key i * n + j; sets of pairs are
sorted key tensors, lookups use searchsorted and unions use a sorted merge (no re-sort).

How the batch's pairs are found (coactive_pairs). The codes' entries are read in the flat form
(featsep.codes.Entries: free for the TopK form, BatchTopK's own form; no rows padded to a
host-read width) and sorted by (row, firing first, latent), so each row's firing entries are
contiguous and sorted by latent: in row b the entries at positions f < g make the pair
(idx[f], idx[g]) with idx[f] < idx[g]. Every firing entry is an "anchor" for the g - f pairs
after it; anchors are ordered by latent (a CSC view of the batch), and the entry pairs are
generated anchor-range by anchor-range, each range holding about `chunk_elements` entry pairs.
A range covers whole latents, so its keys (first latent in the range) are disjoint from, and
sorted before, the next range's: the batch's sorted unique keys are the concatenation of the
per-range uniques, with no global sort or merge, and peak memory is bounded by one range.
Inside a range the keys are offset to the range's first latent, which keeps them in int32 (a
faster sort) for most n.

The penalties never hold all the batch's pairs (at n = 65536, k = 160, batch 4096 there are
~50M): pair_loss streams the ranges through a callback that weighs each range's pairs (and may
update pair state stored in key order, range by range) and keeps one number per entry pair for
the backward pass. coactive_pairs gathers every range at once, for analyses (competition eval).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from featsep.codes import Codes

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
    """The batch seen by anchors: entries sorted by row (firing entries first, by latent), anchors
    (positions in that order) in latent order with their latent, pair count and first entry-pair
    offset. Entry positions are int32 (m < 2^31), which halves the traffic of the per-pair passes."""

    idx: Tensor  # [m] latents, sorted
    vals: Tensor  # [m] detached values, sorted
    rows: Tensor  # [m] row of each sorted entry
    order: Tensor  # [m] the sort permutation (sorted[e] = flat entry order[e])
    anchor: Tensor  # [A] flat entries in latent order (int32)
    lat: Tensor  # [A] latent of each anchor
    count: Tensor  # [A] pairs each anchor starts
    start: Tensor  # [A] offset of each anchor's first entry pair
    total: int

    def repeat(self, per_anchor: Tensor, r: "_Range") -> Tensor:
        """A per-anchor quantity of range r's anchors, once per entry pair (anchor-major order)."""
        return torch.repeat_interleave(per_anchor, self.count[r.a0:r.a1], output_size=r.size)

    def partners(self, r: "_Range") -> Tensor:
        """Flat partner entries of range r's entry pairs, in order: anchor a pairs with the
        count[a] entries after it in its row, so the partners are one cumsum of +1 steps with a
        jump at each anchor's first pair (no per-pair arange or offsets)."""
        anchor, count = self.anchor[r.a0:r.a1], self.count[r.a0:r.a1].to(self.anchor.dtype)
        steps = torch.ones(r.size, dtype=anchor.dtype, device=anchor.device)
        previous_last = torch.cat([anchor.new_zeros(1), (anchor + count)[:-1]])
        steps[self.start[r.a0:r.a1] - r.offset] = anchor + 1 - previous_last
        return steps.cumsum(0, dtype=anchor.dtype)

    def entry_pairs(self, r: "_Range") -> tuple[Tensor, Tensor]:
        """Flat (anchor, partner) entries of range r's entry pairs, in order."""
        return self.repeat(self.anchor[r.a0:r.a1], r), self.partners(r)


def _layout(codes: Codes) -> _Layout:
    n, e = codes.d_sae, codes.flat()
    m = e.cols.numel()
    key = e.rows * (n + 1) + torch.where(e.active, e.cols, n)  # by row; firing first, by latent
    key, order = key.sort()
    idx, rows = e.cols[order], e.rows[order]
    vals = e.values.detach()[order]
    firing = codes.firing_per_row()
    position = torch.arange(m, device=idx.device) - e.offsets[rows]  # within its row
    count = (firing[rows] - 1 - position).clamp_(min=0)
    anchor = torch.argsort(idx, stable=True)
    count = count[anchor]
    keep = count > 0
    anchor, count = anchor[keep], count[keep]
    end = count.cumsum(0)
    flat_dtype = torch.int32 if m <= INT32_MAX else torch.long
    return _Layout(idx, vals, rows, order, anchor.to(flat_dtype), idx[anchor], count, end - count,
                   int(end[-1]) if end.numel() else 0)


@dataclass
class _Range:
    """Anchors a0..a1 (whole latents first..last), the offset of their first entry pair and how
    many entry pairs they start."""

    a0: int
    a1: int
    first: int
    last: int
    offset: int
    size: int


def _anchor_ranges(lay: _Layout, chunk_elements: int) -> list[_Range]:
    """Cut the anchors into ranges of about chunk_elements entry pairs, never inside a latent
    (one host sync for all the cuts)."""
    if lay.total == 0:
        return []
    cuts = torch.tensor([0], device=lay.start.device)
    lat = lay.lat
    if lay.total > chunk_elements:
        marks = torch.arange(chunk_elements, lay.total, chunk_elements, device=lay.start.device)
        at = torch.searchsorted(lay.start, marks, right=True) - 1  # anchor holding each mark
        cuts = torch.unique(torch.cat([cuts, torch.searchsorted(lat, lat[at])]))  # back to the latent's first anchor
    a0 = cuts
    a1 = torch.cat([cuts[1:], torch.tensor([lay.anchor.numel()], device=cuts.device)])
    offset = lay.start[a0]
    size = torch.cat([offset[1:], torch.tensor([lay.total], device=cuts.device)]) - offset
    rows = torch.stack([a0, a1, lat[a0], lat[a1 - 1], offset, size]).T.tolist()
    return [_Range(*row) for row in rows]


@dataclass
class PairChunk:
    """The co-active pairs i < j of one anchor range: all those whose first latent i is in
    first..last, so their keys lie in [lo, hi) = [first * n, (last + 1) * n), disjoint from and
    before the next chunk's. counts: in how many samples the pair fires (int32); gram: its D
    entry (detached); segments: per segment of rows, (keys, counts) of the pairs firing there."""

    keys: Tensor
    counts: Tensor
    gram: Tensor
    segments: list[tuple[Tensor, Tensor]]
    lo: int
    hi: int


class _Chunker:
    """The batch's co-active pairs, one anchor range at a time (see the module docstring)."""

    def __init__(self, codes: Codes, chunk_elements: int, boundaries: Sequence[int] = ()):
        self.n, self.bsz = codes.d_sae, codes.batch_size
        self.m = codes.flat().cols.numel()
        device = codes.device
        cuts = sorted({0, self.bsz, *[b for b in boundaries if 0 < b < self.bsz]})
        self.nseg = max(len(cuts) - 1, 1)
        self.seg_of_row = None
        if self.nseg > 1:
            self.seg_of_row = torch.bucketize(torch.arange(self.bsz, device=device),
                                              torch.tensor(cuts[1:-1], device=device), right=True)
        self.layout = _layout(codes) if self.m >= 2 and self.bsz > 0 else None
        self.ranges = _anchor_ranges(self.layout, chunk_elements) if self.layout is not None else []
        self.partner_key = self.layout.idx * self.nseg if self.layout is not None else None  # j's part of a local key

    def chunk(self, r: _Range) -> tuple[PairChunk, Tensor]:
        """The range's pairs, and for each of its entry pairs (in entry_pairs order) its pair."""
        lay, n, nseg = self.layout, self.n, self.nseg
        partner = lay.partners(r)
        # local key ((i - first) * n + j) * nseg + segment: the anchor's part once per anchor
        wide = (r.last - r.first + 1) * n * nseg > INT32_MAX
        key_dtype = torch.long if wide else torch.int32
        anchor_part = (lay.lat[r.a0:r.a1] - r.first) * (n * nseg)
        if nseg > 1:
            anchor_part = anchor_part + self.seg_of_row[lay.rows[lay.anchor[r.a0:r.a1].long()]]
        local = lay.repeat(anchor_part.to(key_dtype), r)
        local += self.partner_key.to(key_dtype).index_select(0, partner)
        uniq, inverse, counts = torch.unique(local, sorted=True, return_inverse=True, return_counts=True)
        del local
        uniq = uniq.long()
        products = lay.repeat(lay.vals.index_select(0, lay.anchor[r.a0:r.a1]), r)
        products *= lay.vals.index_select(0, partner)
        sums = lay.vals.new_zeros(uniq.numel()).index_add_(0, inverse, products)
        if nseg > 1:  # (pair, segment) uniques -> pair uniques; consecutive, since seg is the low digit
            seg, pair = uniq % nseg, torch.div(uniq, nseg, rounding_mode="floor") + r.first * n
            by_seg = torch.sort(seg, stable=True).indices  # grouped by segment, pairs still in order
            sizes = torch.bincount(seg, minlength=nseg).tolist()
            segments = list(zip(pair[by_seg].split(sizes), counts[by_seg].int().split(sizes)))
            uniq, pair_inverse = torch.unique_consecutive(pair, return_inverse=True)
            counts = torch.zeros(uniq.numel(), dtype=counts.dtype, device=counts.device).index_add_(0, pair_inverse, counts)
            sums = sums.new_zeros(uniq.numel()).index_add_(0, pair_inverse, sums)
            inverse = pair_inverse[inverse]
        else:
            uniq = uniq + r.first * n
            segments = [(uniq, counts.int())]
        chunk = PairChunk(uniq, counts.int(), sums / self.bsz, segments, r.first * n, (r.last + 1) * n)
        return chunk, inverse


@dataclass
class BatchPairs:
    """All the pairs i < j firing together in a batch: sorted keys, counts (int32) and D at the
    keys (gram)."""

    keys: Tensor
    counts: Tensor
    gram: Tensor


def coactive_pairs(codes: Codes, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> BatchPairs:
    """Which pairs fire together in the batch, in how many samples, and their D entries, all at
    once (for analyses: the competition eval): O(B k^2) time, O(pairs + chunk_elements) memory.
    Only `codes.active` entries count. The penalties stream the same chunks through pair_loss
    instead and never hold them all."""
    chunker = _Chunker(codes, chunk_elements)
    chunks = [chunker.chunk(r)[0] for r in chunker.ranges]
    if not chunks:
        empty = torch.zeros(0, dtype=torch.long, device=codes.device)
        return BatchPairs(empty, empty.int(), codes.flat().values.detach().new_zeros(0))
    return BatchPairs(torch.cat([c.keys for c in chunks]), torch.cat([c.counts for c in chunks]),
                      torch.cat([c.gram for c in chunks]))


# Called once per chunk, in key order: (the chunk's loss, d loss / d chunk.gram), both detached.
Weigh = Callable[[PairChunk], tuple[Tensor, Tensor]]


class _PairLoss(torch.autograd.Function):
    """sum over chunks of weigh(chunk)[0], differentiable w.r.t. the values. Only one chunk's
    pairs exist at a time; what the backward pass needs is d loss / d D per entry pair (one
    number each), since dL/dv_{b,a} = sum_{c != a} (dL/dD_{pair(a,c)}) v_{b,c} / B, with the entry
    pairs regenerated from the layout."""

    @staticmethod
    def forward(ctx, values: Tensor, codes: Codes, weigh: Weigh, chunk_elements: int, boundaries):
        chunker = _Chunker(codes, chunk_elements, boundaries)
        total = values.new_zeros(())
        coef = values.new_empty(chunker.layout.total if chunker.layout is not None else 0)
        for r in chunker.ranges:
            chunk, inverse = chunker.chunk(r)
            loss, dgram = weigh(chunk)
            total += loss.to(values.dtype)
            coef[r.offset:r.offset + r.size] = dgram.to(values.dtype)[inverse]
        ctx.save_for_backward(coef)
        ctx.chunker = chunker
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        (coef,) = ctx.saved_tensors
        chunker, lay = ctx.chunker, ctx.chunker.layout
        bsz, m = chunker.bsz, chunker.m
        if lay is None:
            return coef.new_zeros(m), None, None, None, None
        vals = lay.vals.to(coef.dtype)
        flat = coef.new_zeros(m)
        for r in chunker.ranges:
            anchor, partner = lay.entry_pairs(r)
            g = coef[r.offset:r.offset + r.size] * grad_out
            flat.index_add_(0, anchor, g * vals.index_select(0, partner))
            g *= lay.repeat(vals.index_select(0, lay.anchor[r.a0:r.a1]), r)
            flat.index_add_(0, partner, g)
        grad = coef.new_zeros(m).scatter_(0, lay.order, flat)
        return grad / max(bsz, 1), None, None, None, None


def pair_loss(codes: Codes, weigh: Weigh, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
              boundaries: Sequence[int] = ()) -> Tensor:
    """A loss summed over the batch's co-active pairs, streamed chunk by chunk: weigh(chunk)
    sees each chunk once, in key order (so it may also update pair state kept in key order), and
    returns the chunk's loss and its derivative w.r.t. chunk.gram. Differentiable w.r.t.
    the codes' values at firing entries (non-firing entries get no gradient). O(B k^2) time; memory:
    one chunk plus one number per entry pair (B k (k - 1) / 2), never all pairs at once."""
    return _PairLoss.apply(codes.flat().values, codes, weigh, chunk_elements, tuple(boundaries))


@dataclass
class PairSlots:
    """The batch's co-active pairs i < j in a table of fixed size, one slot per entry pair (B k
    (k - 1) / 2): the pairs in key order first, then empty slots (count 0, gram 0). counts:
    samples in which the pair fires (int32); gram: its D entry, differentiable w.r.t. the codes'
    values at firing entries."""

    counts: Tensor
    gram: Tensor


def fixed_width_entry_pairs(codes: Codes) -> int:
    """How many entry pairs the TopK form's rows make (B k (k - 1) / 2): a shape, no sync."""
    batch, width = codes.values.shape
    return batch * width * (width - 1) // 2


def pair_slots(codes: Codes) -> PairSlots:
    """pair_loss's pairs without reading their number on the host, for codes in the TopK form:
    every row's k entries make the same k (k - 1) / 2 entry pairs, so the table has a size known
    from shapes, and sorting its keys and numbering the distinct ones (a cumsum) puts each pair
    in a slot. No host sync (the streamed path reads its chunk cuts and pair counts), at the
    price of memory for all entry pairs at once and of empty slots; autograd does the backward.
    Non-firing entries (padding, zeros) count in no pair and get no gradient."""
    values, indices, active = codes.values, codes.indices, codes.active
    batch, width = values.shape
    n = codes.d_sae
    first, second = torch.triu_indices(width, width, 1, device=values.device)
    key_dtype = torch.int32 if n * n <= INT32_MAX else torch.long  # int32 sorts faster
    indices, by_latent = indices.to(key_dtype).sort(dim=1)  # then i < j at positions first < second
    values, active = values.gather(1, by_latent), active.gather(1, by_latent)
    keys = (indices.index_select(1, first) * n + indices.index_select(1, second)).reshape(-1)
    fires = active.index_select(1, first) & active.index_select(1, second)
    products = torch.where(fires, values.index_select(1, first) * values.index_select(1, second), 0.0).reshape(-1)
    sorted_keys, order = keys.sort()
    new = torch.ones_like(sorted_keys, dtype=torch.bool)
    new[1:] = sorted_keys[1:] != sorted_keys[:-1]
    slot = torch.empty_like(order).scatter_(0, order, new.cumsum(0) - 1)  # of each entry pair, unsorted
    size = keys.numel()
    counts = torch.zeros(size, dtype=torch.int32, device=keys.device).index_add_(0, slot, fires.reshape(-1).int())
    gram = products.new_zeros(size).index_add(0, slot, products) / max(batch, 1)
    return PairSlots(counts, gram)


def diagonal_gram(codes: Codes) -> Tensor:
    """D_ii = sum_b v_bi^2 / B, [n], differentiable w.r.t. the codes' values."""
    e = codes.flat()
    return e.values.new_zeros(codes.d_sae).index_add(0, e.cols, e.values * e.values) / max(codes.batch_size, 1)


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


def split_keys(keys: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(i, j) of pair keys i * n + j."""
    return keys // n, keys % n


def tensor_bytes(*tensors: Optional[Tensor]) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t)))
