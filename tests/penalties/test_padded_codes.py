"""BatchTopK-family codes through every penalty equal the same penalty on the true dense codes,
in both sparse forms: the flat form the SAE selects in (read as such: no penalty packs its rows,
which would be a host sync) and rows padded with unselected (latent 0, 0.0) entries, where
padding never overwrites or duplicates latent 0's real value or firing."""

import pytest
import torch

import featsep

N = 8
# k=2 over 3 rows selects 6 entries, all positive: row 0 gets latents 0 and 3 (padded to the
# busiest row's 4 with two (0, 0.0) entries), row 1 latents 1, 2, 3, 4, row 2 nothing (all padding)
X = torch.tensor([[3.0, -1, -1, 2.8, -1, -1, -1, -1],
                  [-1, 2.0, 2.5, 1.5, 1.2, -1, -1, -1],
                  [-1, -1, -1, -1, -1, -1, -1, -1.0]], dtype=torch.float64)

PENALTIES = [
    ("orthogonality", {}),
    ("momentum", {"mode": "specified"}),
    ("momentum", {"mode": "reference"}),
    *[("temporal", {"mode": mode, "state": state, "window_size": 4})
      for mode in ("specified", "reference") for state in ("dense", "sparse")],
]


def identity_encoder_sae(arch: str):
    """pre-activations == x, so the selection is chosen by X."""
    sae = featsep.make_sae(arch, d_in=N, d_sae=N, k=2, dtype="float64")
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(N, dtype=torch.float64))
    return sae


def true_dense_codes(sae, x: torch.Tensor, k: int = 2) -> torch.Tensor:
    """The naive BatchTopK codes: the k * B largest ReLU'd pre-activations of the batch, dense."""
    relu = sae.pre_activations(x).relu()
    keep = torch.zeros(relu.numel(), dtype=torch.bool)
    keep[relu.detach().flatten().topk(k * x.shape[0]).indices] = True
    return relu * keep.view_as(relu)


@pytest.mark.parametrize("form", ["flat", "padded"])
@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
@pytest.mark.parametrize("name,params", [pytest.param(n, p, id="-".join([n, *map(str, p.values())])) for n, p in PENALTIES])
def test_batchtopk_codes_equal_true_dense_codes(arch, name, params, form):
    sae = identity_encoder_sae(arch)
    pen, ref = featsep.make_penalty(name, d_sae=N, **params), featsep.make_penalty(name, d_sae=N, **params)
    for step in range(4):
        x = X.roll(step, dims=0)
        codes = sae.training_forward(x, step, 4).codes
        if form == "padded":
            latent0_fires = ((codes.indices == 0) & codes.active).any(dim=1)
            assert (latent0_fires & (~codes.selected).any(dim=1)).any()  # in a row with padding
            codes = featsep.Codes.from_topk(codes.values, codes.indices, N, codes.selected, nonnegative=True)
        loss = pen(codes)[name]
        assert codes.has_topk == (form == "padded")
        (grad,) = torch.autograd.grad(loss, sae.W_enc)
        ref_loss = ref(true_dense_codes(sae, x))[name]
        (ref_grad,) = torch.autograd.grad(ref_loss, sae.W_enc)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-14)
        assert ref_loss > 0
    if name == "momentum":
        torch.testing.assert_close(pen.momentum, ref.momentum, rtol=1e-12, atol=1e-15)
    if name == "temporal":
        assert pen.stats()["windows_closed"] == ref.stats()["windows_closed"] > 0
