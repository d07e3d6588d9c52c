"""featsep.penalties.orthogonality against its dense n x n reference."""

import pytest
import torch

import featsep.device
from featsep.penalties import make_penalty
from featsep.codes import Codes
from featsep.penalties.reference import orthogonality_dense
from tests.penalties.helpers import B, DT, N, dense, grad_of, topk_batch


@pytest.mark.parametrize("normalize", ["latent", "pair", "none"])
@pytest.mark.parametrize("chunk_elements", [7, 1 << 22])  # streamed in many chunks; the fixed-size table
def test_orthogonality_equals_dense_reference(monkeypatch, normalize, chunk_elements):
    monkeypatch.setattr(featsep.device, "SYNC_FREE_EVERYWHERE", True)  # the table where it fits, as on a GPU
    pen = make_penalty("orthogonality", d_sae=N, normalize=normalize, chunk_elements=chunk_elements)
    for step in range(2):
        values, indices = topk_batch(step)
        F = dense(values, indices)
        A = (F != 0).to(DT)
        ref_loss, ref_g = grad_of(lambda x: orthogonality_dense(x, A, normalize), F)
        loss_d, g_d = grad_of(lambda x: pen(x)["orthogonality"], F)
        loss_k, g_k = grad_of(lambda v: pen(Codes.from_topk(v, indices, N))["orthogonality"], values)
        torch.testing.assert_close(loss_d, ref_loss, rtol=1e-12, atol=0)
        torch.testing.assert_close(loss_k, ref_loss, rtol=1e-12, atol=0)
        nz = values != 0  # gradients are exact where codes fire; zeros get none
        torch.testing.assert_close(g_k[nz], ref_g.gather(1, indices)[nz], rtol=1e-10, atol=1e-15)
        assert torch.all(g_k[~nz] == 0)
        torch.testing.assert_close(g_d[F != 0], ref_g[F != 0], rtol=1e-10, atol=1e-15)
    assert pen.stats()["coactive_pairs"] > 0


def test_orthogonality_signed_codes():
    g = torch.Generator().manual_seed(2)
    F = torch.randn(B, N, generator=g, dtype=DT) * (torch.rand(B, N, generator=g, dtype=DT) < 0.3)
    A = (F != 0).to(DT)
    ref_loss, ref_g = grad_of(lambda x: orthogonality_dense(x, A), F)
    loss, grad = grad_of(lambda x: make_penalty("orthogonality", d_sae=N)(x)["orthogonality"], F)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad[F != 0], ref_g[F != 0])


def test_fixed_size_table_equals_streamed_pairs_with_padding_and_zeros(monkeypatch):
    """pair_slots (no host sync) against the streamed chunks on padded TopK codes with
    unselected entries and selected zeros, both firing rules: loss, gradient and stats."""
    monkeypatch.setattr(featsep.device, "SYNC_FREE_EVERYWHERE", True)
    values, indices = topk_batch(0)
    values = values.clone()
    values[:, -1] = 0.0  # selected zeros
    selected = torch.ones_like(indices, dtype=torch.bool)
    selected[::3, :2] = False  # padding
    got = {}
    for chunk_elements in (5, 1 << 22):
        for firing in ("active", "selected"):
            pen = make_penalty("orthogonality", d_sae=N, chunk_elements=chunk_elements)

            def loss(v):
                codes = Codes.from_topk(torch.where(selected, v, 0), indices, N, selected)
                return pen(codes.with_selected_firing() if firing == "selected" else codes)["orthogonality"]

            got[chunk_elements, firing] = (*grad_of(loss, values), pen.stats())
    for firing in ("active", "selected"):
        (l_s, g_s, st_s), (l_t, g_t, st_t) = got[5, firing], got[1 << 22, firing]
        torch.testing.assert_close(l_t, l_s, rtol=1e-12, atol=0)
        torch.testing.assert_close(g_t, g_s, rtol=1e-10, atol=1e-15)
        assert st_t["coactive_pairs"] == st_s["coactive_pairs"] > 0
        assert st_t["mean_coactivation"] == pytest.approx(st_s["mean_coactivation"], rel=1e-12)
    assert got[1 << 22, "selected"][0] != got[1 << 22, "active"][0]  # the zeros count when selected fires
