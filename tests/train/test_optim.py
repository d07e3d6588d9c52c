"""Optimisers by name: the registry, sign-SGD schedule-free against its naive reference, exact
resume, the averaged weights as the saved ones, and the [train] settings they need."""

from __future__ import annotations

import pytest
import torch

from featsep.rundir import RunDir
from featsep.sae import load_sae, make_sae
from featsep.train import train
from featsep.train.checkpoint import load_checkpoint
from featsep.train.config import TrainConfig
from featsep.train.optim import (
    SignSGDScheduleFree,
    make_optimizer,
    naive_reference,
    optimizer_names,
    use_averaged_parameters,
)
from tests.helpers import killed_after

D_IN, D_SAE, BATCH = 8, 16, 32
SF = "signsgd_schedulefree"


def topk(seed: int = 1):
    return make_sae("topk", d_in=D_IN, d_sae=D_SAE, k=3, aux_k=4, dead_tokens_threshold=64, seed=seed)


def make_batches(n: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return [torch.randn(BATCH, D_IN, generator=gen) for _ in range(n)]


def run_kw(**kw):
    return {**dict(steps=15, lr=1e-2, optimizer=SF, lr_warmup_steps=3, checkpoint_every=5, log_every=2,
                   progress=False, seed=7), **kw}


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_registry_names_and_unknown_name_is_one_line():
    assert optimizer_names() == ["adam", SF]
    with pytest.raises(ValueError) as caught:
        make_optimizer("sgd", [torch.zeros(2, requires_grad=True)], 1e-3, TrainConfig())
    assert str(caught.value) == "unknown optimizer 'sgd'; choose one of: adam, signsgd_schedulefree"
    with pytest.raises(ValueError, match="bad training settings: .*optimizer.*adam, signsgd_schedulefree"):
        train([topk()], make_batches(2), optimizer="sgd", progress=False)
    assert isinstance(make_optimizer("adam", [torch.zeros(2, requires_grad=True)], 1e-3, TrainConfig()),
                      torch.optim.Adam)


def test_train_config_resolves_the_decay_by_optimizer_and_checks_beta():
    assert TrainConfig().decay_fraction("adam") == 0.2
    assert TrainConfig().decay_fraction(SF) == 0.0  # its averaging replaces the decay
    assert TrainConfig(lr_decay_fraction=0.1).decay_fraction(SF) == 0.1  # asked for: honoured
    for beta in (0.0, 1.5):
        with pytest.raises(ValueError, match="schedule_free_beta"):
            TrainConfig(schedule_free_beta=beta)


def test_signsgd_schedulefree_equals_naive_reference():
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    b = torch.randn(6, generator=gen, dtype=torch.float64)
    w0, v0 = torch.randn(4, generator=gen, dtype=torch.float64), torch.randn(3, generator=gen, dtype=torch.float64)

    def loss(w, v):
        return (A @ w - b).pow(2).sum() + (v - 0.5).pow(4).sum() + (w[:3] * v).sum()

    def grads(params):
        w, v = (p.clone().requires_grad_(True) for p in params)
        return list(torch.autograd.grad(loss(w, v), (w, v)))

    lrs = [0.01, 0.02, 0.03, 0.03, 0.025, 0.02, 0.01, 0.005]  # a warm-up then a decay: lr_max matters
    w, v = w0.clone().requires_grad_(True), v0.clone().requires_grad_(True)
    opt = SignSGDScheduleFree([w, v], lr=lrs[0], beta=0.9)
    for lr in lrs:
        opt.param_groups[0]["lr"] = lr
        opt.zero_grad()
        loss(w, v).backward()
        opt.step()
    x_ref, y_ref = naive_reference([w0, v0], grads, lrs, beta=0.9)
    torch.testing.assert_close([w.detach(), v.detach()], y_ref, rtol=0, atol=1e-12)
    averaged = opt.averaged_parameters()
    torch.testing.assert_close([averaged[w], averaged[v]], x_ref, rtol=0, atol=1e-12)
    assert not torch.allclose(x_ref[0], y_ref[0])  # x and y are different points: the test can tell them apart


def test_an_edit_of_the_parameters_lands_in_the_average():
    """Decoder renormalisation edits the parameters (y) between steps; x = (y - (1-b) z) / b
    takes the edit over, so the saved weights keep it."""
    p = torch.ones(3, requires_grad=True)
    opt = SignSGDScheduleFree([p], lr=0.1, beta=0.8)
    p.grad = torch.tensor([1.0, -1.0, 0.0])
    opt.step()
    before = opt.averaged_parameters()[p].clone()
    with torch.no_grad():
        p.add_(0.4)
    torch.testing.assert_close(opt.averaged_parameters()[p], before + 0.4 / 0.8)
    use_averaged_parameters(opt)
    torch.testing.assert_close(p.detach(), before + 0.5)


def test_resume_after_kill_is_exact(tmp_path):
    batches = make_batches(15)
    full = train([topk()], batches, out_dir=tmp_path / "full", **run_kw())[0]
    with pytest.raises(KeyboardInterrupt):
        train([topk()], killed_after(batches, 12), out_dir=tmp_path / "cut", **run_kw())
    state = load_checkpoint(tmp_path / "cut", 10)
    assert {"z"} <= set(next(iter(state["optimizer"]["state"].values())))  # the base iterate is kept
    resumed = train([topk(seed=9)], batches, out_dir=tmp_path / "cut", resume=True, **run_kw())[0]
    assert_same_weights(full, resumed)


def test_saved_and_returned_weights_are_the_averaged_ones(tmp_path):
    sae = train([topk()], make_batches(6), out_dir=tmp_path, **run_kw(steps=6))[0]
    state = load_checkpoint(tmp_path, 6)  # the checkpoint holds the training iterate y and z
    position = [name for name, _ in sae.named_parameters()].index("W_dec")  # optimizer state is by position
    y, z = state["sae"]["W_dec"], state["optimizer"]["state"][position]["z"]
    assert z.shape == y.shape
    x = y.lerp(z, 1.0 - 1.0 / 0.95)
    assert not torch.allclose(x, y)
    torch.testing.assert_close(sae.W_dec.detach(), x)
    torch.testing.assert_close(load_sae(RunDir(tmp_path).sae_dir).W_dec.detach(), x)
    info = RunDir(tmp_path).read_config().train
    assert info["optimizer"] == SF and info["lr_decay_fraction"] == 0.0


def test_default_lr_follows_the_optimizer():
    sae = make_sae("topk", d_in=D_IN, d_sae=16384 * 4, k=3)
    assert sae.default_lr("adam") == pytest.approx(1e-3) and sae.default_lr("signsgd_schedulefree") == pytest.approx(2.5e-3)
    with pytest.raises(ValueError, match="no default learning rate for optimizer 'lion'"):
        sae.default_lr("lion")


def test_each_sae_gets_its_architecture_s_default_optimizer_and_schedule(tmp_path):
    """optimizer None: each SAE trains with its class's default_optimizer, its own lr rule and
    that optimizer's schedule, side by side in one run (TopK and ReLU+L1: Adam, decay 0.2; a
    TopK class defaulting to sign-SGD schedule-free: no decay); the logged lr shows each."""
    from featsep.sae.topk import TopKConfig, TopKSAE

    class SignTopK(TopKSAE):
        default_optimizer = SF

    relu = make_sae("relu_l1", d_in=D_IN, d_sae=D_SAE)
    sign = SignTopK(TopKConfig(d_in=D_IN, d_sae=D_SAE, k=3))
    saes = train([topk(), relu, sign], make_batches(10), steps=10, names=["t", "r", "s"], out_dir=tmp_path,
                 progress=False, log_every=1)
    assert len({sae.default_lr("adam") for sae in saes[:2]}) == 2
    for name, sae, opt, decay in (("t", saes[0], "adam", 0.2), ("r", relu, "adam", 0.2), ("s", sign, SF, 0.0)):
        recorded = RunDir(tmp_path / name).read_config().train
        assert (recorded["optimizer"], recorded["lr_decay_fraction"]) == (opt, decay)
        assert recorded["lr"] == sae.default_lr(opt)
        lrs = [row["lr"] for row in RunDir(tmp_path / name).read_metrics()]
        assert (lrs[-1] == lrs[0]) == (decay == 0.0)  # Adam's last two steps decay; schedule-free's do not
