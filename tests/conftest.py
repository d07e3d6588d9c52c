"""Fixtures for the top-level tests: a tiny Llama checkpoint directory and a corpus in its words."""

from __future__ import annotations

import json
import random

import pytest

from tests.helpers import tiny_llama, word_tokenizer

CHECKPOINT_WORDS = [f"w{i}" for i in range(50)]


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A tiny Llama + word-level tokenizer saved like a hub checkpoint (load_lm reads dirs)."""
    out = tmp_path_factory.mktemp("tiny-llama")
    model = tiny_llama(
        vocab_size=4 + len(CHECKPOINT_WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )
    model.save_pretrained(out)
    word_tokenizer(CHECKPOINT_WORDS).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def checkpoint_corpus(tmp_path_factory):
    """200 documents of 5-60 of the checkpoint's words, one JSON object a line."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    lines = []
    for _ in range(200):
        words = " ".join(f"w{rng.randrange(len(CHECKPOINT_WORDS))}" for _ in range(rng.randint(5, 60)))
        lines.append(json.dumps({"text": words}))
    path.write_text("\n".join(lines) + "\n")
    return path
