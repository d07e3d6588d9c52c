"""The sparse TopK decoder and encoder backward equal their dense references: outputs and
every gradient, float64."""

import pytest
import torch

import featsep
from featsep.codes import row_offsets
from featsep.sae.sparse import (
    dense_decode_flat_reference,
    dense_decode_reference,
    dense_encode_columns_reference,
    dense_encode_flat_reference,
    dense_encode_reference,
    encode_columns,
    encoder_weight_grad_flat,
    sparse_decode,
    sparse_decode_flat,
    sparse_encode,
    sparse_encode_flat,
)
from featsep.train import train

D, N, K, B = 10, 80, 5, 24


def test_sparse_decode_equals_reference_with_duplicates_and_zeros():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(N, D, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(D, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, N, (B, K), generator=g)
    idx[:, -1] = idx[:, 0]  # duplicate indices within a row (BatchTopK padding does this)
    vals = torch.rand(B, K, generator=g, dtype=torch.float64)
    vals[::3, 1] = 0.0
    vals.requires_grad_(True)
    grad_out = torch.randn(B, D, generator=g, dtype=torch.float64)
    results = []
    for fn in (sparse_decode, dense_decode_reference):
        out = fn(vals, idx, W, b)
        gv, gW, gb = torch.autograd.grad(out, (vals, W, b), grad_out)
        results.append((out, gv, gW, gb))
    for a, r in zip(*results):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
    # grad wrt values is the rowwise dot of grad_out with W[idx]
    torch.testing.assert_close(results[0][1], (W[idx] * grad_out[:, None, :]).sum(-1).detach())


def twins(arch, **params):
    saes = []
    for sparse in (True, False):
        sae = featsep.make_sae(arch, d_in=D, d_sae=N, k=K, dtype="float64", sparse_decoder=sparse,
                               dead_tokens_threshold=B, aux_k=16, **params)
        saes.append(sae)
    saes[1].load_state_dict(saes[0].state_dict())
    return saes


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
def test_sparse_training_forward_equals_dense_reference(arch):
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.3
    sparse, dense = twins(arch)
    assert sparse.sparse and not dense.sparse
    with torch.no_grad():  # some latents silent, so AuxK is active on the second step
        for sae in (sparse, dense):
            sae.b_enc[: N // 2] = -100.0
    outs = []
    for sae in (sparse, dense):
        sae.training_forward(x, 0, 2)  # first step: bookkeeping marks the silent latents dead
        out = sae.training_forward(x, 1, 2)
        assert out.terms["auxk"] > 0
        loss = sum(out.coefficients.get(k, 1.0) * v for k, v in out.terms.items())
        loss.backward()
        outs.append(out)
    s, d = outs
    assert not s.codes.has_dense and d.codes.has_dense  # the sparse path never densifies
    torch.testing.assert_close(s.x_hat, d.x_hat, rtol=1e-12, atol=1e-12)
    assert s.terms.keys() == d.terms.keys()
    for k in s.terms:
        torch.testing.assert_close(s.terms[k], d.terms[k], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s.codes.dense(), d.codes.dense(), rtol=0, atol=0)
    for (name, p), q in zip(sparse.named_parameters(), dense.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-11, atol=1e-11, msg=name)


def test_auto_mode_picks_sparse_for_large_dictionaries():
    assert featsep.make_sae("topk", d_in=8, d_sae=8192, k=32).sparse
    assert not featsep.make_sae("topk", d_in=8, d_sae=64, k=32).sparse


def test_pre_activations_equal_the_plain_formula_with_gradients():
    sae = featsep.make_sae("topk", d_in=D, d_sae=N, k=K, dtype="float64")
    with torch.no_grad():
        sae.b_dec.normal_(generator=torch.Generator().manual_seed(2))
    x = torch.randn(B, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    g = torch.randn(B, N, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    params = (sae.W_enc, sae.b_enc, sae.b_dec)
    fast = sae.pre_activations(x)
    plain = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    assert torch.equal(fast, plain)
    for a, b in zip(torch.autograd.grad(fast, params, g), torch.autograd.grad(plain, params, g)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def encoder_inputs(g):
    """x, W_enc, b_enc, b_dec (leaves, float64) and their pre-activations computed without autograd."""
    x = torch.randn(B, D, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(D, N, generator=g, dtype=torch.float64, requires_grad=True)
    b_enc = torch.randn(N, generator=g, dtype=torch.float64, requires_grad=True)
    b_dec = torch.randn(D, generator=g, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        pre = (x - b_dec) @ W + b_enc
    return x, W, b_enc, b_dec, pre


def test_sparse_encode_equals_reference_with_padding_and_duplicates():
    g = torch.Generator().manual_seed(5)
    x, W, b_enc, b_dec, pre = encoder_inputs(g)
    idx = torch.randint(0, N, (B, K), generator=g)
    idx[:, -1] = idx[:, 0]  # two rows pick latent 0 twice, as BatchTopK's padding does
    keep = torch.rand(B, K, generator=g) > 0.3
    keep[:, 0] = True
    grad_out = torch.randn(B, K, generator=g, dtype=torch.float64)
    params = (x, W, b_enc, b_dec)
    fast = sparse_encode(x, W, b_enc, b_dec, pre, idx, keep)
    ref = dense_encode_reference(x, W, b_enc, b_dec, idx, keep)
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(fast[~keep], torch.zeros(int((~keep).sum()), dtype=torch.float64))
    for a, r in zip(torch.autograd.grad(fast, params, grad_out), torch.autograd.grad(ref, params, grad_out)):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
    # unkept entries get no gradient: the gradients ignore grad_out there
    masked = torch.where(keep, grad_out, 0)
    ref = dense_encode_reference(x, W, b_enc, b_dec, idx, keep)
    for a, r in zip(torch.autograd.grad(sparse_encode(x, W, b_enc, b_dec, pre, idx, keep), params, grad_out),
                    torch.autograd.grad(ref, params, masked)):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def test_encode_columns_equals_reference_in_value_and_every_gradient():
    g = torch.Generator().manual_seed(6)
    x, W, b_enc, b_dec, pre = encoder_inputs(g)
    cols = torch.randperm(N, generator=g)[:17].sort().values
    params = (x, W, b_enc, b_dec)
    fast = encode_columns(x, W, b_enc, b_dec, pre, cols)
    ref = dense_encode_columns_reference(x, W, b_enc, b_dec, cols)
    assert fast.shape == (B, 17)
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn(B, 17, generator=g, dtype=torch.float64)
    fast_grads = torch.autograd.grad(fast, params, grad_out)
    for a, r in zip(fast_grads, torch.autograd.grad(ref, params, grad_out)):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
    others = torch.ones(N, dtype=torch.bool)
    others[cols] = False
    assert not fast_grads[1][:, others].any() and not fast_grads[2][others].any()  # other latents untouched


def encoder_twins(arch, **params):
    saes = [featsep.make_sae(arch, d_in=D, d_sae=N, k=K, dtype="float64", sparse_encoder=sparse, aux_k=16, **params)
            for sparse in (True, False)]
    saes[1].load_state_dict(saes[0].state_dict())
    assert saes[0].sparse_encoder and not saes[1].sparse_encoder
    return saes


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
@pytest.mark.parametrize("dead", [True, False], ids=["auxk-active", "auxk-inactive"])
@pytest.mark.parametrize("sparse_decoder", [True, False])
def test_sparse_encoder_equals_dense_reference(arch, dead, sparse_decoder):
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.3
    saes = encoder_twins(arch, sparse_decoder=sparse_decoder, dead_tokens_threshold=B if dead else 10 * B)
    with torch.no_grad():
        for sae in saes:
            sae.b_dec.normal_(generator=torch.Generator().manual_seed(2))
            sae.b_enc[: N // 2] = -100.0 if dead else 0.0  # silent latents, dead after step 0
    outs = []
    for sae in saes:
        sae.training_forward(x, 0, 2)
        out = sae.training_forward(x, 1, 2)
        assert (out.terms["auxk"] > 0) == dead
        loss = sum(out.coefficients.get(k, 1.0) * v for k, v in out.terms.items())
        loss.backward()
        outs.append(out)
    s, d = outs
    torch.testing.assert_close(s.x_hat, d.x_hat, rtol=1e-12, atol=1e-12)
    assert s.terms.keys() == d.terms.keys()
    for k in s.terms:
        torch.testing.assert_close(s.terms[k], d.terms[k], rtol=1e-12, atol=1e-12)
    assert torch.equal(s.codes.indices, d.codes.indices) and torch.equal(s.codes.selected, d.codes.selected)
    torch.testing.assert_close(s.codes.values, d.codes.values, rtol=1e-12, atol=1e-12)
    for (name, p), q in zip(saes[0].named_parameters(), saes[1].parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-11, atol=1e-11, msg=name)
        assert p.grad.abs().sum() > 0, name


def test_sparse_encoder_trains_like_the_dense_reference():
    """A few trainer steps (float32, latents dying mid-run so AuxK switches on) end at the same
    weights on both paths, within float32 rounding."""
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(B, D, generator=gen) for _ in range(8)]
    saes = [featsep.make_sae("batchtopk", d_in=D, d_sae=N, k=K, sparse_encoder=sparse, aux_k=16,
                             dead_tokens_threshold=2 * B) for sparse in (True, False)]
    for sae in saes:
        train([sae], batches, progress=False, lr=1e-2)
    assert saes[0].dead_mask().any()
    for (name, p), q in zip(saes[0].state_dict().items(), saes[1].state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)


# --- the flat form (BatchTopK): entries grouped by row, uneven rows, some rows empty -------------
def flat_entries(g, m=3 * B):
    """m entries over B rows, sorted by row, with row 2 and the last row empty, repeated
    (row, latent) pairs and unselected entries."""
    rows = torch.randint(0, B - 1, (m,), generator=g)
    rows[rows == 2] = 3
    rows = rows.sort().values
    cols = torch.randint(0, N, (m,), generator=g)
    cols[1] = cols[0]
    rows[1] = rows[0]  # a repeat of (row, latent)
    keep = torch.rand(m, generator=g) > 0.3
    return rows, cols, keep, row_offsets(rows, B)


def test_sparse_decode_flat_equals_reference_with_empty_rows_and_repeats():
    g = torch.Generator().manual_seed(7)
    W = torch.randn(N, D, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(D, generator=g, dtype=torch.float64, requires_grad=True)
    rows, cols, keep, offsets = flat_entries(g)
    vals = torch.where(keep, torch.rand(rows.numel(), generator=g, dtype=torch.float64), 0).requires_grad_(True)
    grad_out = torch.randn(B, D, generator=g, dtype=torch.float64)
    fast = sparse_decode_flat(vals, cols, offsets, W, b)
    ref = dense_decode_flat_reference(vals, rows, cols, B, W, b)
    naive = torch.stack([b + sum((vals[e] * W[cols[e]] for e in range(rows.numel()) if rows[e] == r),
                                 torch.zeros(D, dtype=torch.float64)) for r in range(B)])
    torch.testing.assert_close(ref, naive, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast[2], b.detach().expand(D) + 0, rtol=0, atol=0)  # an empty row: the bias
    for a, r in zip(torch.autograd.grad(fast, (vals, W, b), grad_out), torch.autograd.grad(ref, (vals, W, b), grad_out)):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def test_sparse_encode_flat_equals_reference_through_the_kept_entries_only():
    g = torch.Generator().manual_seed(8)
    x, W, b_enc, b_dec, pre = encoder_inputs(g)
    rows, cols, keep, offsets = flat_entries(g)
    grad_out = torch.randn(rows.numel(), generator=g, dtype=torch.float64)
    params = (x, W, b_enc, b_dec)
    fast = sparse_encode_flat(x, W, b_enc, b_dec, pre, rows, cols, offsets, keep)
    ref = dense_encode_flat_reference(x, W, b_enc, b_dec, rows, cols, keep)
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(fast[~keep], torch.zeros(int((~keep).sum()), dtype=torch.float64))
    # the reference sees the gradient at kept entries only (where() passes none elsewhere)
    for a, r in zip(torch.autograd.grad(fast, params, grad_out), torch.autograd.grad(ref, params, grad_out)):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
    picked = ((x - b_dec) @ W + b_enc)[rows, cols]  # and the same as differentiating only the kept ones
    masked = torch.where(keep, grad_out, 0)
    fast = sparse_encode_flat(x, W, b_enc, b_dec, pre, rows, cols, offsets, keep)
    for a, r in zip(torch.autograd.grad(fast, params, grad_out), torch.autograd.grad(picked, params, masked)):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def test_both_flat_encoder_weight_gradients_equal_the_dense_product():
    g = torch.Generator().manual_seed(9)
    rows, cols, keep, _ = flat_entries(g)
    grad = torch.where(keep, torch.randn(rows.numel(), generator=g, dtype=torch.float64), 0)
    centred = torch.randn(B, D, generator=g, dtype=torch.float64)
    dense_G = torch.zeros(B, N, dtype=torch.float64).index_put((rows, cols), grad, accumulate=True)
    for by_latent in (False, True):
        torch.testing.assert_close(encoder_weight_grad_flat(rows, cols, grad, centred, N, by_latent),
                                   dense_G.T @ centred, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
@pytest.mark.parametrize("sparse", [True, False])
def test_flat_batchtopk_step_equals_the_padded_one(arch, sparse):
    """The flat-form step (no host sync) against the step on the same selection packed into
    rows padded to the busiest one (the implementation before the flat form): loss terms and
    every gradient."""
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(10), dtype=torch.float64) + 0.3
    saes = [featsep.make_sae(arch, d_in=D, d_sae=N, k=K, dtype="float64", sparse_encoder=sparse,
                             sparse_decoder=sparse) for _ in range(2)]
    saes[1].load_state_dict(saes[0].state_dict())
    select = type(saes[1]).select

    def padded(self, pre):
        codes = select(self, pre)
        assert not codes.has_topk  # BatchTopK selects in the flat form
        return featsep.Codes.from_topk(codes.values, codes.indices, N, codes.selected, nonnegative=True)

    saes[1].select = padded.__get__(saes[1])
    outs = []
    for sae in saes:
        out = sae.training_forward(x, 0, 2)
        sum(out.coefficients.get(k, 1.0) * v for k, v in out.terms.items()).backward()
        outs.append(out)
    flat, pad = outs
    assert flat.codes.has_flat and not flat.codes.has_topk and pad.codes.has_topk
    assert pad.codes.values.shape[1] > K  # uneven rows: the padded width is the busiest row's
    torch.testing.assert_close(flat.x_hat, pad.x_hat, rtol=1e-12, atol=1e-12)
    for k in flat.terms:
        torch.testing.assert_close(flat.terms[k], pad.terms[k], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(flat.codes.dense(), pad.codes.dense(), rtol=0, atol=0)
    for (name, p), q in zip(saes[0].named_parameters(), saes[1].parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-11, atol=1e-11, msg=name)
