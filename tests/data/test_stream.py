"""featsep.data.stream and buffer: shuffling, sequence mode, resume, streams from a config; a slow real-model check."""

from __future__ import annotations

from itertools import islice

import pytest
import torch

from featsep.data import (
    ActivationCache,
    ActivationStream,
    DataError,
    build_cache,
    pack_tokens,
    text_source,
)
from tests.data.helpers import D, HOOK, cache_kwargs, resume_check, rows_sorted, stream_kwargs
from tests.helpers import BOS, EOS, PAD


def test_shuffle_buffer_same_rows_new_order_seeded():
    x = torch.arange(1000 * 3, dtype=torch.float32).reshape(1000, 3)
    def run(seed, **kw):
        return torch.cat(list(ActivationStream.from_tensor(x, batch_size=50, shuffle_buffer=2, seed=seed, repeat=False, **kw)))
    a, b, c = run(1), run(1), run(2)
    assert a.shape == (1000, 3)
    assert torch.equal(rows_sorted(a), x)  # every row exactly once
    assert not torch.equal(a, x) and torch.equal(a, b) and not torch.equal(a, c)
    # rows travel far: the first batch draws from many places
    first = a[:50, 0] / 3
    assert first.max() - first.min() > 300
    seq = torch.cat(list(ActivationStream.from_tensor(x, batch_size=50, sequence_mode=True, repeat=False)))
    assert torch.equal(seq, x)


def test_exact_batch_size_and_repeat():
    x = torch.randn(130, 4)
    once = list(ActivationStream.from_tensor(x, batch_size=50, repeat=False))
    assert [b.shape[0] for b in once] == [50, 50]  # the partial last batch is dropped
    forever = ActivationStream.from_tensor(x, batch_size=50, sequence_mode=True)
    got = torch.cat([next(forever) for _ in range(6)])
    assert torch.equal(got[:130], x) and torch.equal(got[130:260], x)  # epoch 2 restarts
    assert forever.tokens_seen == 300


def test_sequence_mode_keeps_context_order(word_lm, word_corpus):
    stream = ActivationStream.from_lm(word_lm, word_corpus, HOOK, **stream_kwargs(sequence_mode=True, normalize=False))
    idx = []
    for _ in range(5):
        next(stream)
        idx.append(torch.stack([stream.last_context_ids, stream.last_positions, stream.last_token_ids], 1))
    idx = torch.cat(idx)
    key = idx[:, 0] * 1000 + idx[:, 1]
    assert torch.all(key[1:] > key[:-1])  # strictly increasing (context, position)
    assert not torch.isin(idx[:, 2], torch.tensor([PAD, EOS, BOS])).any()
    assert idx[0, 0] == 0 and idx[0, 1] == 1  # position 0 (BOS) is excluded


def test_stream_resume_tensor():
    x = torch.randn(700, 5)
    resume_check(lambda: ActivationStream.from_tensor(x, batch_size=40, shuffle_buffer=1), k=20, m=15)


def test_stream_resume_live_without_rerunning_lm(word_lm, word_corpus, monkeypatch):
    contexts_forwarded = []
    original = word_lm.forward_to_hook

    def counting(ids, mask, hook):
        contexts_forwarded.append(ids.shape[0])
        return original(ids, mask, hook)

    monkeypatch.setattr(word_lm, "forward_to_hook", counting)
    make = lambda: ActivationStream.from_lm(word_lm, word_corpus, HOOK, **stream_kwargs())
    a = make()
    for _ in range(6):
        next(a)
    state = a.state_dict()
    resumed_at = state["source"]["contexts_done"]
    want = [next(a) for _ in range(8)]
    contexts_forwarded.clear()
    b = make()
    b.load_state_dict(state)
    got = [next(b) for _ in range(8)]
    assert all(torch.equal(w, g) for w, g in zip(want, got))
    assert resumed_at > 0
    # b ran the LM only on contexts after the resume point
    assert sum(contexts_forwarded) == b.source.contexts_done - resumed_at


def test_stream_state_rejects_other_settings(word_lm, word_corpus):
    a = ActivationStream.from_tensor(torch.randn(300, 5), batch_size=40)
    next(a)
    with pytest.raises(DataError, match="batch_size"):
        ActivationStream.from_tensor(torch.randn(300, 5), batch_size=20).load_state_dict(a.state_dict())
    # the same batch size with another mixing buffer would continue a different shuffle
    b = ActivationStream.from_tensor(torch.randn(300, 5), batch_size=40, shuffle_buffer=8)
    next(b)
    with pytest.raises(DataError, match="mixing buffer of 1024 rows but this stream's holds 32768"):
        ActivationStream.from_tensor(torch.randn(300, 5), batch_size=40).load_state_dict(b.state_dict())


def test_stream_from_config(word_lm, word_corpus, tmp_path):
    from featsep.config import RunConfig
    from featsep.data import stream_from_config

    out = build_cache(word_lm, HOOK, word_corpus, 300, tmp_path / "c", **cache_kwargs())
    cfg = RunConfig.model_validate({
        "model": {"name": "tiny-llama", "hook": HOOK},
        "data": {"cache": str(out), "context_length": 16, "shuffle_buffer": 0},
        "train": {"batch_size": 100},
    })
    stream = stream_from_config(cfg.model, cfg.data, cfg.train.batch_size)
    assert torch.equal(torch.cat([next(stream) for _ in range(3)]), ActivationCache(out).to_tensor()[0])
    cfg.model.hook = "blocks.0.hook_resid_post"
    with pytest.raises(DataError, match="hook"):
        stream_from_config(cfg.model, cfg.data, cfg.train.batch_size)
    cfg = RunConfig.model_validate({
        "model": {"name": "tiny-llama", "hook": HOOK, "batch_size": 4},
        "data": {"dataset": word_corpus, "context_length": 16, "norm_estimate_batches": 2},
        "train": {"batch_size": 64},
    })
    live = stream_from_config(cfg.model, cfg.data, cfg.train.batch_size, lm=word_lm)
    assert next(live).shape == (64, D) and live.normalization_factor > 0


@pytest.mark.slow
def test_real_gemma_stream_and_cache(tmp_path):
    from featsep.lm import load_lm

    lm = load_lm("gemma-3-270m")
    rows = list(islice(pack_tokens(text_source("bbc-news"), lm.tokenizer, 128, lm.bos_token_id), 4))
    assert all(r[0] == lm.bos_token_id for r in rows)
    stream = ActivationStream.from_lm(lm, "bbc-news", "blocks.8.hook_resid_post", batch_size=512,
                                      lm_batch_size=4, norm_estimate_batches=1, shuffle_buffer=0)
    batch = next(stream)
    assert batch.shape == (512, 640) and torch.isfinite(batch).all()
    assert batch.pow(2).sum(1).mean().item() == pytest.approx(640, rel=0.05)  # BOS (norm ~55k) excluded
    out = build_cache(lm, "blocks.8.hook_resid_post", "bbc-news", 1000, tmp_path / "c", batch_size=4,
                      shard_tokens=400, norm_estimate_batches=1, progress=False)
    acts, _ = ActivationCache(out).to_tensor()
    torch.testing.assert_close(acts[:512], batch, rtol=0, atol=0)
