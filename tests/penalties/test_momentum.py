"""Registry, momentum and orthogonality penalties against their dense n x n references."""

import pytest
import torch

from featsep.penalties import Penalty, make_penalty, penalties
from featsep.codes import Codes
from featsep.penalties.reference import MomentumDense, orthogonality_dense

N, B, K = 24, 12, 4
DT = torch.float64


def topk_batch(seed: int, n: int = N, b: int = B, k: int = K):
    """TopK values/indices with dead latents (the last 4 never fire), a tie, a zero row and a
    zero value inside the top-k."""
    g = torch.Generator().manual_seed(seed)
    pre = torch.randn(b, n, generator=g, dtype=DT)
    pre[:, -4:] = -10.0
    values, indices = torch.topk(pre, k, dim=1)
    values = torch.relu(values)
    values[0, 1] = values[0, 0]  # tie
    values[1] = 0.0  # zero row
    values[2, -1] = 0.0  # zero inside the top-k
    return values, indices


def dense(values, indices, n=N):
    return torch.zeros(values.shape[0], n, dtype=values.dtype).scatter(1, indices, values)


def grad_of(fn, x):
    x = x.detach().clone().requires_grad_()
    loss = fn(x)
    (g,) = torch.autograd.grad(loss, x)
    return loss.detach(), g


def test_registry_defaults_and_errors():
    assert penalties() == ["momentum", "orthogonality", "temporal"]
    for name in penalties():
        pen = make_penalty(name, d_sae=N)
        assert isinstance(pen, Penalty) and pen.name == name
        assert set(pen.coefficients()) == {name}
    assert make_penalty("momentum", d_sae=N).cfg.model_dump(include={"beta", "tau", "weight"}) == \
        {"beta": 0.95, "tau": 0.4, "weight": 0.3}
    t = make_penalty("temporal", d_sae=N).cfg
    assert (t.window_size, t.alpha_base, t.freq_divisor, t.weight) == (1000, 0.1, 1000.0, 0.1)
    with pytest.raises(ValueError, match="unknown penalty 'nope'"):
        make_penalty("nope", d_sae=N)
    with pytest.raises(ValueError, match="bad parameters for penalty 'momentum'.*beta"):
        make_penalty("momentum", d_sae=N, beta=2.0)
    with pytest.raises(ValueError, match="normalize only applies"):
        make_penalty("momentum", d_sae=N, mode="reference", normalize="pair")
    with pytest.raises(ValueError, match="d_sae=24"):
        make_penalty("momentum", d_sae=N)(torch.rand(3, N + 1))
    with pytest.raises(ValueError, match="d_sae=24"):
        make_penalty("temporal", d_sae=N)(Codes.from_topk(torch.rand(3, 4), torch.zeros(3, 4, dtype=torch.long), N + 1))
    with pytest.raises(TypeError, match="temporal penalty: codes must be a floating-point tensor"):
        make_penalty("temporal", d_sae=N)(torch.zeros(3, N, dtype=torch.long))
    with pytest.raises(ValueError, match="same shape"):
        Codes.from_topk(torch.rand(3, 4), torch.zeros(3, 5, dtype=torch.long), N)


@pytest.mark.parametrize("mode", ["reference", "specified"])
@pytest.mark.parametrize("form", ["dense", "topk"])
def test_momentum_equals_dense_reference(mode, form):
    pen = make_penalty("momentum", d_sae=N, mode=mode, tau=0.3)
    ref = MomentumDense(N, 0.95, 0.3, mode)
    for step in range(5):
        values, indices = topk_batch(step)
        values = values * (1 + step)  # scale changes across steps
        F = dense(values, indices)
        if form == "dense":
            loss, g = grad_of(lambda x: pen(x)["momentum"], F)
        else:
            loss, g = grad_of(lambda v: pen(Codes.from_topk(v, indices, N))["momentum"], values)
        ref_loss, ref_g = grad_of(ref.step, F)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(pen.momentum, ref.m, rtol=1e-12, atol=1e-12)
        # gradients agree at every non-zero entry (at zeros the identity gives d(N^T N), the
        # right derivative for nonnegative codes, where |.| gives 0; ReLU/TopK pass none there)
        ref_g = ref_g if form == "dense" else ref_g.gather(1, indices)
        nonzero = (F if form == "dense" else values) != 0
        torch.testing.assert_close(g[nonzero], ref_g[nonzero], rtol=1e-10, atol=1e-12)
    assert (pen.momentum > 0.3).any() and (pen.momentum <= 0.3).any()  # both weights exercised


def test_momentum_reference_is_methods_md_literally():
    """One step of the reference, transcribed from methods.md."""
    values, indices = topk_batch(7)
    F = dense(values, indices)
    beta, tau = 0.9, 0.5
    N_ = F / (F.norm(dim=0, keepdim=True) + 1e-6)
    G = torch.abs(N_.T @ N_)
    competition = G.sum(1) - 1
    m = beta * torch.zeros(N, dtype=DT) + (1 - beta) * competition
    w = torch.where(m > tau, 2.0, 1.0).to(DT)
    expected = (w * G.sum(1)).sum()
    pen = make_penalty("momentum", d_sae=N, mode="reference", beta=beta, tau=tau)
    torch.testing.assert_close(pen(Codes.from_topk(values, indices, N))["momentum"], expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(pen.momentum, m)


def test_momentum_specified_formula_and_scales():
    values, indices = topk_batch(3)
    F = dense(values, indices)
    N_ = F / (F.norm(dim=0, keepdim=True) + 1e-6)
    G = N_.T @ N_
    off = 1 - torch.eye(N, dtype=DT)
    comp = (G * off).sum(1)
    m = 0.05 * comp
    w = torch.where(m > 0.01, 2.0, 1.0).to(DT)
    total = ((w[:, None] + w[None, :]) * G * off).sum()
    for normalize, div in [("latent", N), ("pair", N * (N - 1)), ("none", 1)]:
        pen = make_penalty("momentum", d_sae=N, tau=0.01, normalize=normalize)
        torch.testing.assert_close(pen(F)["momentum"], total / div)
    dead = make_penalty("momentum", d_sae=N)
    dead(F)
    assert torch.all(dead.momentum[-4:] == 0)  # silent latents get no (negative) competition


def test_momentum_signed_codes_use_dense_formula():
    g = torch.Generator().manual_seed(1)
    F = torch.randn(B, N, generator=g, dtype=DT)
    pen, ref = make_penalty("momentum", d_sae=N), MomentumDense(N, 0.95, 0.4, "specified")
    for _ in range(2):
        loss, grad = grad_of(lambda x: pen(x)["momentum"], F)
        ref_loss, ref_grad = grad_of(ref.step, F)
        torch.testing.assert_close(loss, ref_loss)
        torch.testing.assert_close(grad, ref_grad)
        torch.testing.assert_close(pen.momentum, ref.m)


def test_momentum_state_roundtrip_stats_and_independence():
    a, b = make_penalty("momentum", d_sae=N, tau=0.2), make_penalty("momentum", d_sae=N, tau=0.2)
    other = make_penalty("momentum", d_sae=N, tau=0.2)
    for step in range(3):
        values, indices = topk_batch(step)
        a(Codes.from_topk(values, indices, N))
        other(Codes.from_topk(values * 0 + 1, indices, N))  # a second SAE's codes: its own state
    b.load_state_dict(a.state_dict())
    assert b.steps == 3
    for step in range(3, 6):
        values, indices = topk_batch(step)
        codes = Codes.from_topk(values, indices, N)
        torch.testing.assert_close(a(codes), b(codes), rtol=0, atol=0)
    torch.testing.assert_close(a.momentum, b.momentum, rtol=0, atol=0)
    assert not torch.equal(a.momentum, other.momentum)
    stats = a.stats()
    assert sum(stats["momentum_histogram"]["counts"]) == N
    assert stats["share_over_tau"] == pytest.approx(float((a.momentum > 0.2).double().mean()))
    assert stats["top_competing_latents"][0] == int(a.momentum.argmax())


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


def test_dense_codes_become_their_nonzeros():
    values, indices = topk_batch(0)
    sc = Codes.from_dense(dense(values, indices))
    torch.testing.assert_close(sc.dense(), dense(values, indices))
    assert sc.indices.shape[1] == K and int(sc.active.sum()) == int((values != 0).sum())
