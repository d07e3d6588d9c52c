"""Sparse pair machinery shared by the pair penalties (orthogonality, temporal).

With D = F^T F / B, D_ij is non-zero only for pairs (i, j) that fire together in some sample,
so everything is computed over those pairs: at most B k (k - 1) / 2 of them for codes with k
non-zeros per row, instead of n^2. A pair i < j is the int64 key i * n + j; sets of pairs are
sorted key tensors and lookups use searchsorted. Work over the batch is chunked so that no
temporary holds more than `chunk_elements` pair entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import Tensor

from featsep.penalties.base import SparseCodes

DEFAULT_CHUNK_ELEMENTS = 1 << 22


def _rows_per_chunk(pairs_per_row: int, chunk_elements: int) -> int:
    return max(1, chunk_elements // max(1, pairs_per_row))


def merge_add(keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted unique keys, with the values of equal keys summed (values may be [P] or [P, c])."""
    uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    out = values.new_zeros((uniq.numel(),) + tuple(values.shape[1:]))
    out.index_add_(0, inverse, values)
    return uniq, out


@dataclass
class BatchPairs:
    """The pairs i < j firing together in a batch: sorted keys, in how many samples (counts),
    and per segment of rows (keys, counts) when the batch was split. `gram` / `diag` are D at
    the keys and on the diagonal (detached); `positions`/`masks` map each firing entry pair of
    each row chunk to its key, for the backward pass."""

    keys: Tensor
    counts: Tensor
    segments: list[tuple[Tensor, Tensor]]
    gram: Tensor
    diag: Tensor
    chunks: list[tuple[int, int]] = field(default_factory=list)
    masks: list[Tensor] = field(default_factory=list)
    positions: list[Tensor] = field(default_factory=list)


def coactive_pairs(codes: SparseCodes, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                   boundaries: Sequence[int] = ()) -> BatchPairs:
    """One sort-based pass over the batch (chunked over rows): which pairs fire together, how
    often, and their D entries. `boundaries` split the rows into segments whose own pair counts
    are also returned (chunks never straddle a boundary). Only `codes.active` entries count."""
    n, k, bsz = codes.d_sae, codes.indices.shape[1], codes.batch_size
    device, values = codes.indices.device, codes.values.detach()
    cuts = sorted({0, bsz, *[b for b in boundaries if 0 < b < bsz]})
    empty = torch.zeros(0, dtype=torch.long, device=device)
    diag = values.new_zeros(n).index_add_(0, codes.indices.reshape(-1), (values * values).reshape(-1)) / max(bsz, 1)
    if k < 2 or bsz == 0:
        return BatchPairs(empty, empty, [(empty, empty)] * (len(cuts) - 1), values.new_zeros(0), diag)
    first, second = torch.triu_indices(k, k, 1, device=device)
    rows = _rows_per_chunk(first.numel(), chunk_elements)
    chunks = [(s, min(s + rows, e)) for a, e in zip(cuts[:-1], cuts[1:]) for s in range(a, e, rows)]
    masks, inverses, keys_parts, count_parts, gram_parts, seg_of_chunk = [], [], [], [], [], []
    for s, e in chunks:
        idx, act, val = codes.indices[s:e], codes.active[s:e], values[s:e]
        a, b = idx[:, first], idx[:, second]
        mask = act[:, first] & act[:, second]
        keys = (torch.minimum(a, b) * n + torch.maximum(a, b))[mask]
        uniq, inverse, counts = torch.unique(keys, sorted=True, return_inverse=True, return_counts=True)
        gram_parts.append(val.new_zeros(uniq.numel()).index_add_(0, inverse, (val[:, first] * val[:, second])[mask]))
        masks.append(mask)
        inverses.append(inverse)
        keys_parts.append(uniq)
        count_parts.append(counts)
        seg_of_chunk.append(max(i for i, c in enumerate(cuts[:-1]) if c <= s))
    all_keys = torch.cat(keys_parts)
    keys, merge_inverse = torch.unique(all_keys, sorted=True, return_inverse=True)
    counts = torch.zeros(keys.numel(), dtype=torch.long, device=device).index_add_(0, merge_inverse, torch.cat(count_parts))
    gram = values.new_zeros(keys.numel()).index_add_(0, merge_inverse, torch.cat(gram_parts)) / bsz
    offsets = [0]
    for part in keys_parts:
        offsets.append(offsets[-1] + part.numel())
    small = torch.int32 if keys.numel() < 2**31 else torch.long
    positions = [merge_inverse[o + inv].to(small) for o, inv in zip(offsets, inverses)]
    segments = []
    for seg in range(len(cuts) - 1):
        mine = [c for c, sg in enumerate(seg_of_chunk) if sg == seg]
        if len(mine) == 1:
            segments.append((keys_parts[mine[0]], count_parts[mine[0]]))
        else:
            segments.append(merge_add(torch.cat([keys_parts[c] for c in mine]), torch.cat([count_parts[c] for c in mine])))
    return BatchPairs(keys, counts, segments, gram, diag, chunks, masks, positions)


def lookup(sorted_keys: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
    """Positions of `query` in `sorted_keys` (clamped) and whether each key is there."""
    if sorted_keys.numel() == 0:
        zeros = torch.zeros_like(query)
        return zeros, torch.zeros_like(query, dtype=torch.bool)
    pos = torch.searchsorted(sorted_keys, query).clamp_(max=sorted_keys.numel() - 1)
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
    the firing entry pairs recorded by coactive_pairs (no search in either pass)."""

    @staticmethod
    def forward(ctx, values: Tensor, indices: Tensor, pairs: BatchPairs):
        ctx.save_for_backward(values, indices)
        ctx.pairs = pairs
        return pairs.gram.to(values.dtype).clone(), pairs.diag.to(values.dtype).clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_gram: Tensor, grad_diag: Tensor):
        values, indices = ctx.saved_tensors
        pairs = ctx.pairs
        bsz, k = values.shape
        grad = 2.0 * grad_diag[indices] * values
        if k >= 2 and pairs.keys.numel():
            first, second = torch.triu_indices(k, k, 1, device=values.device)
            for (s, e), mask, pos in zip(pairs.chunks, pairs.masks, pairs.positions):
                g = values.new_zeros(mask.shape)
                g[mask] = grad_gram[pos.long()]
                val = values[s:e]
                part = grad[s:e]
                part.index_add_(1, first, g * val[:, second])
                part.index_add_(1, second, g * val[:, first])
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
