"""featsep.data: text sources, packing, harvesting, buffers, stream resume, on-disk cache."""

from __future__ import annotations

import io
import json
import random
from itertools import islice

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from featsep.data import (
    ActivationCache,
    ActivationStream,
    CacheError,
    DataError,
    build_cache,
    estimate_normalization_factor,
    harvest_batch,
    load_bbc_news,
    pack_token_lists,
    pack_tokens,
    pack_tokens_reference,
    text_source,
)
from featsep import hub
from featsep.lm import LanguageModel

PAD, EOS, BOS, UNK = 0, 1, 2, 3
N_WORDS = 40
WORD_ID = {f"w{i}": i + 4 for i in range(N_WORDS)}
HOOK = "blocks.1.hook_resid_post"
D = 32


def make_tokenizer(adds_bos: bool = False) -> PreTrainedTokenizerFast:
    vocab = {"<pad>": PAD, "<eos>": EOS, "<bos>": BOS, "<unk>": UNK, **WORD_ID}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if adds_bos:  # like Gemma's tokenizer, which prepends BOS itself
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", BOS)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>"
    )


def make_lm(seed: int = 0) -> LanguageModel:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=4 + N_WORDS, hidden_size=D, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
    )
    return LanguageModel.from_hf(LlamaForCausalLM(config), make_tokenizer(), name="tiny-llama")


def random_docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        words = [f"w{rng.randrange(N_WORDS)}" for _ in range(rng.randint(3, 40))]
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words)), "<eos>")  # a real EOS inside a document
        docs.append(" ".join(words))
    return docs


@pytest.fixture(scope="module")
def lm():
    return make_lm()


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(random_docs(120))))
    return str(path)


def stream_kwargs(**over):
    kw = dict(batch_size=64, context_length=16, lm_batch_size=4, norm_estimate_batches=2, shuffle_buffer=8)
    kw.update(over)
    return kw


# ---------------------------------------------------------------------------- packing


def test_pack_tokens_hand_checked():
    tok = make_tokenizer(adds_bos=True)  # packing must not take the tokenizer's own BOS
    w = WORD_ID
    rows = list(pack_tokens(["w1 w2 w3", "w4 w5", "", "w6 w7 w8 w9 w10"], tok, context_length=4))
    assert [r.tolist() for r in rows] == [
        [BOS, w["w1"], w["w2"], w["w3"]],  # a document starting a row gets one BOS, not two
        [BOS, w["w4"], w["w5"], BOS],  # BOS between documents; empty documents add nothing
        [BOS, w["w6"], w["w7"], w["w8"]],
    ]  # the incomplete last row (w9 w10) is dropped
    assert all(r.dtype == torch.long and r.shape == (4,) for r in rows)


def test_pack_fast_equals_saelens_reference():
    for trial in range(1500):
        rng = random.Random(trial)
        length = rng.choice([2, 3, 4, 5, 8, 16])
        docs = []
        for _ in range(rng.randint(0, 12)):
            n = rng.choice([0, 1, 2, length - 1, length, length + 1, rng.randint(0, 3 * length)])
            docs.append([BOS if rng.random() < 0.1 else rng.randint(4, 12) for _ in range(n)])
        fast = [r.tolist() for r in pack_token_lists(docs, length, BOS)]
        ref = [r.tolist() for r in pack_tokens_reference(docs, length, BOS)]
        assert fast == ref, (trial, length, docs)


def test_pack_errors():
    tok = make_tokenizer()
    with pytest.raises(DataError, match="context_length"):
        list(pack_tokens(["w1"], tok, context_length=1))
    tok_no_bos = make_tokenizer()
    tok_no_bos.bos_token = None
    with pytest.raises(DataError, match="bos_token_id"):
        list(pack_tokens(["w1"], tok_no_bos, context_length=4))


# ---------------------------------------------------------------------------- text sources


def test_local_file_sources(tmp_path):
    docs = ["first doc, with a comma", "second\nwith a newline", "third"]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    import csv

    with open(tmp_path / "b.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "body"])
        writer.writeheader()
        writer.writerows({"id": i, "body": d} for i, d in enumerate(docs))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": docs, "n": [1, 2, 3]}), tmp_path / "c.parquet")
    for name in ("a.jsonl", "b.csv", "c.parquet"):
        assert list(text_source(str(tmp_path / name), text_column="body")) == docs
    sub = tmp_path / "txt"
    sub.mkdir()
    for i, d in enumerate(docs):
        (sub / f"{i}.txt").write_text(d)
    (sub / "notes.md").write_text("ignored")
    assert list(text_source(str(sub))) == docs  # a .txt file is one document, sorted by path
    # a directory mixes formats, each file read with its own reader, in sorted path order
    assert list(text_source(str(tmp_path), text_column="body")) == docs * 3 + docs


def test_text_source_errors(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"content": "x"}) + "\n")
    with pytest.raises(DataError, match=r"no column\(s\) 'text' \(columns: content\); pass text_column"):
        list(text_source(str(tmp_path / "a.jsonl")))
    (tmp_path / "b.csv").write_text("content\nx\n")
    with pytest.raises(DataError, match=r"b.csv: no column\(s\) 'text' \(columns: content\)"):
        list(text_source(str(tmp_path / "b.csv")))
    (tmp_path / "empty.jsonl").write_text(json.dumps({"text": "  "}) + "\n")
    with pytest.raises(DataError, match="empty corpus"):
        list(text_source(str(tmp_path / "empty.jsonl")))
    with pytest.raises(DataError, match="no such file"):
        text_source(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="unknown dataset 'bbc_news'.*bbc-news"):
        text_source("bbc_news")
    (tmp_path / "x.docx").write_text("?")
    with pytest.raises(DataError, match="unsupported file type"):
        text_source(str(tmp_path / "x.docx"))
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(DataError, match="no readable text files"):
        text_source(str(tmp_path / "emptydir"))


def test_hf_dataset_offline_fails_fast_naming_bbc(monkeypatch):
    monkeypatch.setattr(hub, "offline", lambda: False)
    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: False)
    with pytest.raises(DataError, match="bbc-news"):
        text_source("Skylion007/openwebtext")


def test_hf_dataset_streams_through_datasets(monkeypatch):
    import datasets

    calls = {}

    class FakeStream:
        column_names = ["text", "meta"]

        def shuffle(self, seed, buffer_size):
            calls["shuffle"] = seed
            return self

        def __iter__(self):
            return iter([{"text": "hello", "meta": 1}, {"text": "world", "meta": 2}])

    def fake_load_dataset(name, split, streaming):
        calls.update(name=name, split=split, streaming=streaming)
        return FakeStream()

    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert list(text_source("monology/pile-uncopyrighted", seed=7)) == ["hello", "world"]
    assert calls == {"name": "monology/pile-uncopyrighted", "split": "train", "streaming": True, "shuffle": 7}
    with pytest.raises(DataError, match="no column\\(s\\) 'body'"):
        text_source("monology/pile-uncopyrighted", text_column="body")


def test_bbc_news():
    articles = load_bbc_news()
    assert len(articles) == 2225
    counts = {}
    for _, topic in articles:
        counts[topic] = counts.get(topic, 0) + 1
    assert counts == {"business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401}
    first = list(text_source("bbc-news"))
    assert sorted(first) == sorted(t for t, _ in articles)  # every article once
    assert first == list(text_source("bbc-news"))  # seeded
    assert first[:20] != list(text_source("bbc-news", seed=1))[:20]
    assert len({topic for _, topic in articles if _ in set(first[:50])}) > 1  # topics are mixed


# ---------------------------------------------------------------------------- harvesting


def test_harvest_drops_special_positions(lm):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 4 + N_WORDS, (3, 10), generator=g)
    ids[:, 0] = BOS
    ids[1, 4] = EOS
    ids[2, 7] = PAD
    ids[0, 5] = BOS
    chunk = harvest_batch(lm, ids, HOOK, first_context=100, special_ids=lm.special_token_ids)
    full = lm.forward_to_hook(ids, None, HOOK).float()
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


def test_live_stream_normalises_from_first_batches(lm, corpus):
    stream = ActivationStream.from_lm(lm, corpus, HOOK, **stream_kwargs(shuffle_buffer=0, norm_estimate_batches=3))
    seq = torch.cat([next(stream) for _ in range(4)])
    # reference: the first 3 LM batches (4 contexts each), special positions dropped by hand
    ids = torch.stack(list(_packed(lm, corpus))[:12])
    raw = torch.cat([lm.forward_to_hook(ids[i : i + 4], None, HOOK).float() for i in range(0, 12, 4)])
    raw = raw[~torch.isin(ids, torch.tensor([PAD, EOS, BOS]))]
    factor = (D / raw.pow(2).sum(1).mean()).sqrt().item()
    assert stream.normalization_factor == pytest.approx(factor, rel=1e-6)
    assert (raw * factor).pow(2).sum(1).mean().item() == pytest.approx(D, rel=1e-5)
    n = min(len(raw), len(seq))
    torch.testing.assert_close(seq[:n], raw[:n] * stream.normalization_factor, rtol=1e-6, atol=1e-6)


def _packed(lm, corpus):
    return pack_tokens(text_source(corpus), lm.tokenizer, 16, lm.bos_token_id)


# ---------------------------------------------------------------------------- buffer / stream


def _rows_sorted(x: torch.Tensor) -> torch.Tensor:
    return x[np.lexsort(x.numpy().T[::-1])]


def test_shuffle_buffer_same_rows_new_order_seeded():
    x = torch.arange(1000 * 3, dtype=torch.float32).reshape(1000, 3)
    def run(seed, **kw):
        return torch.cat(list(ActivationStream.from_tensor(x, batch_size=50, shuffle_buffer=2, seed=seed, repeat=False, **kw)))
    a, b, c = run(1), run(1), run(2)
    assert a.shape == (1000, 3)
    assert torch.equal(_rows_sorted(a), x)  # every row exactly once
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


def test_sequence_mode_keeps_context_order(lm, corpus):
    stream = ActivationStream.from_lm(lm, corpus, HOOK, **stream_kwargs(sequence_mode=True, normalize=False))
    idx = []
    for _ in range(5):
        next(stream)
        idx.append(torch.stack([stream.last_context_ids, stream.last_positions, stream.last_token_ids], 1))
    idx = torch.cat(idx)
    key = idx[:, 0] * 1000 + idx[:, 1]
    assert torch.all(key[1:] > key[:-1])  # strictly increasing (context, position)
    assert not torch.isin(idx[:, 2], torch.tensor([PAD, EOS, BOS])).any()
    assert idx[0, 0] == 0 and idx[0, 1] == 1  # position 0 (BOS) is excluded


def _resume_check(make_stream, k=3, m=4):
    a = make_stream()
    for _ in range(k):
        next(a)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    want = [next(a) for _ in range(m)]
    b = make_stream()
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    got = [next(b) for _ in range(m)]
    for w, g in zip(want, got):
        assert torch.equal(w, g)
    assert b.tokens_seen == a.tokens_seen and b.normalization_factor == a.normalization_factor
    return a, b


def test_stream_resume_tensor():
    x = torch.randn(700, 5)
    _resume_check(lambda: ActivationStream.from_tensor(x, batch_size=40, shuffle_buffer=1), k=20, m=15)


def test_stream_resume_live_without_rerunning_lm(lm, corpus, monkeypatch):
    contexts_forwarded = []
    original = lm.forward_to_hook

    def counting(ids, mask, hook):
        contexts_forwarded.append(ids.shape[0])
        return original(ids, mask, hook)

    monkeypatch.setattr(lm, "forward_to_hook", counting)
    make = lambda: ActivationStream.from_lm(lm, corpus, HOOK, **stream_kwargs())
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


def test_stream_state_rejects_other_settings(lm, corpus):
    a = ActivationStream.from_tensor(torch.randn(300, 5), batch_size=40)
    next(a)
    with pytest.raises(DataError, match="batch_size"):
        ActivationStream.from_tensor(torch.randn(300, 5), batch_size=20).load_state_dict(a.state_dict())


# ---------------------------------------------------------------------------- cache


def cache_kwargs(**over):
    kw = dict(context_length=16, batch_size=4, shard_tokens=200, norm_estimate_batches=2, progress=False)
    kw.update(over)
    return kw


def test_cache_round_trip_equals_live_stream(lm, corpus, tmp_path):
    out = build_cache(lm, HOOK, corpus, 900, tmp_path / "c", **cache_kwargs())
    cache = ActivationCache(out)
    assert len(cache) == 900 and cache.n_shards == 5 and cache.d_in == D
    m = cache.manifest
    assert m["status"] == "complete" and m["model"] == "tiny-llama" and m["hook"] == HOOK
    assert [s["rows"] for s in m["shards"]] == [200, 200, 200, 200, 100]
    acts, index = cache.to_tensor()
    live = ActivationStream.from_lm(lm, corpus, HOOK, **stream_kwargs(batch_size=100, shuffle_buffer=0))
    want = torch.cat([next(live) for _ in range(9)])
    assert cache.normalization_factor == pytest.approx(live.normalization_factor, rel=1e-12)
    torch.testing.assert_close(acts, want, rtol=0, atol=0)
    stream = ActivationStream.from_cache(out, batch_size=100, sequence_mode=True, repeat=False)
    assert torch.equal(torch.cat(list(stream)), acts)
    shuffled = torch.cat(list(ActivationStream.from_cache(out, batch_size=100, shuffle_buffer=4, repeat=False)))
    assert torch.equal(_rows_sorted(shuffled), _rows_sorted(acts)) and not torch.equal(shuffled, acts)


def test_cache_float16(lm, corpus, tmp_path):
    out = build_cache(lm, HOOK, corpus, 300, tmp_path / "h", dtype="float16", **cache_kwargs())
    acts16, _ = ActivationCache(out).to_tensor()
    out32 = build_cache(lm, HOOK, corpus, 300, tmp_path / "f", **cache_kwargs())
    acts32, _ = ActivationCache(out32).to_tensor()
    torch.testing.assert_close(acts16, acts32.half().float(), rtol=0, atol=0)


def test_cache_detects_corruption_and_truncation(lm, corpus, tmp_path):
    out = build_cache(lm, HOOK, corpus, 600, tmp_path / "c", **cache_kwargs())
    shard = out / "shard_00001.npy"
    data = bytearray(shard.read_bytes())
    data[-7] ^= 0xFF
    shard.write_bytes(bytes(data))
    cache = ActivationCache(out)  # sizes still fine
    cache.shard(0)
    with pytest.raises(CacheError, match=r"shard 1 is corrupted.*shard_00001.npy.*checksum.*featsep cache"):
        cache.shard(1)
    with pytest.raises(CacheError, match="shard 1"):
        list(ActivationStream.from_cache(out, batch_size=50, sequence_mode=True, repeat=False))
    shard.write_bytes(bytes(data[:-100]))
    with pytest.raises(CacheError, match=r"shard 1 is corrupted.*truncated"):
        ActivationCache(out)


def test_cache_resume_equals_uninterrupted(lm, corpus, tmp_path):
    full = build_cache(lm, HOOK, corpus, 900, tmp_path / "full", **cache_kwargs())
    part = tmp_path / "part"
    build_cache(lm, HOOK, corpus, 900, part, max_shards=2, **cache_kwargs())
    with pytest.raises(CacheError, match="unfinished"):
        ActivationCache(part)
    build_cache(lm, HOOK, corpus, 900, part, **cache_kwargs())
    sums = lambda p: [(s["sha256"], s["index_sha256"]) for s in json.loads((p / "manifest.json").read_text())["shards"]]
    assert sums(part) == sums(full)
    # a corrupted shard is re-harvested (with everything after it) by running the build again
    shard = part / "shard_00002.npy"
    shard.write_bytes(shard.read_bytes()[:-10])
    build_cache(lm, HOOK, corpus, 900, part, **cache_kwargs())
    assert sums(part) == sums(full)
    assert torch.equal(ActivationCache(part).to_tensor()[0], ActivationCache(full).to_tensor()[0])


def test_cache_stream_resume(lm, corpus, tmp_path):
    out = build_cache(lm, HOOK, corpus, 900, tmp_path / "c", **cache_kwargs())
    _resume_check(lambda: ActivationStream.from_cache(out, batch_size=64, shuffle_buffer=2), k=9, m=10)


def test_cache_errors(lm, corpus, tmp_path):
    with pytest.raises(CacheError, match="not an activation cache"):
        ActivationCache(tmp_path)
    out = build_cache(lm, HOOK, corpus, 300, tmp_path / "c", **cache_kwargs())
    with pytest.raises(CacheError, match=r"other settings.*hook"):
        build_cache(lm, "blocks.0.hook_resid_post", corpus, 300, out, **cache_kwargs())
    with pytest.raises(DataError, match="dtype"):
        build_cache(lm, HOOK, corpus, 300, tmp_path / "d", dtype="int8", **cache_kwargs())
    # resume=False starts over in place
    build_cache(lm, "blocks.0.hook_resid_post", corpus, 300, out, resume=False, **cache_kwargs())
    assert ActivationCache(out).manifest["hook"] == "blocks.0.hook_resid_post"


def test_stream_from_config(lm, corpus, tmp_path):
    from featsep.config import RunConfig
    from featsep.data import stream_from_config

    out = build_cache(lm, HOOK, corpus, 300, tmp_path / "c", **cache_kwargs())
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
        "data": {"dataset": corpus, "context_length": 16, "norm_estimate_batches": 2},
        "train": {"batch_size": 64},
    })
    live = stream_from_config(cfg.model, cfg.data, cfg.train.batch_size, lm=lm)
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
