"""featsep.data.packing: rows of context_length tokens, one BOS per document, fast packer equals the reference."""

from __future__ import annotations

import random

import pytest
import torch

from featsep.data import (
    DataError,
    pack_token_lists,
    pack_tokens,
    pack_tokens_reference,
)
from tests.data.helpers import WORD_ID, data_tokenizer
from tests.helpers import BOS


def test_pack_tokens_hand_checked():
    tok = data_tokenizer(adds_bos=True)  # packing must not take the tokenizer's own BOS
    w = WORD_ID
    rows = list(pack_tokens(["w1 w2 w3", "w4 w5", "", "w6 w7 w8 w9 w10"], tok, context_length=4))
    assert [r.tolist() for r in rows] == [
        [BOS, w["w1"], w["w2"], w["w3"]],  # a document starting a row gets one BOS, not two
        [BOS, w["w4"], w["w5"], BOS],  # BOS between documents; empty documents add nothing
        [BOS, w["w6"], w["w7"], w["w8"]],
    ]  # the incomplete last row (w9 w10) is dropped
    assert all(r.dtype == torch.long and r.shape == (4,) for r in rows)


def test_pack_fast_equals_saelens_reference():
    for trial in range(1500):
        rng = random.Random(trial)
        length = rng.choice([2, 3, 4, 5, 8, 16])
        docs = []
        for _ in range(rng.randint(0, 12)):
            n = rng.choice([0, 1, 2, length - 1, length, length + 1, rng.randint(0, 3 * length)])
            docs.append([BOS if rng.random() < 0.1 else rng.randint(4, 12) for _ in range(n)])
        fast = [r.tolist() for r in pack_token_lists(docs, length, BOS)]
        ref = [r.tolist() for r in pack_tokens_reference(docs, length, BOS)]
        assert fast == ref, (trial, length, docs)


def test_pack_errors():
    tok = data_tokenizer()
    with pytest.raises(DataError, match="context_length"):
        list(pack_tokens(["w1"], tok, context_length=1))
    tok_no_bos = data_tokenizer()
    tok_no_bos.bos_token = None
    with pytest.raises(DataError, match="bos_token_id"):
        list(pack_tokens(["w1"], tok_no_bos, context_length=4))
