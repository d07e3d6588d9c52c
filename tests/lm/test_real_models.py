"""featsep.lm on the real offline models (minutes on first run: converts the GGUF files once)."""

from __future__ import annotations

import time

import pytest
import torch

from featsep.lm import list_models, load_lm

pytestmark = pytest.mark.slow

TEXTS = [
    "The capital of France is",
    "Sparse autoencoders decompose the residual stream of a language model into features.",
    "In 1969, astronauts landed on the Moon and walked on its surface for hours.",
]


@pytest.fixture(scope="module")
def gemma():
    load_lm("gemma-3-270m")  # converts once if the cache is cold
    started = time.perf_counter()
    lm = load_lm("gemma-3-270m")
    return lm, time.perf_counter() - started


def _top_tokens(lm, text: str, k: int) -> list[str]:
    ids, mask = lm.tokenize([text], max_length=32)
    logits = lm.logits(ids, mask)[0, -1]
    return [lm.tokenizer.decode([int(i)]).strip() for i in logits.topk(k).indices]


def test_gemma_facts_and_cached_reload(gemma):
    lm, reload_seconds = gemma
    assert reload_seconds < 30, f"cached reload took {reload_seconds:.1f} s"
    assert (lm.d_model, lm.n_layers, lm.architecture) == (640, 18, "gemma3_text")
    assert lm.dtype == torch.float32 and lm.tokenizer.padding_side == "right"
    assert lm.bos_token_id == 2 and lm.special_token_ids == {0, 1, 2}
    assert {m["name"]: m["cached"] for m in list_models()}["gemma-3-270m"]


def test_gemma_tokenize_one_bos(gemma):
    lm, _ = gemma
    ids, mask = lm.tokenize(TEXTS, max_length=16)
    assert ids.shape == (3, 16) and (ids[:, 0] == 2).all() and ((ids == 2).sum(1) == 1).all()
    assert mask[0].sum() < 16 and (ids[0][mask[0] == 0] == lm.pad_token_id).all()


def test_gemma_predicts_and_hooks_agree(gemma):
    lm, _ = gemma
    assert "Paris" in _top_tokens(lm, "The capital of France is", k=5)
    ids, mask = lm.tokenize(TEXTS, max_length=24)
    acts = lm.forward_to_hook(ids, mask, "blocks.8.hook_resid_post")
    with torch.no_grad():
        hidden = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    torch.testing.assert_close(acts, hidden[9], rtol=1e-4, atol=1e-2)
    clean = lm.logits(ids, mask)
    spliced = lm.run_with_hook(ids, mask, "blocks.8.hook_resid_post", lambda x: x)
    torch.testing.assert_close(spliced, clean)


def test_gemma_activation_norms(gemma):
    lm, _ = gemma
    ids, mask = lm.tokenize(TEXTS, max_length=32)
    norms = lm.forward_to_hook(ids, mask, "blocks.8.hook_resid_post").norm(dim=-1)
    bos_norms = norms[:, 0]
    other = norms[:, 1:][mask[:, 1:].bool()]
    assert (bos_norms > 10_000).all() and (bos_norms < 200_000).all(), bos_norms
    assert 300 < other.median() < 30_000, other.median()
    assert bos_norms.min() > 4 * other.median()


def test_smollm2_loads_and_predicts():
    lm = load_lm("smollm2-135m-instruct")
    assert (lm.d_model, lm.n_layers, lm.architecture) == (576, 30, "llama")
    assert lm.tokenizer.padding_side == "right"
    assert "Paris" in _top_tokens(lm, "The capital of France is", k=5)
    ids, mask = lm.tokenize(TEXTS, max_length=16)
    assert lm.forward_to_hook(ids, mask, "blocks.29.hook_resid_post").shape == (3, 16, 576)
