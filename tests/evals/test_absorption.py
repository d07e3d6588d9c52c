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
from transformers import PreTrainedTokenizerFast

import featsep.evals.absorption as absorption
from featsep.evals.absorption import (
    AbsorptionSettings,
    absorption_scores,
    alpha_words,
    first_letter,
    icl_prompt,
    letter_labels,
    run_absorption,
    split_features,
    token_text,
    word_end_position,
)
from featsep.evals import evaluate
from featsep.evals.common.context import EvalContext
from featsep.lm import LanguageModel
from featsep.sae import make_sae
from tests.evals.helpers import WORDS
from tests.helpers import SPECIALS, tiny_llama

HOOK = "blocks.0.hook_resid_post"
SP_D = 16
SP = "\u2581"
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


def sp_tokenizer() -> PreTrainedTokenizerFast:
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
def sp_lm() -> LanguageModel:
    tokenizer = sp_tokenizer()
    model = tiny_llama(
        vocab_size=len(tokenizer), hidden_size=SP_D, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=128, initializer_range=0.5,
    )
    return LanguageModel.from_hf(model, tokenizer, name="tiny-sp-absorption")


# ---- vocabulary and prompts (vocab.py, prompting.py) ------------------------------------------


def test_words_keep_their_leading_space_and_both_variants():
    tokenizer = sp_tokenizer()
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


def test_prompt_reads_the_single_word_token(sp_lm):
    s = AbsorptionSettings(n_icl_examples=3)
    rng = random.Random(0)
    words = alpha_words(sp_lm.tokenizer)
    ps = absorption.build_prompts(sp_lm, words, words, s, rng)
    assert ps.n_dropped == 0 and ps.words == words
    for word, prompt, pos in list(zip(ps.words, ps.prompts, ps.positions))[:40]:
        ids, _ = sp_lm.tokenize([prompt], max_length=256)
        assert ids.shape[1] - pos == 6  # SAEBench's position -6
        assert token_text(sp_lm.tokenizer, sp_lm.tokenizer.convert_ids_to_tokens(int(ids[0, pos]))) == word


# ---- the model side: split and ICL pools (probing.py, feature_absorption.py) --------------------


def test_model_side_split_and_icl_pools(sp_lm, monkeypatch):
    calls = []
    real = absorption.build_prompts

    def recording(lm_, words, pool, s, rng):
        calls.append((list(words), list(pool)))
        return real(lm_, words, pool, s, rng)

    monkeypatch.setattr(absorption, "build_prompts", recording)
    s = AbsorptionSettings(max_words=0, n_icl_examples=3, probe_epochs=2)
    side = absorption._model_side(EvalContext(sp_lm, HOOK, cache_dir=None, verbose=False), s)
    vocab = alpha_words(sp_lm.tokenizer)
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
    centers = torch.randn(3, SP_D, generator=g) * 3

    def data(n):
        y = torch.arange(n) % 3
        return centers[y] + 0.3 * torch.randn(n, SP_D, generator=g), y

    x_train, y_train = data(90)
    x_test, y_test = data(30)
    fresh = [" apple", " avid", " axe"]  # true positives for "a" only; "b" and "c" have none
    side = {
        "x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
        "probe_weight": torch.zeros(26, SP_D).index_copy(0, torch.tensor([0, 1, 2]), centers),
        "probe_f1": [0.9, 0.8, 0.7] + [0.0] * 23,
        "fresh_words": fresh, "x_fresh": centers[[0, 0, 0]] + 0.1,
        "n_words": 120, "n_train": 90, "n_test": 30, "n_dropped_prompts": 0, "positions_from_end": {"6": 90},
    }
    monkeypatch.setattr(absorption, "_model_side", lambda ctx, s: side)

    class Ctx:
        verbose = False

    sae = make_sae("topk", d_in=SP_D, d_sae=24, k=4, hook_name=HOOK)
    s = AbsorptionSettings(min_letters=3, max_k_value=2, k_sparse_probe_num_epochs=3)
    res = run_absorption([sae], Ctx(), s)[0]
    assert [d["first_letter"] for d in res.details] == ["a"]  # means over letters with true positives
    assert res.details[0]["num_probe_true_positives"] == 3
    assert res.unstructured["enough_letters"] and res.unstructured["status"] == "ok"  # 3 letters have F1 > 0.6
    s4 = AbsorptionSettings(min_letters=4, max_k_value=2, k_sparse_probe_num_epochs=3)
    res4 = run_absorption([sae], Ctx(), s4)[0]
    assert not res4.unstructured["enough_letters"] and "3 have probe F1 > 0.6" in res4.unstructured["status"]


# ---- arithmetic, and end to end on the letters_lm (whose words are whole tokens) ------------------


def test_absorption_arithmetic_on_constructed_cases():
    s = AbsorptionSettings()
    u = torch.tensor([1.0, 0.0, 0.0])
    W_dec = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0], [0.05, (1 - 0.05**2) ** 0.5, 0.0]])
    codes = torch.tensor([
        [2.0, 0.0, 0.0, 0.0],  # the split feature carries everything: none
        [0.0, 2.0, 1.0, 0.0],  # split feature silent, latent 1 carries it: full
        [0.5, 2.0, 0.0, 0.0],  # partial: A = min(T, P - M) = T
        [0.5, 2.0, 0.0, 0.0],  # partial, P smaller: A = P - M
        [0.0, 0.0, 0.0, 30.0],  # only a barely aligned latent (cos 0.05 < 0.1): fraction 0 but full
    ])
    x = codes @ W_dec
    x[3, 0] -= 0.5
    fractions, full = absorption_scores(codes, x, u, W_dec, [0], s)
    assert fractions == pytest.approx([0.0, 1.0, 1.2 / 1.7, 0.7 / 1.2, 0.0])
    assert full == [False, True, False, False, True]


def test_split_features_rule():
    feats = [[1], [1, 2], [1, 2, 3], [1, 2, 3, 4]]
    assert split_features([0.5, 0.52, 0.6, 0.7], feats, 0.03) == [1]
    assert split_features([0.5, 0.6, 0.62, 0.9], feats, 0.03) == [1, 2]
    assert split_features([0.5, 0.6, 0.7, 0.8], feats, 0.03) == [1, 2, 3, 4]


def test_vocabulary_and_word_position(letters_lm):
    words = alpha_words(letters_lm.tokenizer)
    assert set(WORDS) <= set(words) and ":" not in words and "<bos>" not in words and "x1" not in words
    s = AbsorptionSettings()
    word, ex1, ex2 = WORDS[0], WORDS[10], WORDS[20]
    prompt = icl_prompt(word, [ex1, ex2], s)
    assert prompt == (f"\n{ex1} has the first letter: {ex1[0].upper()}\n{ex2} has the first letter: "
                      f"{ex2[0].upper()}\n{word} has the first letter:")
    pos = word_end_position(letters_lm, prompt, len(prompt) - len(" has the first letter:"))
    ids, _ = letters_lm.tokenize([prompt], max_length=64)
    assert letters_lm.tokenizer.convert_ids_to_tokens(int(ids[0, pos])) == word
    assert ids.shape[1] - pos == 6  # SAEBench's -6 holds for this tokenizer


def test_absorption_end_to_end(letters_lm):
    sae = make_sae("topk", d_in=letters_lm.d_model, d_sae=64, k=8, hook_name=HOOK)
    base = {"max_words": 120, "n_icl_examples": 3, "probe_epochs": 5, "k_sparse_probe_num_epochs": 5, "max_k_value": 3}
    out = evaluate(sae, evals=["absorption"], model=letters_lm, settings={"absorption": base}, cache_dir=None, verbose=False)
    res = out["absorption"]
    assert res["eval_type_id"] == "absorption_first_letter"
    u = res["eval_result_unstructured"]
    # the 20-letter gate counts letters whose probe F1 exceeds 0.6, and the status says which side it fell on
    assert u["enough_letters"] == (sum(f1 > 0.6 for f1 in u["probe_f1_by_letter"].values()) >= 20)
    assert u["status"] == "ok" if u["enough_letters"] else "too few letters" in u["status"]
    assert res["eval_result_unstructured"]["word_position_from_end_counts"] == {"6": 96}
    loose = {**base, "min_probe_f1": -1.0, "min_letters": 1}
    res = evaluate(sae, evals=["absorption"], model=letters_lm, settings={"absorption": loose}, cache_dir=None,
                   verbose=False)["absorption"]
    assert res["eval_result_details"]
    u = res["eval_result_unstructured"]  # the gate's other side: every letter passes F1 > -1, one is enough
    assert u["enough_letters"] and u["status"] == "ok"
    for d in res["eval_result_details"]:
        assert 0 <= d["mean_absorption_fraction"] <= 1 and 0 <= d["full_absorption_rate"] <= 1
        assert 1 <= d["num_split_features"] <= 3
    assert res["eval_result_metrics"]["mean"]["num_letters"] == len(res["eval_result_details"])
