"""featsep.data.cache: the on-disk activation cache round-trips, resumes and detects damage."""

from __future__ import annotations

import json

import pytest
import torch

from featsep.data import (
    ActivationCache,
    ActivationStream,
    CacheError,
    DataError,
    build_cache,
)
from tests.data.helpers import D, HOOK, cache_kwargs, resume_check, rows_sorted, stream_kwargs


def test_cache_round_trip_equals_live_stream(word_lm, word_corpus, tmp_path):
    out = build_cache(word_lm, HOOK, word_corpus, 900, tmp_path / "c", **cache_kwargs())
    cache = ActivationCache(out)
    assert len(cache) == 900 and cache.n_shards == 5 and cache.d_in == D
    m = cache.manifest
    assert m["status"] == "complete" and m["model"] == "tiny-llama" and m["hook"] == HOOK
    assert [s["rows"] for s in m["shards"]] == [200, 200, 200, 200, 100]
    acts, index = cache.to_tensor()
    live = ActivationStream.from_lm(word_lm, word_corpus, HOOK, **stream_kwargs(batch_size=100, shuffle_buffer=0))
    want = torch.cat([next(live) for _ in range(9)])
    assert cache.normalization_factor == pytest.approx(live.normalization_factor, rel=1e-12)
    torch.testing.assert_close(acts, want, rtol=0, atol=0)
    stream = ActivationStream.from_cache(out, batch_size=100, sequence_mode=True, repeat=False)
    assert torch.equal(torch.cat(list(stream)), acts)
    shuffled = torch.cat(list(ActivationStream.from_cache(out, batch_size=100, shuffle_buffer=4, repeat=False)))
    assert torch.equal(rows_sorted(shuffled), rows_sorted(acts)) and not torch.equal(shuffled, acts)


def test_cache_float16(word_lm, word_corpus, tmp_path):
    out = build_cache(word_lm, HOOK, word_corpus, 300, tmp_path / "h", dtype="float16", **cache_kwargs())
    acts16, _ = ActivationCache(out).to_tensor()
    out32 = build_cache(word_lm, HOOK, word_corpus, 300, tmp_path / "f", **cache_kwargs())
    acts32, _ = ActivationCache(out32).to_tensor()
    torch.testing.assert_close(acts16, acts32.half().float(), rtol=0, atol=0)


def test_cache_detects_corruption_and_truncation(word_lm, word_corpus, tmp_path):
    out = build_cache(word_lm, HOOK, word_corpus, 600, tmp_path / "c", **cache_kwargs())
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


def test_cache_resume_equals_uninterrupted(word_lm, word_corpus, tmp_path):
    full = build_cache(word_lm, HOOK, word_corpus, 900, tmp_path / "full", **cache_kwargs())
    part = tmp_path / "part"
    build_cache(word_lm, HOOK, word_corpus, 900, part, max_shards=2, **cache_kwargs())
    with pytest.raises(CacheError, match="unfinished"):
        ActivationCache(part)
    build_cache(word_lm, HOOK, word_corpus, 900, part, **cache_kwargs())
    sums = lambda p: [(s["sha256"], s["index_sha256"]) for s in json.loads((p / "manifest.json").read_text())["shards"]]
    assert sums(part) == sums(full)
    # a corrupted shard is re-harvested (with everything after it) by running the build again
    shard = part / "shard_00002.npy"
    shard.write_bytes(shard.read_bytes()[:-10])
    build_cache(word_lm, HOOK, word_corpus, 900, part, **cache_kwargs())
    assert sums(part) == sums(full)
    assert torch.equal(ActivationCache(part).to_tensor()[0], ActivationCache(full).to_tensor()[0])


def test_cache_stream_resume(word_lm, word_corpus, tmp_path):
    out = build_cache(word_lm, HOOK, word_corpus, 900, tmp_path / "c", **cache_kwargs())
    resume_check(lambda: ActivationStream.from_cache(out, batch_size=64, shuffle_buffer=2), k=9, m=10)


def test_cache_errors(word_lm, word_corpus, tmp_path):
    with pytest.raises(CacheError, match="not an activation cache"):
        ActivationCache(tmp_path)
    out = build_cache(word_lm, HOOK, word_corpus, 300, tmp_path / "c", **cache_kwargs())
    with pytest.raises(CacheError, match=r"other settings.*hook"):
        build_cache(word_lm, "blocks.0.hook_resid_post", word_corpus, 300, out, **cache_kwargs())
    with pytest.raises(DataError, match="dtype"):
        build_cache(word_lm, HOOK, word_corpus, 300, tmp_path / "d", dtype="int8", **cache_kwargs())
    # resume=False starts over in place
    build_cache(word_lm, "blocks.0.hook_resid_post", word_corpus, 300, out, resume=False, **cache_kwargs())
    assert ActivationCache(out).manifest["hook"] == "blocks.0.hook_resid_post"
