"""featsep.penalties.orthogonality against its dense n x n reference."""

import pytest
import torch

from featsep.penalties import make_penalty
from featsep.codes import Codes
from featsep.penalties.reference import orthogonality_dense
from tests.penalties.helpers import B, DT, N, dense, grad_of, topk_batch


@pytest.mark.parametrize("normalize", ["latent", "pair", "none"])
def test_orthogonality_equals_dense_reference(normalize):
    pen = make_penalty("orthogonality", d_sae=N, normalize=normalize, chunk_elements=7)  # many chunks
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
