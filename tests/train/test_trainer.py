"""Trainer: loss composition, LR schedule, exact resume, NaN handling, sweeps, run-dir files."""

from __future__ import annotations

import json
import math
from typing import Optional

import pytest
import torch
from pydantic import Field

from featsep.codes import Codes
from featsep.penalties.base import Penalty, PenaltyConfigBase
from featsep.sae.base import SAE, SAEConfigBase, SAEOutput, register
from featsep.rundir import RunDir
from featsep.train import NonFiniteLossError, WarmupDecay, train
from featsep.train.checkpoint import load_checkpoint
from tests.helpers import killed_after

D_IN, D_SAE, BATCH = 8, 16, 32


# --- tiny test doubles (only the contracts in sae/base.py and penalties/base.py) ---------------
class TinyConfig(SAEConfigBase):
    l1_coefficient: float = 0.05
    noise: float = 0.0  # >0: the forward draws from the global RNG (tests RNG checkpointing)
    topk_form: bool = False  # return the codes in TopK form only (the k largest per row)
    k: int = 4


@register("tiny_test_relu")
class TinySAE(SAE):
    """ReLU SAE that reports no metrics, so the trainer's own fallbacks are exercised."""

    config_class = TinyConfig

    def __init__(self, cfg):
        super().__init__(cfg)
        gen = torch.Generator().manual_seed(cfg.seed)
        with torch.no_grad():
            w = torch.randn(cfg.d_sae, cfg.d_in, generator=gen)
            self.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
            self.W_enc.copy_(self.W_dec.T)
            self.b_enc.fill_(0.1)
            self.b_dec.zero_()

    def encode(self, x):
        return ((x - self.b_dec) @ self.W_enc + self.b_enc).relu()

    def training_forward(self, x, step, total_steps):
        if self.cfg.noise:
            x = x + self.cfg.noise * torch.randn_like(x)
        codes = self.encode(x)
        out = SAEOutput(
            x_hat=self.decode(codes),
            terms={"mse": (self.decode(codes) - x).pow(2).sum(-1).mean(), "l1": codes.sum(-1).mean()},
            coefficients={"l1": self.cfg.l1_coefficient},
            codes=Codes.from_dense(codes),
        )
        if self.cfg.topk_form:
            values, indices = codes.topk(self.cfg.k, dim=-1)
            out.codes = Codes.from_topk(values, indices, self.cfg.d_sae)
            out.x_hat = self.decode(torch.zeros_like(codes).scatter(1, indices, values))
            out.terms["mse"] = (out.x_hat - x).pow(2).sum(-1).mean()
        return out

    def after_optimizer_step(self, step, x, optimizer=None):
        with torch.no_grad():
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True))


def tiny(seed: int = 0, **kw) -> TinySAE:
    return TinySAE(TinyConfig(d_in=D_IN, d_sae=D_SAE, seed=seed, hook_layer=3, **kw))


class EmaConfig(PenaltyConfigBase):
    weight: float = 0.3
    beta: float = Field(0.5)


class EmaPenalty(Penalty):
    """Stateful: the loss weights each latent's squared code by an EMA of its firing rate, so a
    lost or wrong state changes the training trajectory."""

    name = "ema"
    config_class = EmaConfig

    def __init__(self, cfg):
        super().__init__(cfg)
        self.ema = torch.zeros(cfg.d_sae)
        self.calls = 0
        self.saw_topk: Optional[bool] = None

    def __call__(self, codes):
        self.saw_topk = codes.has_topk
        codes = codes.dense()
        rate = (codes.detach() > 0).float().mean(0)
        self.ema = self.cfg.beta * self.ema + (1 - self.cfg.beta) * rate
        self.calls += 1
        return {"ema": (self.ema * codes.pow(2)).sum(-1).mean()}

    def stats(self):
        return {"calls": self.calls, "mean_ema": self.ema.mean(), "histogram": self.ema.clone()}

    def state_dict(self):
        return {"ema": self.ema.clone(), "calls": self.calls}

    def load_state_dict(self, state):
        self.ema, self.calls = state["ema"].clone(), state["calls"]


def ema(**kw) -> EmaPenalty:
    return EmaPenalty(EmaConfig(d_sae=D_SAE, **kw))


def make_batches(n: int, seed: int = 1, batch: int = BATCH) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, D_IN, generator=gen) for _ in range(n)]


QUIET = dict(progress=False, lr=1e-2)


def assert_same_weights(a: SAE, b: SAE) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# --- loss composition ----------------------------------------------------------------------------
def test_loss_is_coefficient_weighted_sum_and_one_step_matches_manual_adam(tmp_path):
    x = make_batches(1)[0]
    sae, reference = tiny(), tiny()
    pen, ref_pen = ema(weight=0.3), ema(weight=0.3)
    train([sae], [x], steps=1, penalties=[pen], lr=1e-2, lr_decay_fraction=0, out_dir=tmp_path,
          progress=False, seed=5)

    # the same step by hand: data init, loss, the SAE's hooks around Adam
    torch.manual_seed(5)
    reference.init_from_data(x)
    opt = torch.optim.Adam(reference.parameters(), lr=1e-2)
    out = reference.training_forward(x, 0, 1)
    pen_term = ref_pen(out.codes)["ema"]
    loss = out.terms["mse"] + 0.05 * out.terms["l1"] + 0.3 * pen_term
    loss.backward()
    reference.before_optimizer_step()
    opt.step()
    reference.after_optimizer_step(0, x, opt)
    for a, b in zip(sae.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)

    (row,) = RunDir(tmp_path).read_metrics()
    assert row["step"] == 1 and row["tokens"] == BATCH
    assert math.isclose(row["loss"], row["loss/mse"] + 0.05 * row["loss/l1"] + 0.3 * row["loss/ema"], rel_tol=1e-6)
    assert math.isclose(row["loss"], float(loss.detach()), rel_tol=1e-6)
    assert row["coef/l1"] == 0.05 and row["coef/ema"] == 0.3
    # fallbacks: l0 and fvu from the batch; dead = latents silent over the log window
    probe = tiny()
    probe.init_from_data(x)
    codes = probe.encode(x)
    assert math.isclose(row["l0"], float((codes > 0).sum(-1).float().mean()), rel_tol=1e-6)
    assert math.isclose(row["dead_fraction"], float(1 - (codes > 0).any(0).float().mean()), abs_tol=1e-6)
    assert 0 < row["fvu"] < 10
    # scalar penalty stats are logged; the histogram is not
    assert row["ema/calls"] == 1.0 and "ema/mean_ema" in row and "ema/histogram" not in row


def test_topk_form_reaches_penalty_as_topk_codes():
    pen = ema()
    sae = tiny(topk_form=True)
    train([sae], make_batches(3), penalties={0: pen}, lr_decay_fraction=0, **QUIET)
    assert pen.saw_topk is True and pen.calls == 3


def test_sae_metrics_are_preferred_when_reported(tmp_path):
    class Reporting(TinySAE):
        def training_forward(self, x, step, total_steps):
            out = super().training_forward(x, step, total_steps)
            out.metrics = {"l0": 123.0, "fvu": 0.5, "dead_fraction": 0.25}
            return out

    train([Reporting(TinyConfig(d_in=D_IN, d_sae=D_SAE))], make_batches(2), out_dir=tmp_path, log_every=1,
          lr_decay_fraction=0, **QUIET)
    row = RunDir(tmp_path).read_metrics()[-1]
    assert (row["l0"], row["fvu"], row["dead_fraction"]) == (123.0, 0.5, 0.25)


# --- LR schedule ---------------------------------------------------------------------------------
def test_warmup_decay_values():
    s = WarmupDecay(warmup_steps=4, total_steps=20, decay_fraction=0.25)
    factors = [s(i) for i in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4:15] == [1.0] * 11
    assert factors[15:] == [1.0, 0.8, 0.6, 0.4, 0.2]  # decay_steps = 5, reaches 0 after the end
    assert WarmupDecay()(10_000) == 1.0
    # overlap: the smaller factor wins
    assert WarmupDecay(warmup_steps=10, total_steps=10, decay_fraction=0.5)(6) == pytest.approx(0.7)
    assert WarmupDecay(warmup_steps=10, total_steps=10, decay_fraction=0.5)(8) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="total number of steps"):
        WarmupDecay(0, None, 0.2)


def test_logged_lr_follows_schedule(tmp_path):
    train([tiny()], make_batches(10), lr=0.1, lr_warmup_steps=2, lr_decay_fraction=0.3, out_dir=tmp_path,
          log_every=1, progress=False)
    lrs = [r["lr"] for r in RunDir(tmp_path).read_metrics()]
    expected = [0.1 * WarmupDecay(2, 10, 0.3)(i) for i in range(10)]
    assert lrs == pytest.approx(expected, abs=1e-12)
    assert lrs[-1] == pytest.approx(0.1 / 3)


# --- checkpoint / resume -------------------------------------------------------------------------
def run_kw(**kw):
    base = dict(steps=23, lr=1e-2, lr_warmup_steps=3, lr_decay_fraction=0.3, checkpoint_every=5, log_every=2,
                progress=False, seed=7)
    base.update(kw)
    return base


@pytest.mark.parametrize("stateful_data", [False, True])
def test_resume_after_kill_is_bitwise_identical(tmp_path, stateful_data):
    from featsep.evals.synthetic import SyntheticSpec, make_synthetic

    if stateful_data:  # an iterable with state_dict/load_state_dict: its state is checkpointed
        data = make_synthetic(SyntheticSpec(n_features=32, d=D_IN, n_parents=2, n_pairs=2), seed=0)
        fresh_batches = lambda: data.batches(BATCH, 23, seed=3)  # noqa: E731
        assert hasattr(fresh_batches(), "state_dict")
    else:
        batches = make_batches(23)
        fresh_batches = lambda: list(batches)  # noqa: E731

    full = tiny(noise=0.01)
    train([full], fresh_batches(), penalties=[ema()], out_dir=tmp_path / "full", **run_kw())

    with pytest.raises(KeyboardInterrupt):
        train([tiny(noise=0.01)], killed_after(fresh_batches(), 13), penalties=[ema()], out_dir=tmp_path / "cut",
              **run_kw())
    assert sorted(RunDir(tmp_path / "cut").checkpoint_steps()) == [5, 10]
    torch.manual_seed(999)  # the resumed process starts with other RNG states and another init
    resumed = tiny(seed=123, noise=0.01)
    train([resumed], fresh_batches(), penalties=[ema()], out_dir=tmp_path / "cut", resume=True, **run_kw())

    assert_same_weights(full, resumed)
    strip = lambda rows: [{k: v for k, v in r.items() if "tokens_per_s" not in k} for r in rows]  # noqa: E731 (timings)
    assert strip(RunDir(tmp_path / "cut").read_metrics()) == strip(RunDir(tmp_path / "full").read_metrics())
    assert sorted(RunDir(tmp_path / "cut").checkpoint_steps()) == [20, 23]  # the last two are kept


def test_resume_with_real_topk(tmp_path):
    from featsep.sae import make_sae

    def topk():
        return make_sae("topk", d_in=D_IN, d_sae=D_SAE, k=3, aux_k=4, dead_tokens_threshold=64, seed=1)

    batches = make_batches(23)
    full = train([topk()], batches, out_dir=tmp_path / "full", **run_kw())[0]
    with pytest.raises(KeyboardInterrupt):
        train([topk()], killed_after(batches, 12), out_dir=tmp_path / "cut", **run_kw())
    resumed = train([make_sae("topk", d_in=D_IN, d_sae=D_SAE, k=3, aux_k=4, dead_tokens_threshold=64, seed=9)],
                    batches, out_dir=tmp_path / "cut", resume=True, **run_kw())[0]
    assert_same_weights(full, resumed)


def test_resume_of_finished_run_changes_nothing(tmp_path):
    first = train([tiny()], make_batches(6), out_dir=tmp_path, **run_kw(steps=6))[0]
    info = RunDir(tmp_path).read_final_info()
    again = train([tiny(seed=4)], make_batches(6), out_dir=tmp_path, resume=True, **run_kw(steps=6))[0]
    assert_same_weights(first, again)
    assert RunDir(tmp_path).read_final_info() == info


def test_existing_run_dir_needs_resume(tmp_path):
    train([tiny()], make_batches(2), out_dir=tmp_path, **QUIET, lr_decay_fraction=0)
    with pytest.raises(FileExistsError, match="resume=True"):
        train([tiny()], make_batches(2), out_dir=tmp_path, **QUIET, lr_decay_fraction=0)


# --- NaN / Inf -----------------------------------------------------------------------------------
def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path):
    batches = make_batches(20)
    batches[12] = batches[12].clone()
    batches[12][3, 1] = float("nan")
    with pytest.raises(NonFiniteLossError) as err:
        train([tiny(), tiny(seed=1)], batches, names=["first", "second"], out_dir=tmp_path, checkpoint_every=5,
              **QUIET)
    e = err.value
    assert (e.sae_name, e.step, e.term) == ("first", 12, "mse")
    assert "'first'" in str(e) and "step 12" in str(e) and "'mse'" in str(e)
    for name in ("first", "second"):
        assert sorted(RunDir(tmp_path / name).checkpoint_steps()) == [5, 10]
        state = load_checkpoint(tmp_path / name, 10)
        assert all(torch.isfinite(v).all() for v in state["sae"].values())
        assert not (tmp_path / name / "sae").exists() and not (tmp_path / name / "final_info.json").exists()

    # the checkpoint at step 10 is exactly the clean run's state at step 10
    with pytest.warns(UserWarning, match="ran out after 10 of 20"):
        train([tiny()], batches[:10], steps=20, out_dir=tmp_path / "clean", checkpoint_every=5, **QUIET)
    ref = load_checkpoint(tmp_path / "clean", 10)["sae"]
    for key, value in load_checkpoint(tmp_path / "first", 10)["sae"].items():
        assert torch.equal(value, ref[key])


def test_inf_from_a_penalty_names_the_penalty_term():
    class Exploding(EmaPenalty):
        def __call__(self, codes):
            return {"ema": super().__call__(codes)["ema"] * float("inf")}

    with pytest.raises(NonFiniteLossError, match="'ema'"):
        train([tiny()], make_batches(3), penalties=[Exploding(EmaConfig(d_sae=D_SAE))], lr_decay_fraction=0, **QUIET)


# --- sweeps --------------------------------------------------------------------------------------
def test_each_sae_trained_together_equals_trained_alone(tmp_path):
    batches = make_batches(12)
    configs = [dict(seed=0), dict(seed=1, l1_coefficient=0.2), dict(seed=2, topk_form=True)]
    lrs = [1e-2, 3e-3, None]
    together = [tiny(**c) for c in configs]
    pens = {"b": ema(), 2: [ema(weight=0.1)]}
    train(together, batches, names=["a", "b", "c"], penalties=pens, lr=lrs, out_dir=tmp_path, progress=False,
          log_every=3, checkpoint_every=4)
    for i, (c, name) in enumerate(zip(configs, "abc")):
        pen = {"a": None, "b": ema(), "c": [ema(weight=0.1)]}[name]
        alone = train([tiny(**c)], batches, penalties=[pen], lr=lrs[i], out_dir=tmp_path / "alone" / name,
                      progress=False, log_every=3, checkpoint_every=4)[0]
        assert_same_weights(together[i], alone)
        strip = lambda rows: [{k: v for k, v in r.items() if "tokens_per_s" not in k} for r in rows]  # noqa: E731 (timings)
        assert strip(RunDir(tmp_path / name).read_metrics()) == strip(RunDir(tmp_path / "alone" / name).read_metrics())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "alone", "b", "c"]
    # default lr comes from the SAE
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg["train"]["lr"] == tiny().default_lr() and cfg["train"]["names"] == ["a", "b", "c"]


# --- run directory files -------------------------------------------------------------------------
def test_run_dir_layout_final_info_and_metrics(tmp_path):
    from featsep.sae import load_sae

    sae = tiny()
    train([sae], make_batches(7), penalties=[ema()], out_dir=tmp_path, log_every=3, checkpoint_every=100,
          run_config={"train": {"tokens": 224}}, **QUIET)
    assert {p.name for p in tmp_path.iterdir()} >= {"config.json", "checkpoints", "metrics.jsonl", "sae",
                                                      "final_info.json"}
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["run_config"] == {"train": {"tokens": 224}}
    assert cfg["sae"]["d_sae"] == D_SAE and cfg["penalties"][0]["name"] == "ema"
    assert cfg["train"]["steps"] == 7 and cfg["train"]["lr"] == 1e-2

    rows = RunDir(tmp_path).read_metrics()
    assert [r["step"] for r in rows] == [3, 6, 7]  # every log_every steps, and the last
    assert [r["tokens"] for r in rows] == [3 * BATCH, 6 * BATCH, 7 * BATCH]
    assert {"loss", "loss/mse", "loss/l1", "loss/ema", "l0", "fvu", "dead_fraction", "lr", "tokens_per_s", "sae_tokens_per_s",
            "ema/calls"} <= set(rows[-1])
    param_bytes = sum(p.numel() * p.element_size() for p in sae.parameters())
    assert rows[-1]["state_memory_bytes"] >= 3 * param_bytes  # weights + two Adam moments
    assert sorted(RunDir(tmp_path).checkpoint_steps()) == [7]  # the end of training always checkpoints

    info = RunDir(tmp_path).read_final_info()
    section = info["training results for layer 3"]
    final = section["final_info"]
    assert final["training_steps"] == 7 and final["layer"] == 3 and final["dict_size"] == D_SAE
    assert final["learning_rate"] == 1e-2 and final["sparsity_penalty"] == 0.05
    assert final["final_loss"] == rows[-1]["loss"]
    assert section["config"]["dict_size"] == D_SAE and section["config"]["activation_dim"] == D_IN
    assert_same_weights(sae, load_sae(tmp_path / "sae"))

    RunDir(tmp_path).update_final_info("core evaluation results", {"metrics": {"l0": 4.0}})
    info2 = RunDir(tmp_path).read_final_info()
    assert info2["training results for layer 3"] == section
    assert info2["core evaluation results"] == {"metrics": {"l0": 4.0}}
    assert not list(tmp_path.glob(".*.tmp"))


def test_final_info_keeps_each_penalty_s_full_stats(tmp_path):
    """The momentum histogram and top competing latents (lists, kept out of metrics.jsonl) and
    the temporal tracked pairs reach final_info.json, equal to the penalties' own stats()."""
    from featsep.penalties import make_penalty

    momentum = make_penalty("momentum", d_sae=D_SAE)
    temporal = make_penalty("temporal", d_sae=D_SAE, window_size=BATCH)
    train([tiny()], make_batches(4), penalties=[[momentum, temporal]], out_dir=tmp_path, **QUIET)
    stats = RunDir(tmp_path).read_final_info()["training results for layer 3"]["final_info"]["penalty_stats"]
    assert set(stats) == {"momentum", "temporal"}
    assert stats["momentum"] == momentum.stats()
    assert sum(stats["momentum"]["momentum_histogram"]["counts"]) == D_SAE
    assert len(stats["momentum"]["top_competing_latents"]) > 0
    assert stats["temporal"]["tracked_pairs"] == temporal.stats()["tracked_pairs"] > 0
    assert stats["temporal"]["windows_closed"] == 4

def test_no_out_dir_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train([tiny()], make_batches(3), lr_decay_fraction=0, **QUIET)
    assert list(tmp_path.iterdir()) == []


# --- bad input -----------------------------------------------------------------------------------
def gen(n):
    yield from make_batches(n)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(penalties=[ema(), ema()]), ValueError, "align it with saes"),
        (dict(penalties={"nope": ema()}), ValueError, "names no SAE"),
        (dict(penalties=["momentum"]), TypeError, "not a Penalty"),
        (dict(steps=0), ValueError, "positive"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        train([tiny()], make_batches(2), **{"progress": False, **kwargs})


def test_shared_penalty_object_and_duplicate_names_rejected():
    with pytest.raises(ValueError, match="distinct"):
        train([tiny(), tiny(seed=1)], make_batches(2), names=["a", "a"], progress=False)
    pen = ema()
    with pytest.raises(ValueError, match="one per SAE"):
        train([tiny(), tiny(seed=1)], make_batches(2), penalties=[pen, pen], progress=False)


def test_decay_needs_known_length():
    with pytest.raises(ValueError, match="steps="):
        train([tiny()], gen(3), progress=False)
    # without decay, a generator trains until it ends
    train([tiny()], gen(3), lr_decay_fraction=0, progress=False)


def test_bad_batch_shape_and_empty_data():
    with pytest.raises(ValueError, match=r"expect \[B, 8\]"):
        train([tiny()], [torch.zeros(4, 5)], progress=False)
    with pytest.raises(ValueError, match="yielded nothing"):
        train([tiny()], gen(0), lr_decay_fraction=0, progress=False)


def test_missing_optional_logger_is_a_clear_error(tmp_path):
    pytest.importorskip("torch")
    try:
        import wandb  # noqa: F401

        pytest.skip("wandb is installed")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match="pip install wandb"):
        train([tiny()], make_batches(2), wandb=True, progress=False)


def test_top_level_featsep_train():
    import featsep

    for n_batches in (2, 1):  # the second call runs after featsep.train (the package) is imported
        sae = tiny()
        before = sae.W_dec.detach().clone()
        out = featsep.train([sae], make_batches(n_batches), lr_decay_fraction=0, progress=False)
        assert out[0] is sae and not torch.equal(before, sae.W_dec)  # it really trained


class KilledStream:
    """Wraps a stateful stream and dies when asked for batch n (the state methods pass through)."""

    def __init__(self, stream, n):
        self.stream, self.n, self.i = stream, n, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.i == self.n:
            raise KeyboardInterrupt("simulated kill")
        self.i += 1
        return next(self.stream)

    def state_dict(self):
        return self.stream.state_dict()

    def load_state_dict(self, state):
        self.stream.load_state_dict(state)


def test_resume_with_activation_stream_state(tmp_path):
    """featsep.data's stream (shuffling buffer, endless) resumes from its checkpointed state."""
    from featsep.data.stream import ActivationStream
    from featsep.sae import make_sae

    acts = torch.randn(1500, D_IN, generator=torch.Generator().manual_seed(0))
    stream = lambda: ActivationStream.from_tensor(acts, batch_size=BATCH, shuffle_buffer=4, seed=1)  # noqa: E731
    topk = lambda seed: make_sae("topk", d_in=D_IN, d_sae=D_SAE, k=3, seed=seed)  # noqa: E731
    full = train([topk(0)], stream(), out_dir=tmp_path / "full", **run_kw(steps=30))[0]
    with pytest.raises(KeyboardInterrupt):
        train([topk(0)], KilledStream(stream(), 17), out_dir=tmp_path / "cut", **run_kw(steps=30))
    resumed = train([topk(3)], stream(), out_dir=tmp_path / "cut", resume=True, **run_kw(steps=30))[0]
    assert_same_weights(full, resumed)


@pytest.mark.parametrize("penalty", ["momentum", "temporal", "orthogonality"])
def test_resume_with_real_penalties(tmp_path, penalty):
    """The real penalties' tracker state goes through checkpoints (TopK form with codes=None from
    the sparse-decoder TopK; dense codes from relu_l1)."""
    from featsep.penalties import make_penalty
    from featsep.sae import make_sae

    batches = make_batches(16)

    def models(seed):
        return [make_sae("topk", d_in=D_IN, d_sae=D_SAE, k=3, sparse_decoder=True, seed=seed),
                make_sae("relu_l1", d_in=D_IN, d_sae=D_SAE, seed=seed)]

    def pens():
        return [make_penalty(penalty, d_sae=D_SAE), make_penalty(penalty, d_sae=D_SAE)]

    kw = run_kw(steps=16, checkpoint_every=4)
    full = train(models(0), batches, penalties=pens(), out_dir=tmp_path / "full", **kw)
    with pytest.raises(KeyboardInterrupt):
        train(models(0), killed_after(batches, 10), penalties=pens(), out_dir=tmp_path / "cut", **kw)
    resumed = train(models(1), batches, penalties=pens(), out_dir=tmp_path / "cut", resume=True, **kw)
    for a, b in zip(full, resumed):
        assert_same_weights(a, b)
    row = RunDir(tmp_path / "full" / "sae_0").read_metrics()[-1]
    assert f"loss/{penalty}" in row and row[f"{penalty}/steps"] == 16.0


@pytest.mark.slow
def test_compiled_training_forward_equals_eager():
    """[train] compile = true: torch.compile of each SAE's training forward (about 40 s of
    compilation on CPU, hence slow); the weights after 6 steps equal the eager run's, and the
    returned SAE carries no compiled attribute."""
    import featsep

    x = torch.randn(256, 32, generator=torch.Generator().manual_seed(0))
    trained = []
    for compile in (False, True):
        sae = featsep.make_sae("topk", d_in=32, d_sae=128, k=4, b_dec_init="zeros", seed=0)
        featsep.train([sae], [x] * 6, 6, progress=False, optimizer="adam", lr=1e-3, compile=compile)
        trained.append(sae)
    assert "training_forward" not in vars(trained[1])
    for name, eager in trained[0].state_dict().items():
        torch.testing.assert_close(trained[1].state_dict()[name], eager, rtol=1e-5, atol=1e-6)
