"""Packed token rows of a text corpus, shared by core, autointerp and competition."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from featsep.data import pack_tokens, text_source
from featsep.evals.common.context import EvalContext


def token_rows(ctx: EvalContext, s, n_rows: int) -> Tensor:
    """[n_rows, context_size] packed token rows (cached: tokenising is slow for big corpora).

    `s`: any eval's settings with dataset, text_column, split, context_size and seed; the cache
    entry is shared by every eval asking for the same rows."""
    def compute():
        texts = text_source(s.dataset, text_column=s.text_column, split=s.split, seed=s.seed)
        rows = list(
            itertools.islice(pack_tokens(texts, ctx.lm.tokenizer, s.context_size, ctx.lm.bos_token_id), n_rows)
        )
        if not rows:
            raise ValueError(
                f"dataset {s.dataset!r} gave no complete {s.context_size}-token row; use a bigger corpus "
                "or a smaller core.context_size"
            )
        return torch.stack(rows)

    key = {k: getattr(s, k) for k in ("dataset", "text_column", "split", "context_size", "seed")}
    rows = ctx.cached("core_tokens", {**key, "n_rows": n_rows}, compute)
    if rows.shape[0] < n_rows:
        raise ValueError(
            f"dataset {s.dataset!r} holds only {rows.shape[0]} rows of {s.context_size} tokens, "
            f"{n_rows} needed; lower core.n_eval_reconstruction_batches / n_eval_sparsity_variance_batches"
        )
    return rows
