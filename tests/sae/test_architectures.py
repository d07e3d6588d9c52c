"""Invariants of every SAE architecture: decoder geometry, sparsity mechanics, loss terms."""

import math

import pytest
import torch

import featsep
from featsep.sae import architectures
from featsep.sae.base import geometric_median, linear_warmup

D, N, K, B = 12, 96, 4, 48
TOPK_FAMILY = ["topk", "batchtopk", "matryoshka"]


def params_for(arch):
    return {"k": K} if arch in TOPK_FAMILY else {}


def data(seed=0, b=B, d=D):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g) * 2 + 0.5


def step(sae, x, opt, i, total=10):
    out = sae.training_forward(x, i, total)
    loss = sum(out.coefficients.get(k, 1.0) * v for k, v in out.terms.items())
    opt.zero_grad()
    loss.backward()
    sae.before_optimizer_step()
    opt.step()
    sae.after_optimizer_step(i, x, opt)
    return out


def test_registry_has_every_architecture():
    assert set(architectures()) >= {"relu_l1", "topk", "batchtopk", "jumprelu", "matryoshka"}


def test_make_sae_errors_name_cause_and_fix():
    with pytest.raises(ValueError, match="unknown SAE architecture 'nope'.*choose one of.*topk"):
        featsep.make_sae("nope", d_in=4, d_sae=8)
    with pytest.raises(ValueError, match="k=9 exceeds d_sae=8"):
        featsep.make_sae("topk", d_in=4, d_sae=8, k=9)
    with pytest.raises(ValueError, match="bad parameters for SAE 'relu_l1'.*l1_coef.*accepted:.*l1_coefficient"):
        featsep.make_sae("relu_l1", d_in=4, d_sae=8, l1_coef=1.0)
    with pytest.raises(ValueError, match="prefix_sizes"):
        featsep.make_sae("matryoshka", d_in=4, d_sae=8, k=2, prefix_sizes=[4, 2])


def test_init_decoder_unit_rows_and_tied_encoder():
    sae = featsep.make_sae("topk", d_in=D, d_sae=N, k=K)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(N))
    assert torch.equal(sae.W_enc, sae.W_dec.T)


@pytest.mark.parametrize("arch", ["relu_l1", "topk", "batchtopk", "jumprelu", "matryoshka"])
def test_decoder_rows_stay_unit_norm_and_loss_falls(arch):
    torch.manual_seed(0)
    sae = featsep.make_sae(arch, d_in=D, d_sae=N, **params_for(arch))
    x = data()
    sae.init_from_data(x)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    first = step(sae, x, opt, 0)
    for i in range(1, 15):
        last = step(sae, x, opt, i)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(N), atol=1e-6, rtol=0)
    assert last.terms["mse"] < first.terms["mse"]
    assert {"l0", "fvu", "dead_fraction"} <= set(last.metrics)
    # detached 0-dim tensors: reading them is deferred to logging (no host sync per step)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad for v in last.metrics.values())


def test_gradient_projection_removes_only_the_radial_component():
    sae = featsep.make_sae("relu_l1", d_in=D, d_sae=N)
    g = torch.randn(N, D, generator=torch.Generator().manual_seed(1))
    sae.W_dec.grad = g.clone()
    sae.before_optimizer_step()
    w = sae.W_dec.detach()
    radial = (sae.W_dec.grad * w).sum(dim=1)
    torch.testing.assert_close(radial, torch.zeros(N), atol=1e-6, rtol=0)
    expected = g - (g * w).sum(dim=1, keepdim=True) * w
    torch.testing.assert_close(sae.W_dec.grad, expected)


def test_geometric_median_is_robust_and_minimises_distance():
    g = torch.Generator().manual_seed(0)
    cluster = torch.randn(200, 3, generator=g) * 0.1
    outliers = torch.full((20, 3), 50.0)
    pts = torch.cat([cluster, outliers])
    med = geometric_median(pts, iters=50)
    assert med.norm() < 0.5 < pts.mean(0).norm()
    cost = lambda m: (pts.double() - m).norm(dim=1).sum()  # noqa: E731
    for _ in range(10):
        assert cost(med) <= cost(med + 0.01 * torch.randn(3, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("how", ["mean", "geometric_median", "zeros"])
def test_b_dec_init(how):
    sae = featsep.make_sae("topk", d_in=D, d_sae=N, k=K, b_dec_init=how)
    x = data()
    sae.init_from_data(x)
    ref = {"mean": x.double().mean(0), "geometric_median": geometric_median(x), "zeros": torch.zeros(D)}[how]
    torch.testing.assert_close(sae.b_dec.double(), ref.double(), atol=1e-6, rtol=0)


def test_tokens_since_fired_bookkeeping():
    sae = featsep.make_sae("topk", d_in=D, d_sae=N, k=K, dead_tokens_threshold=2 * B)
    x = data()
    out = sae.training_forward(x, 0, 1)
    fired = out.codes.fired()
    assert torch.equal(sae.tokens_since_fired, torch.where(fired, 0, B))
    sae.training_forward(x, 1, 2)
    assert torch.equal(sae.dead_mask(), ~fired)  # same batch -> same latents fire
    sae.eval()
    before = sae.tokens_since_fired.clone()
    sae.training_forward(x, 2, 3)
    assert torch.equal(sae.tokens_since_fired, before)  # eval mode does no bookkeeping


def test_may_have_dead_latents_bounds_the_buffer_without_reading_it():
    sae = featsep.make_sae("topk", d_in=D, d_sae=N, k=K, dead_tokens_threshold=3 * B)
    x = data()
    for step in range(4):
        assert sae.may_have_dead_latents() == (step * B >= 3 * B)  # the bound: B tokens a step
        assert sae.may_have_dead_latents() or not sae.dead_mask().any()
        out = sae.training_forward(x, step, 4)
        assert (out.terms["auxk"] == 0) or sae.may_have_dead_latents()
    assert sae.dead_mask().any()  # the same batch: the silent latents are dead by now
    sae.tokens_since_fired.zero_()  # written elsewhere: the bound is re-read
    assert not sae.may_have_dead_latents()
    sae.tokens_since_fired[5] = 3 * B
    assert sae.may_have_dead_latents()
    sae.load_state_dict({**sae.state_dict(), "tokens_since_fired": torch.zeros(N, dtype=torch.long)})
    assert not sae.may_have_dead_latents()


# --- relu_l1 ----------------------------------------------------------------------------
def test_relu_l1_warmup_coefficient_values():
    sae = featsep.make_sae("relu_l1", d_in=D, d_sae=N)  # defaults: 0.04 over 1000 steps
    assert sae.default_lr() == 3e-4
    assert sae.l1_coefficient_at(0) == pytest.approx(0.04 / 1000)
    assert sae.l1_coefficient_at(499) == pytest.approx(0.02)
    assert sae.l1_coefficient_at(999) == pytest.approx(0.04)
    assert sae.l1_coefficient_at(10_000) == pytest.approx(0.04)
    assert sae.training_forward(data(), 499, 2000).coefficients["l1"] == pytest.approx(0.02)
    assert linear_warmup(0.3, 0, 0) == 0.3


@pytest.mark.parametrize("by_norm", [False, True])
def test_relu_l1_terms(by_norm):
    sae = featsep.make_sae("relu_l1", d_in=D, d_sae=N, l1_weight_by_decoder_norm=by_norm)
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, N)[:, None])
    x = data()
    out = sae.training_forward(x, 0, 1)
    codes = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    weights = sae.W_dec.norm(dim=1) if by_norm else torch.ones(N)
    torch.testing.assert_close(out.terms["l1"], (codes * weights).sum(-1).mean())
    torch.testing.assert_close(out.terms["mse"], ((codes @ sae.W_dec + sae.b_dec - x) ** 2).sum(-1).mean())
    assert float(out.metrics["l0"]) == pytest.approx(float((codes > 0).sum(-1).float().mean()))


def test_resampling_changes_only_dead_latents_and_resets_their_adam_state():
    x = data()
    dead = torch.zeros(N, dtype=torch.bool)
    dead[[3, 17, 50]] = True
    saes, opts = [], []
    for every in (3, 0):  # a twin without resampling shows what live latents should be
        sae = featsep.make_sae("relu_l1", d_in=D, d_sae=N, resample_every=every, dead_tokens_threshold=2 * B)
        with torch.no_grad():
            sae.b_enc[dead] = -1e3  # silenced: never fire, so dead after 2 batches
        opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
        for i in range(3):  # resampling happens after step 2: (2 + 1) % 3 == 0
            step(sae, x, opt, i)
        saes.append(sae)
        opts.append(opt)
    sae, twin = saes
    opt = opts[0]
    torch.testing.assert_close(sae.W_dec[~dead], twin.W_dec[~dead], atol=0, rtol=0)
    torch.testing.assert_close(sae.W_enc[:, ~dead], twin.W_enc[:, ~dead], atol=0, rtol=0)
    torch.testing.assert_close(sae.b_enc[~dead], twin.b_enc[~dead], atol=0, rtol=0)
    assert not torch.allclose(sae.W_dec[dead], twin.W_dec[dead])
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(N))
    assert torch.all(sae.b_enc[dead] == 0)
    assert torch.all(sae.tokens_since_fired[dead] == 0)
    for p, sl in ((sae.W_dec, (dead,)), (sae.W_enc, (slice(None), dead)), (sae.b_enc, (dead,))):
        assert torch.all(opt.state[p]["exp_avg"][sl] == 0)
        assert torch.all(opt.state[p]["exp_avg_sq"][sl] == 0)
        live = (~dead,) if sl[0] is dead else (slice(None), ~dead)
        assert torch.all(opt.state[p]["exp_avg_sq"][live] > 0)
    # the new decoder rows point at (centred) training inputs
    cos = (sae.W_dec[dead] @ torch.nn.functional.normalize(x - sae.b_dec, dim=1).T).max(dim=1).values
    torch.testing.assert_close(cos, torch.ones(3), atol=1e-5, rtol=0)


def test_resampling_leaves_live_latents_identical():
    sae = featsep.make_sae("relu_l1", d_in=D, d_sae=N, dead_tokens_threshold=10)
    sae.tokens_since_fired[:5] = 10
    before = {k: v.detach().clone() for k, v in sae.named_parameters()}
    assert sae.resample_dead_latents(data(), None, seed=0) == 5
    assert torch.equal(sae.W_dec[5:], before["W_dec"][5:])
    assert torch.equal(sae.W_enc[:, 5:], before["W_enc"][:, 5:])
    assert torch.equal(sae.b_dec, before["b_dec"])
    assert not torch.equal(sae.W_enc[:, :5], before["W_enc"][:, :5])


# --- topk / auxk --------------------------------------------------------------------------
def test_topk_codes_and_default_lr():
    sae = featsep.make_sae("topk", d_in=D, d_sae=N, k=K)
    x = data()
    codes = sae.encode(x)
    assert ((codes != 0).sum(-1) <= K).all() and (codes >= 0).all()
    pre = sae.pre_activations(x)
    assert torch.equal(codes.max(-1).values, pre.max(-1).values.relu())
    assert featsep.make_sae("topk", d_in=D, d_sae=16384 * 4, k=K).default_lr() == pytest.approx(1e-3)
    assert featsep.make_sae("topk", d_in=1024, d_sae=16384, k=K).default_lr() == pytest.approx(1e-3)  # d_in term
    assert featsep.make_sae("topk", d_in=D, d_sae=16384, k=K, aux_k=7).cfg.aux_k == 7
    assert featsep.make_sae("topk", d_in=D, d_sae=16384, k=K).cfg.aux_k == K


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
def test_topk_family_dead_threshold_follows_firing_interval_unless_given(arch, tmp_path):
    """Not given: 128 average firing intervals (d_sae / k tokens); given (or loaded): kept."""
    assert featsep.make_sae(arch, d_in=D, d_sae=4096, k=32).cfg.dead_tokens_threshold == 16384
    assert featsep.make_sae(arch, d_in=D, d_sae=16384, k=64).cfg.dead_tokens_threshold == 32768
    assert featsep.make_sae(arch, d_in=D, d_sae=4096).cfg.dead_tokens_threshold == 128 * 4096 // 32  # default k
    coerced = type(featsep.make_sae(arch, d_in=D, d_sae=4096, k=32).cfg).model_validate(
        {"d_in": D, "d_sae": "4096", "k": 32.0})  # as a foreign JSON may spell them
    assert (coerced.aux_k, coerced.dead_tokens_threshold) == (32, 16384)
    given = featsep.make_sae(arch, d_in=D, d_sae=4096, k=32, dead_tokens_threshold=10_000_000)
    assert given.cfg.dead_tokens_threshold == 10_000_000
    featsep.save_sae(given, tmp_path / "s")
    assert featsep.load_sae(tmp_path / "s").cfg.dead_tokens_threshold == 10_000_000
    assert featsep.make_sae("relu_l1", d_in=D, d_sae=4096).cfg.dead_tokens_threshold == 1_000_000


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
def test_run_config_section_leaves_the_auxk_rules_to_the_architecture(arch):
    """A [sae] section passes its defaults on to make_sae; the rules still follow its k."""
    from featsep.config import load_config

    cfg = load_config(None, [f"sae.architecture={arch}", "sae.k=64", "sae.d_sae=8192"])
    sae = featsep.make_sae(arch, d_in=D, **cfg.sae.params())
    assert (sae.cfg.aux_k, sae.cfg.dead_tokens_threshold) == (64, 128 * 8192 // 64)
    cfg = load_config(None, [f"sae.architecture={arch}", "sae.k=64", "sae.aux_k=5", "sae.dead_tokens_threshold=77"])
    sae = featsep.make_sae(arch, d_in=D, **cfg.sae.params())
    assert (sae.cfg.aux_k, sae.cfg.dead_tokens_threshold) == (5, 77)


def test_auxk_zero_without_dead_latents_and_trains_only_dead_ones():
    sae = featsep.make_sae("topk", d_in=D, d_sae=N, k=K, aux_k=8, dead_tokens_threshold=100)
    x = data()
    out = sae.training_forward(x, 0, 1)
    assert out.terms["auxk"].item() == 0.0
    assert out.coefficients["auxk"] == pytest.approx(1 / 8)
    dead = torch.zeros(N, dtype=torch.bool)
    dead[:20] = True
    sae.tokens_since_fired.copy_(torch.where(dead, 100, 0))
    out = sae.training_forward(x, 1, 2)
    assert out.terms["auxk"].item() > 0
    sae.zero_grad()
    out.terms["auxk"].backward()
    touched = sae.W_enc.grad.abs().sum(0) > 0
    assert touched.any() and not touched[~dead].any()  # only dead encoder columns learn
    # value: top-8 dead pre-activations reconstruct the detached residual, scale min(20/8, 1)
    pre = sae.pre_activations(x).detach()
    v, i = pre.masked_fill(~dead, -math.inf).topk(8, dim=-1)
    e_hat = torch.zeros(B, N).scatter(1, i, v.relu()) @ sae.W_dec
    resid = x - out.x_hat.detach()
    torch.testing.assert_close(out.terms["auxk"], ((e_hat - resid) ** 2).sum(-1).mean())


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("n_dead", [0, 5, 30, 80])  # none; fewer than aux_k; more (dense block); > 8 aux_k (gathers)
def test_auxk_listing_dead_latents_on_the_cpu_equals_the_sync_free_form(monkeypatch, arch, sparse, n_dead):
    """The CPU selects among its dead latents only (featsep.device), by a dense block of them
    up to 8 aux_k dead and by gathers past that; accelerators select over all latents with the
    others masked: the same term and gradients, whatever the number dead."""
    import featsep.device
    from featsep.sae.topk import _AUX_DENSE_RATIO

    assert 30 <= _AUX_DENSE_RATIO * 8 < 80  # the CPU cases below take both of its forms
    x = data().double()
    got = []
    for sync_free in (False, True):
        monkeypatch.setattr(featsep.device, "SYNC_FREE_EVERYWHERE", sync_free)
        sae = featsep.make_sae(arch, d_in=D, d_sae=N, k=K, aux_k=8, dead_tokens_threshold=100, dtype="float64",
                               sparse_encoder=sparse, sparse_decoder=sparse)
        dead = torch.zeros(N, dtype=torch.bool)
        dead[torch.randperm(N, generator=torch.Generator().manual_seed(3))[:n_dead]] = True
        sae.tokens_since_fired.copy_(torch.where(dead, 100, 99))  # the host bound: some may be dead
        out = sae.training_forward(x, 1, 2)
        term = out.terms["auxk"]
        if term.requires_grad:  # the CPU's term is a plain 0 when none is dead
            term.backward()
        got.append((term.detach(), *(torch.zeros_like(p) if p.grad is None else p.grad
                                      for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec))))
    cpu, sync_free = got
    assert (cpu[0] > 0) == (n_dead > 0)
    for a, b in zip(cpu, sync_free):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


# --- batchtopk ---------------------------------------------------------------------------
def test_batchtopk_selects_exactly_k_times_batch_and_threshold_matches_inference():
    sae = featsep.make_sae("batchtopk", d_in=D, d_sae=N, k=K, threshold_lr=0.25)
    x = data()
    out = sae.training_forward(x, 0, 1)
    codes = out.codes.dense()
    assert int((codes != 0).sum()) == K * B == int(out.codes.selected.sum())  # the rest is padding
    assert out.codes.active.sum(-1).max() > K  # per-token counts vary
    pre = sae.pre_activations(x).detach()
    flat = pre.relu().flatten()
    ref = torch.zeros_like(flat).scatter(0, flat.topk(K * B).indices, flat.topk(K * B).values).view(B, N)
    torch.testing.assert_close(codes, ref)
    m1 = codes[codes > 0].min()
    torch.testing.assert_close(sae.threshold, m1)  # first batch sets the threshold
    inferred = sae.encode(x).detach()  # strict >: all selected latents except the smallest one
    assert int((inferred != 0).sum()) == K * B - 1
    assert torch.equal(inferred != 0, (codes != 0) & (codes > m1))
    # later batches move it by an exponential moving average
    x2 = data(seed=1)
    codes2 = sae.training_forward(x2, 1, 2).codes.dense()
    m2 = codes2[codes2 > 0].min()
    torch.testing.assert_close(sae.threshold, 0.75 * m1 + 0.25 * m2)


# --- jumprelu ----------------------------------------------------------------------------
def test_jumprelu_straight_through_gradients_equal_the_formula():
    torch.manual_seed(0)
    eps, theta0, c = 0.5, 0.3, 0.7
    sae = featsep.make_sae("jumprelu", d_in=D, d_sae=N, bandwidth=eps, init_threshold=theta0,
                           l0_coefficient=c, dtype="float64")
    with torch.no_grad():
        sae.log_threshold.add_(torch.linspace(-0.5, 0.5, N, dtype=torch.float64))
    x = data().double() * 0.3
    w = torch.randn(B, N, dtype=torch.float64)
    out = sae.training_forward(x, 0, 1)
    loss = (out.codes.dense() * w).sum() + c * out.terms["l0"]
    loss.backward()
    z = sae.pre_activations(x).detach()
    th = sae.log_threshold.exp().detach()
    kern = (((z - th) / eps).abs() < 0.5).double()
    d_theta = (-(th / eps) * kern * w).sum(0) + c * (-(1 / eps) * kern).sum(0) / B
    torch.testing.assert_close(sae.log_threshold.grad, d_theta * th)  # chain rule through exp
    assert kern.sum() > 0
    # z gets the exact gradient of z * H(z - theta): through W_enc
    d_z = (z > th).double() * w
    torch.testing.assert_close(sae.b_enc.grad, d_z.sum(0))
    assert torch.equal(out.codes.dense().detach(), z * (z > th))
    torch.testing.assert_close(out.terms["l0"], (z > th).double().sum(-1).mean())
    assert torch.equal(sae.encode(x).detach(), out.codes.dense().detach())


# --- matryoshka --------------------------------------------------------------------------
def test_matryoshka_prefix_losses():
    sae = featsep.make_sae("matryoshka", d_in=D, d_sae=N, k=K, prefix_sizes=[8, 32])
    assert sae.cfg.prefix_sizes == [8, 32, N]
    assert featsep.make_sae("matryoshka", d_in=D, d_sae=64, k=2).cfg.prefix_sizes == [4, 16, 64]
    x = data()
    out = sae.training_forward(x, 0, 1)
    codes = out.codes.dense().detach()
    total = 0.0
    for w in (8, 32):
        rec = codes[:, :w] @ sae.W_dec[:w] + sae.b_dec
        mse = ((rec - x) ** 2).sum(-1).mean()
        assert float(out.metrics[f"mse_prefix_{w}"]) == pytest.approx(mse.detach().item(), rel=1e-5)
        total = total + mse
    torch.testing.assert_close(out.terms["matryoshka_mse"], total)
    torch.testing.assert_close(out.terms["mse"], ((codes @ sae.W_dec + sae.b_dec - x) ** 2).sum(-1).mean())
    assert int((codes != 0).sum()) == K * B  # BatchTopK selection underneath
