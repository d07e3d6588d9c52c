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


def test_rank_row_slices_of_each_batch_make_up_the_one_process_batch():
    acts = torch.randn(4, 64, 8)
    whole = ActivationStream.from_tensor(acts, batch_size=32, shuffle_buffer=2, repeat=False)
    ranks = [ActivationStream.from_tensor(acts, batch_size=32, shuffle_buffer=2, repeat=False) for _ in range(4)]
    for stream, rank in zip(ranks, range(4)):
        stream.rows_of = (rank, 4)
    for batch in whole:
        parts = [next(s) for s in ranks]
        assert torch.equal(torch.cat(parts), batch)
        assert torch.equal(torch.cat([s.last_index for s in ranks]), whole.last_index)
    with pytest.raises(DataError, match="does not split over 3 ranks"):
        ActivationStream.from_tensor(acts, batch_size=32).__class__(ranks[0].source, batch_size=32, rows_of=(0, 3))


def test_pin_memory_pins_each_batch(monkeypatch):
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self.shape) or self.clone())
    stream = ActivationStream.from_tensor(torch.randn(256, 8), batch_size=32, repeat=False)
    stream.pin_memory = True
    batches = list(stream)
    assert pinned == [torch.Size([32, 8])] * len(batches) == [torch.Size([32, 8])] * 8


HOST_SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero")


def test_harvest_loop_makes_no_host_sync_per_step(word_lm, word_corpus, monkeypatch):
    """On a GPU each of these waits for the device; counted here on CPU (no CUDA needed) over
    the steady state of the live harvest loop (LM forward, special-token filter, mixing
    buffer, batches), by the code that makes the call: featsep's makes none; transformers'
    mask preparation makes one per LM forward (its packed-sequence check of the position ids;
    only a 4D mask avoids it, and that loses SDPA's causal fast path)."""
    import traceback

    stream = ActivationStream.from_lm(word_lm, word_corpus, HOOK, **stream_kwargs(normalize=False))
    next(stream)  # warm-up: the text source and the buffer's first fill
    calls = {"featsep": 0, "transformers": 0, "other": 0}
    forwards = [0]
    for name in HOST_SYNCS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            caller = next(f.filename for f in reversed(traceback.extract_stack()[:-1]) if "/torch/" not in f.filename)
            calls[next((k for k in ("featsep", "transformers") if f"/{k}/" in caller), "other")] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    forward = word_lm.forward_to_hook
    monkeypatch.setattr(word_lm, "forward_to_hook", lambda *a: forwards.__setitem__(0, forwards[0] + 1) or forward(*a))
    for _ in range(20):
        next(stream)
    monkeypatch.undo()
    assert forwards[0] > 10
    assert calls == {"featsep": 0, "transformers": forwards[0], "other": 0}
