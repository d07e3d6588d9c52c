"""The tiny LanguageModel the eval tests share: first-letter prompts, words by letter, two topics."""

from __future__ import annotations

import json
import random

import pytest

from featsep.lm import LanguageModel
from tests.evals.helpers import D, LETTERS_VOCAB, WORDS
from tests.helpers import SPECIALS, tiny_llama, word_tokenizer


@pytest.fixture(scope="session")
def letters_lm() -> LanguageModel:
    """Two Llama layers (d=32) with a wide init (0.5), so activations differ clearly between words."""
    model = tiny_llama(
        vocab_size=len(SPECIALS) + len(LETTERS_VOCAB), hidden_size=D, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256, initializer_range=0.5,
    )
    return LanguageModel.from_hf(model, word_tokenizer(LETTERS_VOCAB), name="tiny-llama-evals")


@pytest.fixture
def letters_corpus(tmp_path):
    """200 documents of 5-30 random WORDS, as JSONL."""
    rng = random.Random(0)
    path = tmp_path / "corpus.jsonl"
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) for _ in range(200)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return str(path)
