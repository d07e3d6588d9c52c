"""featsep.data.cache: the on-disk activation cache round-trips, resumes and detects damage."""

from __future__ import annotations

import errno
import json

import numpy as np
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


def _edit_manifest(out, **shard0):
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"][0].update(shard0)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return manifest


REBUILD = ("fix: rebuild the cache (the same `featsep cache ...` command with --no-resume, or into a fresh "
           "--out directory)")


def test_shard_dtype_and_shape_are_checked_against_the_manifest(word_lm, word_corpus, tmp_path):
    """A shard of another dtype (an int32 one has the recorded byte size) or shape fails on open."""
    out = build_cache(word_lm, HOOK, word_corpus, 300, tmp_path / "c", **cache_kwargs())
    shard, index = out / "shard_00000.npy", out / "shard_00000.index.npy"
    good = np.load(shard)
    for bad, holds in ((good.view(np.int32), "int32 [200, 32]"), (good.astype(np.float16), "float16 [200, 32]"),
                       (good[:, :16], "float32 [200, 16]")):
        np.save(shard, bad)
        with pytest.raises(CacheError) as e:
            ActivationCache(out, verify=False)
        assert str(e.value) == f"activation cache {out}: shard_00000.npy holds {holds} but the manifest says float32 [200, 32]; {REBUILD}"
    np.save(shard, good)
    np.save(index, np.load(index).astype(np.int32))
    with pytest.raises(CacheError, match=r"shard_00000.index.npy holds int32 \[200, 3\] but the manifest says int64 \[200, 3\]"):
        ActivationCache(out)
    build_cache(word_lm, HOOK, word_corpus, 300, out, resume=False, **cache_kwargs())
    manifest = json.loads((out / "manifest.json").read_text())
    for dtype in ("int32", "bfloat16"):
        (out / "manifest.json").write_text(json.dumps({**manifest, "dtype": dtype}))
        with pytest.raises(CacheError) as e:
            ActivationCache(out)
        assert str(e.value) == (f"{out / 'manifest.json'} says dtype {dtype!r}, which a cache cannot hold "
                                f"(only float32, float16); {REBUILD}")
    (out / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "d_in"}))
    with pytest.raises(CacheError, match=rf"manifest.json lacks d_in; {REBUILD[:20]}"):
        ActivationCache(out)


@pytest.mark.parametrize("name", ["../victim.npy", "{outside}", "sub/shard_00000.npy", "..", "", "link.npy"])
def test_manifest_file_names_stay_inside_the_cache(word_lm, word_corpus, tmp_path, name):
    """An edited manifest can make featsep neither read nor delete a file outside the cache."""
    out = build_cache(word_lm, HOOK, word_corpus, 300, tmp_path / "c", **cache_kwargs())
    fresh = json.loads((out / "manifest.json").read_text())
    victim = tmp_path / "victim.npy"
    np.save(victim, np.load(out / "shard_00000.npy"))
    before = victim.read_bytes()
    (out / "sub").mkdir()
    (out / "link.npy").symlink_to(victim)
    name = name.format(outside=victim)
    _edit_manifest(out, file=name)
    with pytest.raises(CacheError, match=r"manifest.json(:| names the) shard file .*(plain file names|leads outside)"):
        ActivationCache(out)
    # resuming reads only the names it writes: shard 0 is harvested again, the outside file is left alone
    build_cache(word_lm, HOOK, word_corpus, 300, out, **cache_kwargs())
    assert victim.read_bytes() == before and (out / "link.npy").is_symlink()
    assert json.loads((out / "manifest.json").read_text())["shards"] == fresh["shards"]


def test_a_full_disk_is_one_line_and_keeps_the_finished_shards(word_lm, word_corpus, tmp_path, monkeypatch):
    out = tmp_path / "c"
    build_cache(word_lm, HOOK, word_corpus, 900, out, max_shards=2, **cache_kwargs())
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_save, saves = np.save, []

    def save_until_full(f, array, **kw):  # the index file of the third shard hits a full disk
        saves.append(array.shape)
        if len(saves) == 2:
            f.write(b"\x93NUMPY partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(f, array, **kw)

    monkeypatch.setattr(np, "save", save_until_full)
    with pytest.raises(CacheError) as e:
        build_cache(word_lm, HOOK, word_corpus, 900, out, **cache_kwargs())
    assert str(e.value) == (
        f"no space left on device while writing {out / 'shard_00002.index.npy'}; free space (then run the same "
        "command again: it resumes after the last finished shard) or choose another --out directory"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no new shard file, no temp file
    monkeypatch.setattr(np, "save", real_save)
    build_cache(word_lm, HOOK, word_corpus, 900, out, **cache_kwargs())
    full = build_cache(word_lm, HOOK, word_corpus, 900, tmp_path / "full", **cache_kwargs())
    assert torch.equal(ActivationCache(out).to_tensor()[0], ActivationCache(full).to_tensor()[0])


def test_a_cache_of_text_in_another_encoding(word_lm, word_corpus, tmp_path):
    """encoding reaches the harvest, is part of what a resumed build must match, and a manifest
    from before the field resumes as utf-8."""
    text = open(word_corpus, encoding="utf-8").read().replace("w1 ", "w1 caf\u00e9 ")
    latin = tmp_path / "latin.jsonl"
    latin.write_text(text, encoding="latin-1")
    utf8 = tmp_path / "utf8.jsonl"
    utf8.write_text(text, encoding="utf-8")
    a = build_cache(word_lm, HOOK, str(latin), 300, tmp_path / "a", encoding="latin-1", **cache_kwargs())
    b = build_cache(word_lm, HOOK, str(utf8), 300, tmp_path / "b", **cache_kwargs())
    assert torch.equal(ActivationCache(a).to_tensor()[0], ActivationCache(b).to_tensor()[0])
    with pytest.raises(DataError, match=r"latin.jsonl: line \d+: bytes b'\\xe9' are not valid utf-8"):
        build_cache(word_lm, HOOK, str(latin), 300, tmp_path / "u", **cache_kwargs())
    with pytest.raises(CacheError, match="other settings.*encoding: cache has 'latin-1', asked 'utf-8'"):
        build_cache(word_lm, HOOK, str(latin), 300, a, **cache_kwargs())
    manifest = json.loads((b / "manifest.json").read_text())
    del manifest["encoding"]
    (b / "manifest.json").write_text(json.dumps(manifest))
    build_cache(word_lm, HOOK, str(utf8), 300, b, **cache_kwargs())  # complete already: nothing to do
    assert json.loads((b / "manifest.json").read_text()) == manifest


def test_a_build_killed_after_its_first_shard_file_resumes(word_lm, word_corpus, tmp_path):
    """The manifest is written before the first shard, so shard files a kill left behind unrecorded
    are cleared by the next run instead of making it refuse the directory."""
    out = tmp_path / "c"
    build_cache(word_lm, HOOK, word_corpus, 300, out, max_shards=0, **cache_kwargs())
    assert json.loads((out / "manifest.json").read_text())["shards"] == []
    (out / "shard_00000.npy").write_bytes(b"unrecorded, half written")
    build_cache(word_lm, HOOK, word_corpus, 300, out, **cache_kwargs())
    full = build_cache(word_lm, HOOK, word_corpus, 300, tmp_path / "full", **cache_kwargs())
    assert torch.equal(ActivationCache(out).to_tensor()[0], ActivationCache(full).to_tensor()[0])
