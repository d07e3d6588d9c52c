"""What a user of `featsep cache` (and of a cache or a text file in `featsep train`/`eval`) sees
when the input is wrong: exit code 2, one line naming the cause and the fix, nothing changed."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import featsep.lm
from featsep.cli import app

HOOK = "blocks.1.hook_resid_post"
OFFLINE_FORMS = ("use a built-in offline model (gemma-3-270m, smollm2-135m-instruct; `featsep models` lists them), "
                 "a local model directory, a .gguf file, or a Hugging Face hub id such as google/gemma-2-2b")
REBUILD = ("fix: rebuild the cache (the same `featsep cache ...` command with --no-resume, or into a fresh "
           "--out directory)")


def _config(tmp_path, model_dir, corpus, cache) -> Path:
    path = tmp_path / "run.toml"
    path.write_text("\n".join([
        f'out_dir = "{tmp_path / "run"}"',
        "[model]", f'name = "{model_dir}"', f'hook = "{HOOK}"', "batch_size = 4",
        "[data]", f'dataset = "{corpus}"', "context_length = 16", "shuffle_buffer = 8", "norm_estimate_batches = 2",
        f'cache = "{cache}"',
        "[sae]", 'architecture = "topk"', "d_sae = 64", "k = 4",
        "[train]", "tokens = 256", "batch_size = 128", "log_every = 1", "lr = 1e-3",
    ]) + "\n")
    return path


def _files(*folders) -> dict:
    """Every file below `folders` with its bytes (what "nothing changed" compares)."""
    return {p: p.read_bytes() for f in folders for p in sorted(Path(f).rglob("*")) if p.is_file()}


def _one_line(result, line: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.output.endswith(f"\nerror: {line}\n") or result.output == f"error: {line}\n"
    assert result.output.count("error:") == 1 and "Traceback" not in result.output  # progress bars may come first


def _cache(tmp_path, tiny_llama_dir, checkpoint_corpus, *extra) -> CliRunner:
    return CliRunner().invoke(app, ["cache", "--model", str(tiny_llama_dir), "--hook", HOOK, "--dataset",
                                    str(checkpoint_corpus), "--tokens", "300", "--set", "data.context_length=16",
                                    "--set", "model.batch_size=4", "--set", "data.norm_estimate_batches=2", *extra])


@pytest.fixture
def built(tmp_path, tiny_llama_dir, checkpoint_corpus):
    """A finished cache and the run config that trains on it."""
    cache = tmp_path / "cache"
    config = _config(tmp_path, tiny_llama_dir, checkpoint_corpus, cache)
    done = CliRunner().invoke(app, ["cache", str(config), "--tokens", "300"])
    assert done.exit_code == 0, done.output
    return config, cache


@pytest.mark.parametrize("bad,holds", [(lambda a: a.view(np.int32), "int32 [300, 32]"),
                                       (lambda a: a.astype(np.float16), "float16 [300, 32]")])
def test_train_on_a_cache_whose_shard_has_another_dtype(built, bad, holds):
    config, cache = built
    np.save(cache / "shard_00000.npy", bad(np.load(cache / "shard_00000.npy")))
    before = _files(cache)
    result = CliRunner().invoke(app, ["train", str(config)])
    _one_line(result, f"activation cache {cache}: shard_00000.npy holds {holds} but the manifest says "
                      f"float32 [300, 32]; {REBUILD}")
    assert _files(cache) == before and not _files(config.parent / "run")  # the out_dir check may create it, empty


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd"])
def test_train_on_a_cache_whose_manifest_points_outside(built, name):
    config, cache = built
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["shards"][0]["file"] = name
    (cache / "manifest.json").write_text(json.dumps(manifest))
    before = _files(cache)
    result = CliRunner().invoke(app, ["train", str(config)])
    _one_line(result, f"{cache / 'manifest.json'} names the shard file {name!r}; shard files are plain file "
                      f"names inside the cache directory: {REBUILD}")
    assert _files(cache) == before and not _files(config.parent / "run")  # the out_dir check may create it, empty


def test_train_on_a_cache_whose_manifest_names_an_unsupported_dtype(built):
    config, cache = built
    manifest = json.loads((cache / "manifest.json").read_text())
    (cache / "manifest.json").write_text(json.dumps({**manifest, "dtype": "int32"}))
    before = _files(cache)
    result = CliRunner().invoke(app, ["train", str(config)])
    _one_line(result, f"{cache / 'manifest.json'} says dtype 'int32', which a cache cannot hold (only float32, "
                      f"float16); {REBUILD}")
    assert _files(cache) == before


@pytest.mark.parametrize("suffix,line", [(".jsonl", 3), (".csv", 4), (".txt", 3)])
def test_cache_of_text_that_is_not_utf8(tmp_path, tiny_llama_dir, suffix, line):
    corpus = tmp_path / f"latin{suffix}"
    rows = ["w1 w2 w3 " * 20, "w4 w5 " * 30, "w6 caf\u00e9 w7 " * 20]
    if suffix == ".jsonl":
        text = "".join(json.dumps({"text": r}, ensure_ascii=False) + "\n" for r in rows)
    elif suffix == ".csv":
        text = "text\n" + "".join(r + "\n" for r in rows)
    else:
        text = "\n".join(rows) + "\n"
    corpus.write_bytes(text.encode("latin-1"))
    result = _cache(tmp_path, tiny_llama_dir, corpus, "--out", str(tmp_path / "c"))
    _one_line(result, f"{corpus}: line {line}: bytes b'\\xe9' are not valid utf-8; name the file's encoding "
                      "(data.encoding, e.g. --set data.encoding=latin-1; others: utf-8, latin-1, cp1252, utf-16) "
                      "or re-save it as UTF-8")
    assert corpus.read_bytes() == text.encode("latin-1")
    assert not list((tmp_path / "c").glob("*"))  # the harvest failed before any shard or manifest
    ok = _cache(tmp_path, tiny_llama_dir, corpus, "--out", str(tmp_path / "c"), "--set", "data.encoding=latin-1")
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["encoding"] == "latin-1"


def test_cache_with_an_unknown_encoding(tmp_path, tiny_llama_dir, checkpoint_corpus):
    result = _cache(tmp_path, tiny_llama_dir, checkpoint_corpus, "--out", str(tmp_path / "c"),
                    "--set", "data.encoding=utf-9")
    assert result.exit_code == 2 and not (tmp_path / "c").exists()
    assert result.output == ("error: invalid config:\n  data.encoding: unknown text encoding 'utf-9'; use a Python "
                             "codec name such as utf-8, latin-1, cp1252, utf-16\n")  # the config's own error format


def test_cache_with_an_unknown_model(tmp_path, checkpoint_corpus, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = _files(checkpoint_corpus.parent)
    result = _cache(tmp_path, "gemma-3-270", checkpoint_corpus, "--out", str(tmp_path / "c"))
    _one_line(result, "unknown model 'gemma-3-270': not in the local HF cache and HF_HUB_OFFLINE is set; "
                      f"did you mean 'gemma-3-270m'? {OFFLINE_FORMS}")
    assert not (tmp_path / "c").exists() and _files(checkpoint_corpus.parent) == before


def test_eval_with_an_unknown_model(tmp_path, monkeypatch):
    from featsep import make_sae, save_sae

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sae_dir = tmp_path / "sae"
    save_sae(make_sae("topk", d_in=32, d_sae=64, k=4, hook_name=HOOK), sae_dir)
    before = _files(tmp_path)
    result = CliRunner().invoke(app, ["eval", str(sae_dir), "--evals", "core", "--model", "no-such-model"])
    _one_line(result, f"unknown model 'no-such-model': not in the local HF cache and HF_HUB_OFFLINE is set; {OFFLINE_FORMS}")
    assert _files(tmp_path) == before


@pytest.fixture
def unwritable_dir(tmp_path):
    """A directory this process cannot write to: a read-only one, or for root (who writes
    anywhere on a normal file system) a sysfs folder, which refuses even root."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    candidates = [folder, Path("/sys/kernel")]
    yield next((c for c in candidates if c.is_dir() and not _writable(c)), None) or pytest.skip("no unwritable dir")
    folder.chmod(0o755)


def _writable(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("below", ["", "new/cache"])
def test_cache_into_a_directory_it_cannot_write_fails_before_the_model_loads(
        tmp_path, checkpoint_corpus, unwritable_dir, monkeypatch, below):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the out dir was checked")

    monkeypatch.setattr(featsep.lm, "load_lm", never)
    out = unwritable_dir / below if below else unwritable_dir
    before = sorted(os.listdir(unwritable_dir))
    result = _cache(tmp_path, "gemma-3-270m", checkpoint_corpus, "--out", str(out))
    _one_line(result, f"cannot write to --out {out} (Permission denied); choose a directory you can write to")
    assert sorted(os.listdir(unwritable_dir)) == before


def test_cache_on_a_full_disk(tmp_path, tiny_llama_dir, checkpoint_corpus, monkeypatch):
    out = tmp_path / "c"
    real_save = np.save

    def full(f, array, **kwargs):
        f.write(b"\x93NUMPY")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    before = _files(checkpoint_corpus.parent)
    result = _cache(tmp_path, tiny_llama_dir, checkpoint_corpus, "--out", str(out))
    _one_line(result, f"no space left on device while writing {out / 'shard_00000.npy'}; free space (then run the "
                      "same command again: it resumes after the last finished shard) or choose another --out directory")
    assert [p.name for p in out.iterdir()] == ["manifest.json"]  # no shard, no temp file
    assert json.loads((out / "manifest.json").read_text())["shards"] == []
    assert _files(checkpoint_corpus.parent) == before
    monkeypatch.setattr(np, "save", real_save)
    again = _cache(tmp_path, tiny_llama_dir, checkpoint_corpus, "--out", str(out))
    assert again.exit_code == 0, again.output
    assert json.loads((out / "manifest.json").read_text())["tokens"] == 300
