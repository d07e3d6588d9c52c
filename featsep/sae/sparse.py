"""Decoding from TopK form (values/indices [B, k]) without building dense [B, d_sae] codes.

`sparse_decode` is the fast path; `dense_decode_reference` is the naive definition it must
equal (tests compare outputs and gradients of both in float64).
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from featsep.codes import scatter_dense


def sparse_decode(values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Optional[Tensor] = None) -> Tensor:
    """sum_j values[b, j] * W_dec[indices[b, j]] (+ b_dec): O(B k d) time and memory.

    embedding_bag's own backward is already sparse: grad wrt values is the rowwise dot of
    grad_out with W_dec[idx], grad wrt W_dec an index_add of values * grad_out; neither builds
    [B, k, d] or [B, d_sae]. Values are cast to W_dec's dtype, so under bf16 autocast the
    (cheap) decode and its weight gradient accumulate in the parameters' precision.
    """
    out = F.embedding_bag(indices, W_dec, per_sample_weights=values.to(W_dec.dtype), mode="sum")
    return out if b_dec is None else out + b_dec


def dense_decode_reference(
    values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Optional[Tensor] = None
) -> Tensor:
    """The naive definition: scatter into dense codes [B, d_sae], then codes @ W_dec."""
    out = scatter_dense(values, indices, W_dec.shape[0]).to(W_dec.dtype) @ W_dec
    return out if b_dec is None else out + b_dec
