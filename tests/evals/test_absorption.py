"""Absorption: the pieces checked against SAEBench 0.6.0 (sae_bench/evals/absorption/*).

A tiny sentencepiece-style tokenizer ("\u2581" word prefixes, a decoder that drops the first
token's leading space as Mistral's does) on a 2-layer Llama, plus constructed probe data.
"""

from __future__ import annotations

import random
import string

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import featsep.evals.absorption as absorption
from featsep.evals.absorption import (
    AbsorptionSettings,
    absorption_scores,
    alpha_words,
    first_letter,
    icl_prompt,
    letter_labels,
    run_absorption,
    token_text,
)
from featsep.evals.common.context import EvalContext
from featsep.lm import LanguageModel
from featsep.sae import make_sae

HOOK = "blocks.0.hook_resid_post"
D = 16
SP = "\u2581"
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
TEMPLATE = ["\n", ":", f"{SP}has", f"{SP}the", f"{SP}first", f"{SP}letter"]
ANSWERS = [SP + c for c in string.ascii_uppercase]
JUNK = [f"{SP}x1", "\u00e9t\u00e9", f"{SP}a-b", "42", SP]


def _word_tokens() -> list[str]:
    rng = random.Random(1)
    out: set[str] = set()
    for letter in string.ascii_lowercase:
        while len([w for w in out if w.lstrip(SP)[0].lower() == letter]) < 5:
            w = letter + "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 5)))
            out.add(SP + w)
            if rng.random() < 0.3:
                out.add(w)  # the same word without the space marker: a second vocabulary entry
    return sorted(out)


WORD_TOKENS = _word_tokens()


def make_tokenizer() -> PreTrainedTokenizerFast:
    vocab = SPECIALS + TEMPLATE + ANSWERS + WORD_TOKENS + JUNK
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", "isolated"),
        pre_tokenizers.Split(":", "isolated"),
        pre_tokenizers.Metaspace(replacement=SP, prepend_scheme="never"),
    ])
    tok.decoder = decoders.Metaspace(replacement=SP, prepend_scheme="always")  # drops a first leading space
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>"
    )


@pytest.fixture(scope="module")
def lm() -> LanguageModel:
    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=D, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=128, initializer_range=0.5, pad_token_id=0,
        eos_token_id=1, bos_token_id=2,
    )
    return LanguageModel.from_hf(LlamaForCausalLM(config), tokenizer, name="tiny-sp-absorption")


# ---- vocabulary and prompts (vocab.py, prompting.py) ------------------------------------------


def test_words_keep_their_leading_space_and_both_variants():
    tokenizer = make_tokenizer()
    assert tokenizer.convert_tokens_to_string([f"{SP}has"]) == "has"  # the decoder drops it ...
    assert token_text(tokenizer, f"{SP}has") == " has"  # ... SAEBench's convert_tokens_to_string restores it
    assert token_text(tokenizer, "cat") == "cat"
    words = alpha_words(tokenizer)
    expected = sorted(
        [" " + t[1:] if t.startswith(SP) else t for t in WORD_TOKENS + ANSWERS + TEMPLATE[2:]]
    )
    assert words == expected  # junk ("x1", accented, "a-b", digits, bare space, specials, ":") excluded
    no_space = [t for t in WORD_TOKENS if not t.startswith(SP)]
    assert no_space and all(w in words and " " + w in words for w in no_space)


def test_first_letter_labels_and_icl_prompt_with_leading_spaces():
    assert first_letter(" Cat") == "C" and first_letter("dog") == "d"
    assert letter_labels([" cat", "Bird", " zoo"]).tolist() == [2, 1, 25]
    prompt = icl_prompt(" cat", [" dog", "Bird"], AbsorptionSettings())
    # SAEBench: separator prepended, example answer " " + first letter of the stripped word, upper-cased
    assert prompt == "\n dog has the first letter: D\nBird has the first letter: B\n cat has the first letter:"


def test_prompt_reads_the_single_word_token(lm):
    s = AbsorptionSettings(n_icl_examples=3)
    rng = random.Random(0)
    words = alpha_words(lm.tokenizer)
    ps = absorption.build_prompts(lm, words, words, s, rng)
    assert ps.n_dropped == 0 and ps.words == words
    for word, prompt, pos in list(zip(ps.words, ps.prompts, ps.positions))[:40]:
        ids, _ = lm.tokenize([prompt], max_length=256)
        assert ids.shape[1] - pos == 6  # SAEBench's position -6
        assert token_text(lm.tokenizer, lm.tokenizer.convert_ids_to_tokens(int(ids[0, pos]))) == word


# ---- the model side: split and ICL pools (probing.py, feature_absorption.py) --------------------


def test_model_side_split_and_icl_pools(lm, monkeypatch):
    calls = []
    real = absorption.build_prompts

    def recording(lm_, words, pool, s, rng):
        calls.append((list(words), list(pool)))
        return real(lm_, words, pool, s, rng)

    monkeypatch.setattr(absorption, "build_prompts", recording)
    s = AbsorptionSettings(max_words=0, n_icl_examples=3, probe_epochs=2)
    side = absorption._model_side(EvalContext(lm, HOOK, cache_dir=None, verbose=False), s)
    vocab = alpha_words(lm.tokenizer)
    n = len(vocab)
    assert int(n * 0.8) + int(n * 0.2) != n  # the vocabulary tells SAEBench's split from the old one apart
    assert side["n_words"] == n and side["n_train"] == int(n * 0.8) and side["n_test"] == n - int(n * 0.8)
    (train_words, train_pool), (test_words, test_pool), (fresh_words, fresh_pool) = calls
    assert train_pool == train_words and test_pool == test_words  # ICL examples from the word's own split
    assert sorted(fresh_pool) == vocab  # fresh absorption prompts: examples from the whole vocabulary
    assert set(fresh_words) <= set(test_words) and fresh_words == side["fresh_words"]
    assert side["positions_from_end"] == {"6": min(200, int(n * 0.8))}


# ---- absorption arithmetic (feature_absorption_calculator.py) -----------------------------------


def test_full_absorption_uses_signed_main_activation():
    s = AbsorptionSettings()
    u = torch.tensor([1.0, 0.0, 0.0])
    W_dec = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    codes = torch.tensor([[-1.0, 2.0, 0.0], [1e-9, 2.0, 0.0], [1e-3, 2.0, 0.0]])
    x = codes @ W_dec  # P = 0.2, 1.2, 1.201
    fractions, full = absorption_scores(codes, x, u, W_dec, [0], s)
    # a negative split activation is "not firing" (SAEBench: activation < 1e-8, signed); M <= 0 -> fraction 1
    assert full == [True, True, False]
    assert fractions[0] == pytest.approx(1.0) and fractions[1] == pytest.approx(1.0)
    # row 2: M = 1e-3, T = 1.2, P - M = 1.2 -> A = 1.2, fraction 1.2 / 1.201
    assert fractions[2] == pytest.approx(1.2 / 1.201)


# ---- aggregation and the 20-letter gate (main.py) -----------------------------------------------


def test_gate_counts_letters_by_probe_f1_alone(monkeypatch):
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, D, generator=g) * 3

    def data(n):
        y = torch.arange(n) % 3
        return centers[y] + 0.3 * torch.randn(n, D, generator=g), y

    x_train, y_train = data(90)
    x_test, y_test = data(30)
    fresh = [" apple", " avid", " axe"]  # true positives for "a" only; "b" and "c" have none
    side = {
        "x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
        "probe_weight": torch.zeros(26, D).index_copy(0, torch.tensor([0, 1, 2]), centers),
        "probe_f1": [0.9, 0.8, 0.7] + [0.0] * 23,
        "fresh_words": fresh, "x_fresh": centers[[0, 0, 0]] + 0.1,
        "n_words": 120, "n_train": 90, "n_test": 30, "n_dropped_prompts": 0, "positions_from_end": {"6": 90},
    }
    monkeypatch.setattr(absorption, "_model_side", lambda ctx, s: side)

    class Ctx:
        verbose = False

    sae = make_sae("topk", d_in=D, d_sae=24, k=4, hook_name=HOOK)
    s = AbsorptionSettings(min_letters=3, max_k_value=2, k_sparse_probe_num_epochs=3)
    res = run_absorption([sae], Ctx(), s)[0]
    assert [d["first_letter"] for d in res.details] == ["a"]  # means over letters with true positives
    assert res.details[0]["num_probe_true_positives"] == 3
    assert res.unstructured["enough_letters"] and res.unstructured["status"] == "ok"  # 3 letters have F1 > 0.6
    s4 = AbsorptionSettings(min_letters=4, max_k_value=2, k_sparse_probe_num_epochs=3)
    res4 = run_absorption([sae], Ctx(), s4)[0]
    assert not res4.unstructured["enough_letters"] and "3 have probe F1 > 0.6" in res4.unstructured["status"]
