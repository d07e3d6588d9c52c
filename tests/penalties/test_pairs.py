"""featsep.penalties.pairs: sorted-key merges and chunked co-active pairs against brute force."""

import pytest
import torch

from featsep.codes import Codes
from featsep.penalties.pairs import (coactive_pairs, diagonal_gram, merge_add, merge_sorted, merge_sorted_add, pair_loss)
from tests.penalties.helpers import DT, dense, topk_batch


def random_sorted_keys(g, size, high):
    return torch.unique(torch.randint(0, high, (size,), generator=g))


@pytest.mark.parametrize("sizes", [(0, 5), (5, 0), (40, 30), (3, 60), (60, 3)])
def test_merge_sorted_equals_unique_merge(sizes):
    g = torch.Generator().manual_seed(sum(sizes))
    a, b = random_sorted_keys(g, sizes[0], 80), random_sorted_keys(g, sizes[1], 80)
    union, at_a, at_b = merge_sorted(a, b)
    assert torch.equal(union, torch.unique(torch.cat([a, b])))
    assert torch.equal(union[at_a], a) and torch.equal(union[at_b], b)
    va, vb = torch.rand(a.numel(), 2, dtype=DT, generator=g), torch.rand(b.numel(), 2, dtype=DT, generator=g)
    keys, vals = merge_sorted_add(a, va, b, vb)
    ref_keys, ref_vals = merge_add(torch.cat([a, b]), torch.cat([va, vb]))
    assert torch.equal(keys, ref_keys)
    torch.testing.assert_close(vals, ref_vals, rtol=0, atol=1e-15)
    assert torch.equal(merge_sorted(a, a)[0], a)


def brute_force_pairs(values, active, indices, n, rows=slice(None)):
    """Dense A^T A (counts) and F^T F / B over the rows, at every pair i < j."""
    A = torch.zeros(values.shape[0], n, dtype=DT).scatter(1, indices, active.to(DT))[rows]
    F = torch.zeros(values.shape[0], n, dtype=DT).scatter(1, indices, values * active)[rows]
    C, D = (A.T @ A).triu(1), (F.T @ F).triu(1) / values.shape[0]
    keys = torch.nonzero(C.flatten()).squeeze(1)
    return keys, C.flatten()[keys], D.flatten()[keys]


@pytest.mark.parametrize("chunk_elements", [1, 5, 23, 1 << 22])
def test_chunked_pairs_equal_one_shot_and_brute_force(chunk_elements):
    """Anchor-range chunking (any chunk size, latents never split, some ranges with one latent)
    gives the one-shot keys, counts, D, segment counts and gradient; inactive entries excluded.
    Checked on both consumers: the streamed chunks of pair_loss and coactive_pairs."""
    n, b, k = 40, 30, 7
    values, indices = topk_batch(5, n=n, b=b, k=k)
    codes = Codes.from_topk(values, indices, n)
    bounds, rows = [4, 5, 19], [slice(0, 4), slice(4, 5), slice(5, 19), slice(19, b)]
    keys, counts, gram = brute_force_pairs(values, codes.active, indices, n)
    for pairs in (coactive_pairs(codes, 1 << 30), coactive_pairs(codes, chunk_elements)):
        assert torch.equal(pairs.keys, keys) and torch.equal(pairs.counts.long(), counts.long())
        torch.testing.assert_close(pairs.gram, gram, rtol=1e-12, atol=1e-15)
    weights = torch.rand(keys.numel(), dtype=DT, generator=torch.Generator().manual_seed(1))
    grads, seen = [], []

    def weigh(chunk):  # sees each chunk once, in key order; weighs with the pair's own weight
        seen.append(chunk)
        w = weights[torch.searchsorted(keys, chunk.keys)]
        assert bool((chunk.keys >= chunk.lo).all() and (chunk.keys < chunk.hi).all())
        return (w * chunk.gram.abs()).sum(), w * chunk.gram.sign()

    for chunk in (1 << 30, chunk_elements):
        v = values.clone().requires_grad_()
        sc = Codes.from_topk(v, indices, n)
        seen.clear()
        (pair_loss(sc, weigh, chunk, boundaries=bounds) + diagonal_gram(sc).sum()).backward()
        assert torch.equal(torch.cat([c.keys for c in seen]), keys)
        assert torch.equal(torch.cat([c.counts for c in seen]).long(), counts.long())
        torch.testing.assert_close(torch.cat([c.gram for c in seen]), gram, rtol=1e-12, atol=1e-15)
        for s, seg_rows in enumerate(rows):
            ref_keys, ref_counts, _ = brute_force_pairs(values, codes.active, indices, n, seg_rows)
            assert torch.equal(torch.cat([c.segments[s][0] for c in seen]), ref_keys)
            assert torch.equal(torch.cat([c.segments[s][1] for c in seen]).long(), ref_counts.long())
        grads.append(v.grad)
    if chunk_elements < 23:
        assert len(seen) > 3
    F = dense(values, indices, n).requires_grad_()
    D = F.T @ F / b
    W = torch.zeros(n * n, dtype=DT)
    W[keys] = weights
    ((W.view(n, n) * D.abs()).sum() + D.diagonal().sum()).backward()
    ref_grad = F.grad.gather(1, indices)
    fired = values != 0
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-15)
    torch.testing.assert_close(grads[1][fired], ref_grad[fired], rtol=1e-12, atol=1e-15)


def test_pairs_with_no_firing_pairs():
    values = torch.zeros(3, 4, dtype=DT, requires_grad=True)
    indices = torch.arange(12).view(3, 4)
    codes = Codes.from_topk(values, indices, 16)
    assert coactive_pairs(codes, 5).keys.numel() == 0
    calls = []
    loss = pair_loss(codes, lambda chunk: calls.append(chunk), 5, boundaries=[1])
    loss.backward()
    assert calls == [] and loss.item() == 0.0 and torch.equal(values.grad, torch.zeros_like(values))
