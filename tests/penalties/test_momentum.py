"""featsep.penalties.momentum against its dense n x n reference and the methods text."""

import pytest
import torch

from featsep.penalties import make_penalty
from featsep.codes import Codes
from featsep.penalties.reference import MomentumDense
from tests.penalties.helpers import B, DT, N, dense, grad_of, topk_batch


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


@pytest.mark.parametrize("form", ["dense", "topk"])
def test_momentum_trusts_codes_known_nonnegative(monkeypatch, form):
    """Codes flagged nonnegative (every built-in SAE's) skip the sign check, a host sync per
    step, with the same loss, gradient and momentum as unflagged codes that are checked."""
    values, indices = topk_batch(2)
    make = (lambda v, nn: Codes.from_dense(dense(v, indices), nonnegative=nn)) if form == "dense" else \
        (lambda v, nn: Codes.from_topk(v, indices, N, nonnegative=nn))
    pens = [make_penalty("momentum", d_sae=N) for _ in range(2)]
    checked = [grad_of(lambda v: pens[0](make(v, False))["momentum"], values) for _ in range(2)]
    bools = []
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: bools.append(t) or bool(t.item()))
    trusted = [grad_of(lambda v: pens[1](make(v, True))["momentum"], values) for _ in range(2)]
    monkeypatch.undo()
    assert bools == []
    for (a, ga), (b, gb) in zip(checked, trusted):
        assert torch.equal(a, b) and torch.equal(ga, gb)
    assert torch.equal(pens[0].momentum, pens[1].momentum)
    assert make(values, True).with_selected_firing().nonnegative  # copies keep the flag


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
