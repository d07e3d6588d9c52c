"""The tiny word-level LanguageModel and corpus the featsep.data tests run on."""

from __future__ import annotations

import json

import pytest

from featsep.lm import LanguageModel
from tests.data.helpers import D, N_WORDS, data_tokenizer, random_docs
from tests.helpers import tiny_llama


@pytest.fixture(scope="session")
def word_lm() -> LanguageModel:
    """Two Llama layers (d=32) over the 40 words w0..w39, default init."""
    model = tiny_llama(
        vocab_size=4 + N_WORDS, hidden_size=D, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )
    return LanguageModel.from_hf(model, data_tokenizer(), name="tiny-llama")


@pytest.fixture
def word_corpus(tmp_path):
    """120 random documents of w-words (some with an EOS inside), as JSONL with an id column."""
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(random_docs(120))))
    return str(path)
