"""featsep.data.harvest: activations without special positions and the normalisation factor."""

from __future__ import annotations


import pytest
import torch

from featsep.data import (
    ActivationStream,
    estimate_normalization_factor,
    harvest_batch,
)
from tests.data.helpers import D, HOOK, N_WORDS, packed_rows, stream_kwargs
from tests.helpers import BOS, EOS, PAD


def test_harvest_drops_special_positions(word_lm):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 4 + N_WORDS, (3, 10), generator=g)
    ids[:, 0] = BOS
    ids[1, 4] = EOS
    ids[2, 7] = PAD
    ids[0, 5] = BOS
    chunk = harvest_batch(word_lm, ids, HOOK, first_context=100, special_ids=word_lm.special_token_ids)
    full = word_lm.forward_to_hook(ids, None, HOOK).float()
    keep = ~torch.isin(ids, torch.tensor([PAD, EOS, BOS]))
    assert len(chunk) == int(keep.sum()) == 30 - 6
    torch.testing.assert_close(chunk.acts, full[keep], rtol=0, atol=0)
    assert chunk.acts.dtype == torch.float32 and chunk.acts.device.type == "cpu"
    ctx, pos, tok = chunk.index.unbind(1)
    assert torch.equal(tok, ids[keep]) and set(ctx.tolist()) == {100, 101, 102}
    for c, p, t in chunk.index.tolist():
        assert ids[c - 100, p] == t


def test_normalization_factor_makes_mean_sq_norm_d():
    x = torch.randn(500, 24) * 37.0 + 5.0
    factor = estimate_normalization_factor(x)
    assert ((x * factor).pow(2).sum(1).mean()).item() == pytest.approx(24, rel=1e-5)
    assert estimate_normalization_factor([x[:100], x[100:]]) == pytest.approx(factor, rel=1e-12)
    stream = ActivationStream.from_tensor(x, batch_size=100, sequence_mode=True, normalize=True, repeat=False)
    rows = torch.cat(list(stream))
    assert rows.pow(2).sum(1).mean().item() == pytest.approx(24, rel=1e-5)
    assert stream.normalization_factor == pytest.approx(factor)


def test_live_stream_normalises_from_first_batches(word_lm, word_corpus):
    stream = ActivationStream.from_lm(word_lm, word_corpus, HOOK, **stream_kwargs(shuffle_buffer=0, norm_estimate_batches=3))
    seq = torch.cat([next(stream) for _ in range(4)])
    # reference: the first 3 LM batches (4 contexts each), special positions dropped by hand
    ids = torch.stack(list(packed_rows(word_lm, word_corpus))[:12])
    raw = torch.cat([word_lm.forward_to_hook(ids[i : i + 4], None, HOOK).float() for i in range(0, 12, 4)])
    raw = raw[~torch.isin(ids, torch.tensor([PAD, EOS, BOS]))]
    factor = (D / raw.pow(2).sum(1).mean()).sqrt().item()
    assert stream.normalization_factor == pytest.approx(factor, rel=1e-6)
    assert (raw * factor).pow(2).sum(1).mean().item() == pytest.approx(D, rel=1e-5)
    n = min(len(raw), len(seq))
    torch.testing.assert_close(seq[:n], raw[:n] * stream.normalization_factor, rtol=1e-6, atol=1e-6)


def test_live_source_ranks_split_lm_batches_disjointly_and_match_one_process(word_lm, word_corpus):
    from featsep.data import LiveSource

    def chunks(rank=0, world_size=1):
        source = LiveSource(word_lm, word_corpus, HOOK, context_length=16, lm_batch_size=4, repeat=False,
                            rank=rank, world_size=world_size)
        return list(source.chunks())

    whole = chunks()
    parts = [chunks(r, 3) for r in range(3)]
    # rank r holds LM batches r, r+3, ...: the single-process chunks, dealt round-robin
    assert [len(p) for p in parts] == [len(whole[r::3]) for r in range(3)]
    for r, part in enumerate(parts):
        for mine, theirs in zip(part, whole[r::3]):
            assert torch.equal(mine.index, theirs.index) and torch.equal(mine.acts, theirs.acts)
    with pytest.raises(Exception, match="rank 3 is not one of the 3 ranks"):
        LiveSource(word_lm, word_corpus, HOOK, rank=3, world_size=3)


def test_first_chunks_factor_summed_over_ranks_is_the_factor_of_all_their_chunks():
    from featsep.data.harvest import ActivationChunk, first_chunks_factor

    g = torch.Generator().manual_seed(0)
    ranks = [[ActivationChunk(torch.randn(n, 8, generator=g) * (r + 1), torch.zeros(n, 3, dtype=torch.long))
              for n in (5, 7, 3)] for r in range(2)]
    stats = [torch.tensor([sum(float(c.acts.double().pow(2).sum()) for c in part[:2]), 12.0], dtype=torch.float64)
             for part in ranks]
    total = stats[0] + stats[1]  # what an all-reduce "sum" over the two ranks returns
    for part in ranks:
        factor, first = first_chunks_factor(iter(part), 2, reduce_sum=lambda t: total)
        assert factor == pytest.approx(estimate_normalization_factor([c.acts for p in ranks for c in p[:2]]), rel=1e-12)
        assert first == part[:2]
