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
