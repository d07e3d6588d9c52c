"""Constants and helpers the featsep.data tests share (the word vocabulary of the `word_lm` fixture)."""

from __future__ import annotations

import io
import random

import numpy as np
import torch

from featsep.data import pack_tokens, text_source
from tests.helpers import word_tokenizer

N_WORDS = 40
WORDS = [f"w{i}" for i in range(N_WORDS)]
WORD_ID = {w: i + 4 for i, w in enumerate(WORDS)}
HOOK = "blocks.1.hook_resid_post"
D = 32


def data_tokenizer(adds_bos: bool = False):
    """The word_lm's tokenizer; adds_bos=True prepends BOS itself, like Gemma's."""
    return word_tokenizer(WORDS, adds_bos=adds_bos)


def random_docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        words = [f"w{rng.randrange(N_WORDS)}" for _ in range(rng.randint(3, 40))]
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words)), "<eos>")  # a real EOS inside a document
        docs.append(" ".join(words))
    return docs


def stream_kwargs(**over):
    kw = dict(batch_size=64, context_length=16, lm_batch_size=4, norm_estimate_batches=2, shuffle_buffer=8)
    kw.update(over)
    return kw


def cache_kwargs(**over):
    kw = dict(context_length=16, batch_size=4, shard_tokens=200, norm_estimate_batches=2, progress=False)
    kw.update(over)
    return kw


def packed_rows(lm, corpus):
    return pack_tokens(text_source(corpus), lm.tokenizer, 16, lm.bos_token_id)


def rows_sorted(x: torch.Tensor) -> torch.Tensor:
    """Rows in lexicographic order, to compare two shuffles of the same rows."""
    return x[np.lexsort(x.numpy().T[::-1])]


def resume_check(make_stream, k=3, m=4):
    """Stop a stream after k batches, restore a fresh one from its state: the next m batches agree."""
    a = make_stream()
    for _ in range(k):
        next(a)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    want = [next(a) for _ in range(m)]
    b = make_stream()
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    got = [next(b) for _ in range(m)]
    for w, g in zip(want, got):
        assert torch.equal(w, g)
    assert b.tokens_seen == a.tokens_seen and b.normalization_factor == a.normalization_factor
    return a, b
