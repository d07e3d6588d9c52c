"""featsep.lm on tiny random models of every supported architecture (no model files)."""

from __future__ import annotations


import pytest
import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from featsep.lm import LanguageModel, parse_hook
from featsep.lm.model import with_hidden_states
from tests.helpers import BOS, EOS, PAD
from tests.lm.helpers import ATTN, DECODER, IDS, N_LAYERS, VOCAB, WORDS, lm_llama, lm_tokenizer


# name -> (builder, attribute path of the final norm, which must not run when cut)
TINY_MODELS = {
    "gemma2": (lambda: Gemma2ForCausalLM(Gemma2Config(**DECODER, sliding_window=4, layer_types=ATTN)), "model.norm"),
    "gemma3_text": (
        lambda: Gemma3ForCausalLM(Gemma3TextConfig(**DECODER, sliding_window=4, layer_types=ATTN)),
        "model.norm",
    ),
    "llama": (lambda: LlamaForCausalLM(LlamaConfig(**DECODER)), "model.norm"),
    "qwen2": (lambda: Qwen2ForCausalLM(Qwen2Config(**DECODER)), "model.norm"),
    "gpt2": (
        lambda: GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=N_LAYERS, n_head=4, n_positions=64, **IDS)),
        "transformer.ln_f",
    ),
    "gpt_neox": (
        lambda: GPTNeoXForCausalLM(GPTNeoXConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=N_LAYERS,
            num_attention_heads=4, max_position_embeddings=64, **IDS,
        )),
        "gpt_neox.final_layer_norm",
    ),
}


def _attr(obj, path):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.fixture(scope="module", params=sorted(TINY_MODELS))
def tiny(request):
    torch.manual_seed(0)
    builder, final_norm = TINY_MODELS[request.param]
    model = builder()
    with torch.no_grad():  # random init leaves some norms at exactly 1/0; perturb so every weight matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return LanguageModel.from_hf(model, name=f"tiny-{request.param}"), final_norm


def _captured_full_forward(lm, ids, mask, layer):
    """Output of decoder layer `layer` during a plain full forward, plus the HF hidden_states."""
    store = {}
    handle = lm.layers[layer].register_forward_hook(
        lambda _m, _a, out: store.setdefault("acts", out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad():
            out = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
    finally:
        handle.remove()
    return store["acts"], out.hidden_states, out.logits


def test_facts(tiny):
    lm, _ = tiny
    assert lm.d_model == 32 and lm.n_layers == N_LAYERS
    assert lm.device == torch.device("cpu") and lm.dtype == torch.float32
    assert lm.architecture == lm.name.removeprefix("tiny-")
    assert lm.bos_token_id == BOS and lm.special_token_ids == {PAD, EOS, BOS}
    assert not lm.model.training


@pytest.mark.parametrize("layer", [0, 2, N_LAYERS - 1])
def test_forward_to_hook_matches_layer_output(tiny, batch, layer):
    lm, _ = tiny
    ids, mask = batch
    acts = lm.forward_to_hook(ids, mask, f"blocks.{layer}.hook_resid_post")
    expected, hidden_states, _ = _captured_full_forward(lm, ids, mask, layer)
    assert acts.shape == (3, 10, 32)
    torch.testing.assert_close(acts, expected, rtol=0, atol=1e-6)
    assert not acts.requires_grad and not acts.is_inference()
    if layer < N_LAYERS - 1:  # hook_resid_post L == hidden_states[L + 1], except after the last layer
        torch.testing.assert_close(acts, hidden_states[layer + 1], rtol=0, atol=1e-6)
    else:  # hidden_states[-1] has the final norm applied; the hook does not
        assert (acts - hidden_states[-1]).abs().max() > 1e-3


def test_right_padding_does_not_change_real_positions(tiny, batch):
    lm, _ = tiny
    ids, mask = batch
    hook = "blocks.2.hook_resid_post"
    padded = lm.forward_to_hook(ids, mask, hook)
    for row, length in enumerate((10, 7, 4)):
        alone = lm.forward_to_hook(ids[row : row + 1, :length], mask[row : row + 1, :length], hook)
        torch.testing.assert_close(padded[row, :length], alone[0], rtol=1e-5, atol=1e-5)


def test_forward_stops_after_hooked_layer(tiny, batch):
    lm, final_norm = tiny
    ids, mask = batch
    calls = {}
    hooks_before = [len(layer._forward_hooks) for layer in lm.layers]
    watched = {f"layer{i}": layer for i, layer in enumerate(lm.layers)}
    watched["final_norm"] = _attr(lm.model, final_norm)
    watched["lm_head"] = lm.model.get_output_embeddings()
    handles = [
        module.register_forward_hook(lambda _m, _a, _o, key=key: calls.__setitem__(key, calls.get(key, 0) + 1))
        for key, module in watched.items()
    ]
    try:
        lm.forward_to_hook(ids, mask, "blocks.1.hook_resid_post")
    finally:
        for h in handles:
            h.remove()
    assert calls == {"layer0": 1, "layer1": 1}
    assert [len(layer._forward_hooks) for layer in lm.layers] == hooks_before  # ours were removed


def test_run_with_hook_identity_and_zero_ablation(tiny, batch):
    lm, _ = tiny
    ids, mask = batch
    hook = "blocks.1.hook_resid_post"
    hooks_before = len(lm.layers[1]._forward_hooks)
    _, _, clean = _captured_full_forward(lm, ids, mask, 1)
    torch.testing.assert_close(lm.run_with_hook(ids, mask, hook, lambda x: x), clean, rtol=0, atol=1e-6)
    torch.testing.assert_close(lm.logits(ids, mask), clean, rtol=0, atol=1e-6)

    def zero_layer(_m, _a, out):
        return (torch.zeros_like(out[0]), *out[1:]) if isinstance(out, tuple) else torch.zeros_like(out)

    handle = lm.layers[1].register_forward_hook(zero_layer)
    try:
        with torch.no_grad():
            ablated = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    finally:
        handle.remove()
    ours = lm.run_with_hook(ids, mask, hook, torch.zeros_like)
    assert ours.shape == (3, 10, VOCAB)
    torch.testing.assert_close(ours, ablated, rtol=0, atol=1e-6)
    assert (ours - clean).abs().max() > 1e-3
    assert len(lm.layers[1]._forward_hooks) == hooks_before


def test_run_with_hook_rejects_wrong_shape(tiny, batch):
    lm, _ = tiny
    ids, mask = batch
    with pytest.raises(ValueError, match=r"shape \(3, 10, 32\)"):
        lm.run_with_hook(ids, mask, "blocks.0.hook_resid_post", lambda x: x[..., :5])
    lm.run_with_hook(ids, mask, "blocks.0.hook_resid_post", lambda x: x)  # the failed hook is gone


def test_hooked_forward_with_kv_cache_equals_one_full_forward(tiny, batch):
    """A prefix run with use_cache, then the rest on top of its past_key_values, all under one
    hook: logits and the activations fn saw equal those of one hooked full forward."""
    lm, _ = tiny
    ids = batch[0][:1]  # the full-length row: no padding
    hook, cut = "blocks.1.hook_resid_post", 6
    hooks_before = len(lm.layers[1]._forward_hooks)
    seen: list[torch.Tensor] = []

    def fn(x):
        seen.append(x.clone())
        return 0.5 * x + 0.1

    with lm.hooked(hook, fn) as model, torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits
        prefix = model(input_ids=ids[:, :cut], use_cache=True)
        rest = model(input_ids=ids[:, cut:], past_key_values=prefix.past_key_values, use_cache=True).logits
    assert len(lm.layers[1]._forward_hooks) == hooks_before
    torch.testing.assert_close(torch.cat([prefix.logits, rest], 1), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat(seen[1:], 1), seen[0], rtol=1e-5, atol=1e-5)
    assert (full - lm.logits(ids)).abs().max() > 1e-3  # the hook changed the logits
    torch.testing.assert_close(lm.run_with_hook(ids, None, hook, lambda x: 0.5 * x + 0.1), full, rtol=0, atol=1e-6)
    with lm.hooked(hook, None) as model, torch.no_grad():  # no fn: the clean model
        torch.testing.assert_close(model(input_ids=ids, use_cache=False).logits, lm.logits(ids), rtol=0, atol=0)


def test_with_hidden_states_keeps_the_rest_of_a_tuple_output():
    new = torch.ones(2)
    rest = ("cache", None)
    assert with_hidden_states((torch.zeros(2), *rest), new) == (new, *rest)
    assert with_hidden_states(torch.zeros(2), new) is new


def test_parse_hook():
    assert parse_hook("blocks.0.hook_resid_post") == 0
    assert parse_hook("blocks.17.hook_resid_post") == 17
    with pytest.raises(ValueError, match="blocks.L.hook_resid_post"):
        parse_hook("model.layers.3")
    with pytest.raises(ValueError, match="hook_resid_pre.*valid kinds: hook_resid_post"):
        parse_hook("blocks.3.hook_resid_pre")


def test_hook_layer_range(tiny):
    lm, _ = tiny
    assert lm.hook_layer("blocks.3.hook_resid_post") == 3
    with pytest.raises(ValueError, match=rf"layer 40 out of range for {lm.name} \(4 layers: blocks.0..3.hook_resid_post\)"):
        lm.hook_layer("blocks.40.hook_resid_post")
    assert lm.valid_hooks() == [f"blocks.{i}.hook_resid_post" for i in range(4)]


def test_unsupported_architecture():
    class Fake(torch.nn.Module):
        config = type("Cfg", (), {"model_type": "bert"})()

    with pytest.raises(ValueError, match="architecture 'bert' is not supported; supported model types: gemma2"):
        LanguageModel.from_hf(Fake())


@pytest.mark.parametrize("adds_bos", [True, False])
def test_tokenize_right_pads_with_one_bos(adds_bos):
    lm = LanguageModel.from_hf(lm_llama(), lm_tokenizer(adds_bos), name="tiny")
    assert lm.tokenizer.padding_side == "right"
    ids, mask = lm.tokenize(["the cat sat on the mat", "a dog"], max_length=5)
    w = {word: i + 4 for i, word in enumerate(WORDS)}
    assert ids.tolist() == [[BOS, w["the"], w["cat"], w["sat"], w["on"]], [BOS, w["a"], w["dog"], PAD, PAD]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    ids, mask = lm.tokenize(["a dog"], max_length=8, add_bos=False)
    assert ids.tolist() == [[w["a"], w["dog"]]] and mask.tolist() == [[1, 1]]
    # the tokenizer's own padding is right too, for code that calls it directly
    assert lm.tokenizer(["a", "a dog"], padding=True)["attention_mask"][0][-1] == 0


def test_tokenize_errors_and_missing_pad():
    lm = LanguageModel.from_hf(lm_llama(), lm_tokenizer(False, with_pad=False), name="tiny")
    assert lm.tokenizer.pad_token_id == EOS and lm.pad_token_id == EOS
    ids, _ = lm.tokenize(["the cat", "a"], max_length=4)
    assert ids[1, -1].item() == EOS
    with pytest.raises(ValueError, match="max_length"):
        lm.tokenize(["a"], max_length=1)
    with pytest.raises(ValueError, match="without a tokenizer"):
        LanguageModel.from_hf(lm_llama(), name="tiny").tokenize(["a"], max_length=4)


def test_special_ids_when_bos_eos_pad_coincide():
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                       bos_token_id=EOS, eos_token_id=EOS, pad_token_id=None))
    lm = LanguageModel.from_hf(model, name="tiny-gpt2")
    assert lm.bos_token_id == EOS and lm.pad_token_id == EOS and lm.special_token_ids == {EOS}
