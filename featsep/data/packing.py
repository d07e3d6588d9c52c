"""Packing documents into fixed-length, BOS-led token rows, the way SAELens does it.

SAELens (ActivationsStore -> concat_and_batch_sequences) tokenizes each document without BOS,
concatenates documents, cuts rows of `context_length`, puts BOS at position 0 of every row
(begin_batch_token_id) and BOS between two documents inside a row (sequence_separator_token_id),
never doubling a BOS that is already there, and drops the last incomplete row.

`pack_tokens` is the fast path (batched tokenization, numpy slicing); `pack_tokens_reference`
follows SAELens's token-by-token rules literally and is the definition the fast path must equal.
"""

from __future__ import annotations

from itertools import islice
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from featsep.data.errors import DataError

TOKENIZE_BATCH = 64  # documents per tokenizer call


def _check_args(context_length: int, bos_token_id: Optional[int]) -> None:
    if context_length < 2:
        raise DataError(f"context_length must be >= 2 (BOS plus one token), got {context_length}")
    if bos_token_id is None:
        raise DataError("the tokenizer has no BOS token; pass bos_token_id=<id> explicitly")


def tokenize_documents(texts: Iterable[str], tokenizer, batch_size: int = TOKENIZE_BATCH) -> Iterator[list[int]]:
    """Token ids of each document, without special tokens, tokenized `batch_size` at a time."""
    texts = iter(texts)
    while True:
        chunk = list(islice(texts, batch_size))
        if not chunk:
            return
        # verbose=False: documents longer than the model's max length are fine here (we cut rows)
        yield from tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]


def pack_token_lists(
    documents: Iterable[Sequence[int]], context_length: int, bos_token_id: int
) -> Iterator[torch.Tensor]:
    """Rows [context_length] (int64) from already tokenized documents.

    Equivalent formulation of SAELens's rules: build the stream "BOS + doc" for each non-empty
    document (no BOS added when the doc already starts with one); each row is BOS followed by
    the next context_length - 1 stream tokens, where a BOS that would open the row is consumed
    by the row's own BOS instead of repeated.
    """
    _check_args(context_length, bos_token_id)
    body = context_length - 1
    buf = np.empty(0, dtype=np.int64)
    pos = 0
    docs = iter(documents)
    exhausted = False
    while True:
        # Gather at least body + 1 unread tokens: enough for one row even after a BOS skip.
        pieces: list[np.ndarray] = [buf[pos:]]
        unread = len(buf) - pos
        while not exhausted and unread < body + 1:
            doc = next(docs, None)
            if doc is None:
                exhausted = True
            elif len(doc):
                arr = np.asarray(doc, dtype=np.int64)
                if arr[0] != bos_token_id:
                    pieces.append(np.array([bos_token_id], dtype=np.int64))
                    unread += 1
                pieces.append(arr)
                unread += len(arr)
        buf = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        pos = 0
        n_rows = 0
        while pos < len(buf):
            start = pos + 1 if buf[pos] == bos_token_id else pos
            if len(buf) - start < body:
                break
            row = torch.empty(context_length, dtype=torch.long)
            row[0] = bos_token_id
            row[1:] = torch.from_numpy(buf[start : start + body])
            yield row
            n_rows += 1
            pos = start + body
        if exhausted and n_rows == 0:
            return


def pack_tokens(
    texts: Iterable[str],
    tokenizer,
    context_length: int = 128,
    bos_token_id: Optional[int] = None,
    tokenize_batch_size: int = TOKENIZE_BATCH,
) -> Iterator[torch.Tensor]:
    """BOS-led rows [context_length] (int64) from raw documents; see the module docstring.

    bos_token_id defaults to tokenizer.bos_token_id. The last incomplete row is dropped.
    """
    if bos_token_id is None:
        bos_token_id = getattr(tokenizer, "bos_token_id", None)
    _check_args(context_length, bos_token_id)
    return pack_token_lists(tokenize_documents(texts, tokenizer, tokenize_batch_size), context_length, bos_token_id)


def pack_tokens_reference(
    documents: Iterable[Sequence[int]], context_length: int, bos_token_id: int
) -> Iterator[torch.Tensor]:
    """SAELens's concat_and_batch_sequences rules, token list by token list (slow, obviously right).

    begin_batch_token_id = sequence_separator_token_id = BOS, begin_sequence_token_id = None.
    """
    _check_args(context_length, bos_token_id)
    row: Optional[list[int]] = None
    for doc in documents:
        doc = list(doc)
        offset = 0
        while offset < len(doc):
            first = doc[offset]
            if row is None:  # a new row: BOS first unless the text already has it there
                row = [] if first == bos_token_id else [bos_token_id]
            elif offset == 0 and first != bos_token_id:  # a new document inside a row: separator
                row.append(bos_token_id)
            take = context_length - len(row)
            row.extend(doc[offset : offset + take])
            offset += take
            if len(row) == context_length:
                yield torch.tensor(row, dtype=torch.long)
                row = None
