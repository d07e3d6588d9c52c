"""The TopK family's sparse paths and the naive references they must equal (tests compare
outputs and gradients of both in float64).

Decoding from TopK form (values/indices [B, k]) without building dense [B, d_sae] codes:
`sparse_decode` (fast) and `dense_decode_reference`.

Encoding: the forward needs the dense pre-activations [B, d_sae] to select, but the
backward only needs the k selected entries of each row. `sparse_encode` takes the selected
pre-activations (computed without autograd) and gives W_enc, b_enc, b_dec and the input their
gradients through those entries only: O(B k d), no [B, d_sae] tensor in the backward
(sparsify's fused encoder does the same). `dense_encode_reference` is autograd through the
dense pre-activations and a gather. `encode_columns` / `dense_encode_columns_reference`: the
same for whole columns (every row, a few latents), by dense matmuls: AuxK over the dead latents.

The flat form (featsep.codes.Entries: values / rows / cols [m], grouped by row, per-row offsets;
BatchTopK's k B entries of the batch) has the same pair: `sparse_decode_flat` /
`dense_decode_flat_reference` and `sparse_encode_flat` / `dense_encode_flat_reference`. Row
offsets computed on the device make the rows embedding_bag's bags, so neither path pads the
rows to the busiest one (whose width would be a host sync).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from featsep.codes import flat_dense, scatter_dense


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


def sparse_decode_flat(values: Tensor, cols: Tensor, offsets: Tensor, W_dec: Tensor,
                       b_dec: Optional[Tensor] = None) -> Tensor:
    """Row b: sum of values[e] * W_dec[cols[e]] over its entries offsets[b] .. offsets[b + 1] - 1
    (+ b_dec). One embedding_bag with the rows as bags: O(m d), sparse backward as in
    sparse_decode, no padding."""
    out = F.embedding_bag(cols, W_dec, offsets, per_sample_weights=values.to(W_dec.dtype), mode="sum")
    return out if b_dec is None else out + b_dec


def dense_decode_flat_reference(values: Tensor, rows: Tensor, cols: Tensor, batch: int, W_dec: Tensor,
                                b_dec: Optional[Tensor] = None) -> Tensor:
    """The naive definition: dense codes [B, d_sae] by index_put, then codes @ W_dec."""
    out = flat_dense(values, rows, cols, batch, W_dec.shape[0]).to(W_dec.dtype) @ W_dec
    return out if b_dec is None else out + b_dec


def encoder_weight_grad_flat(rows: Tensor, cols: Tensor, grad: Tensor, centred: Tensor, n: int,
                             by_latent: Optional[bool] = None) -> Tensor:
    """grad W_enc^T [n, d] = G^T (x - b_dec), G [B, n] holding grad [m] at (rows, cols) [m],
    in O(m d) without a dense G or an [m, d] product.

    CPU: one sparse-dense product (COO, m non-zeros), the fastest there. CUDA (by_latent):
    an embedding_bag whose bags are the latents (entries sorted by latent, per-latent offsets
    from a cumulative count), which never syncs; coalescing a sparse tensor would (its size
    depends on the data)."""
    batch = centred.shape[0]
    if by_latent if by_latent is not None else centred.is_cuda:
        order = cols.argsort()
        counts = torch.zeros(n, dtype=torch.long, device=cols.device).index_add_(0, cols, torch.ones_like(cols))
        offsets = torch.cumsum(counts, 0) - counts
        return F.embedding_bag(rows[order], centred, offsets, per_sample_weights=grad[order], mode="sum")
    G_T = torch.sparse_coo_tensor(torch.stack([cols, rows]), grad, (n, batch),
                                  check_invariants=False)  # valid by construction
    return torch.sparse.mm(G_T, centred)


def sparse_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, pre: Tensor, indices: Tensor,
                  keep: Optional[Tensor] = None) -> Tensor:
    """pre[b, indices[b, j]] (0 where not `keep`), differentiable w.r.t. x, W_enc, b_enc and
    b_dec through the kept entries only. `pre` is (x - b_dec) W_enc + b_enc computed without
    autograd (the forward needs it whole anyway, to select). The TopK form read as the flat one
    (row b's k entries at b k .. b k + k - 1)."""
    batch, k = indices.shape
    rows = torch.arange(batch, device=indices.device)
    picked = sparse_encode_flat(x, W_enc, b_enc, b_dec, pre, rows.repeat_interleave(k), indices.flatten(), rows * k,
                                None if keep is None else keep.flatten())
    return picked.view(batch, k)


def dense_encode_reference(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, indices: Tensor,
                           keep: Optional[Tensor] = None) -> Tensor:
    """The naive definition: autograd through the dense pre-activations, then a gather."""
    picked = ((x - b_dec) @ W_enc + b_enc).gather(1, indices)
    return picked if keep is None else torch.where(keep, picked, 0)


class _SelectedFlatPreActivations(torch.autograd.Function):
    """Identity on the selected pre-activations [m] of the flat form; the backward sends their
    gradient to W_enc, b_enc, b_dec and x through the (rows, cols, keep) entries only."""

    @staticmethod
    def forward(ctx, picked: Tensor, x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor,
                rows: Tensor, cols: Tensor, offsets: Tensor, keep: Tensor) -> Tensor:
        ctx.save_for_backward(x, W_enc, b_dec, rows, cols, offsets, keep)
        return picked.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, W_enc, b_dec, rows, cols, offsets, keep = ctx.saved_tensors
        n = W_enc.shape[1]
        grad = torch.where(keep, grad, 0).to(W_enc.dtype)  # unselected: no gradient
        need = ctx.needs_input_grad
        grad_x = grad_W = grad_b_enc = grad_b_dec = None
        if need[3] or need[4]:
            grad_b_enc = W_enc.new_zeros(n).index_add_(0, cols, grad)
        if need[2]:
            grad_W = encoder_weight_grad_flat(rows, cols, grad, (x - b_dec).to(W_enc.dtype), n).T
        if need[1]:  # the rows are the bags (entries grouped by row)
            grad_x = F.embedding_bag(cols, W_enc.T.contiguous(), offsets, per_sample_weights=grad,
                                     mode="sum").to(x.dtype)
        if need[4]:
            grad_b_dec = -(W_enc @ grad_b_enc)
        return None, grad_x, grad_W, grad_b_enc if need[3] else None, grad_b_dec, None, None, None, None


def sparse_encode_flat(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, pre: Tensor, rows: Tensor,
                       cols: Tensor, offsets: Tensor, keep: Optional[Tensor] = None) -> Tensor:
    """pre[rows, cols] [m] (0 where not `keep`), differentiable w.r.t. x, W_enc, b_enc and b_dec
    through the kept entries only; the flat form's sparse_encode (entries grouped by row,
    `offsets` each row's first entry)."""
    if keep is None:
        keep = torch.ones_like(rows, dtype=torch.bool)
    picked = torch.where(keep, pre.detach()[rows, cols], 0)
    return _SelectedFlatPreActivations.apply(picked, x, W_enc, b_enc, b_dec, rows, cols, offsets, keep)


class _ColumnPreActivations(torch.autograd.Function):
    """Identity on the pre-activations of some latents [B, m]; the backward sends their
    gradient to W_enc, b_enc, b_dec and x through those columns with dense matmuls."""

    @staticmethod
    def forward(ctx, block: Tensor, x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, cols: Tensor) -> Tensor:
        ctx.save_for_backward(x, W_enc, b_dec, cols)
        return block.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, W_enc, b_dec, cols = ctx.saved_tensors
        grad = grad.to(W_enc.dtype)
        need = ctx.needs_input_grad
        grad_x = grad_W = grad_b_enc = grad_b_dec = None
        if need[3] or need[4]:
            grad_b_enc = W_enc.new_zeros(W_enc.shape[1]).index_add_(0, cols, grad.sum(0))
        if need[2]:
            grad_W = torch.zeros_like(W_enc).index_add_(1, cols, (x - b_dec).to(W_enc.dtype).T @ grad)
        if need[1]:
            grad_x = (grad @ W_enc.index_select(1, cols).T).to(x.dtype)
        if need[4]:
            grad_b_dec = -(W_enc @ grad_b_enc)
        return None, grad_x, grad_W, grad_b_enc if need[3] else None, grad_b_dec, None


def encode_columns(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, pre: Tensor, cols: Tensor) -> Tensor:
    """pre[:, cols] [B, m], differentiable w.r.t. x, W_enc, b_enc and b_dec through those
    latents only, by dense matmuls of [B, m] blocks: O(B m d) at BLAS speed, cheaper than the
    gathers of sparse_encode when every row uses the same few latents (AuxK over the dead ones).
    `pre` as in sparse_encode."""
    return _ColumnPreActivations.apply(pre.detach().index_select(1, cols), x, W_enc, b_enc, b_dec, cols)


def dense_encode_columns_reference(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, cols: Tensor) -> Tensor:
    """The naive definition: autograd through the dense pre-activations, then the columns."""
    return ((x - b_dec) @ W_enc + b_enc).index_select(1, cols)


def dense_encode_flat_reference(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, rows: Tensor,
                                cols: Tensor, keep: Optional[Tensor] = None) -> Tensor:
    """The naive definition: autograd through the dense pre-activations, then an index."""
    picked = ((x - b_dec) @ W_enc + b_enc)[rows, cols]
    return picked if keep is None else torch.where(keep, picked, 0)
