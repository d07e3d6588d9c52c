"""Sizes and builders the featsep.lm tests share (every tiny architecture uses the same decoder sizes)."""

from __future__ import annotations

from tests.helpers import SPECIAL_IDS, tiny_llama, word_tokenizer

VOCAB = 64
N_LAYERS = 4
IDS = SPECIAL_IDS
DECODER = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=N_LAYERS,
    num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64, **IDS,
)
ATTN = ["sliding_attention", "full_attention"] * (N_LAYERS // 2)
WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog"]


def lm_tokenizer(adds_bos: bool, with_pad: bool = True, padding_side: str = "left"):
    """Left padding by default: LanguageModel must switch it to right padding itself."""
    return word_tokenizer(WORDS, adds_bos=adds_bos, with_pad=with_pad, padding_side=padding_side)


def lm_llama():
    """A fresh seeded 4-layer Llama of the DECODER sizes."""
    return tiny_llama(**DECODER)
