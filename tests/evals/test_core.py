"""featsep.evals.core: formulas checked against numbers computed by hand, and the metrics on the letters_lm."""

from __future__ import annotations

import math

import pytest
import torch

from featsep.evals.common.context import EvalContext, encode_decode
from featsep.evals.core import (
    CoreSettings,
    SparsityVarianceAccumulator,
    downstream_metrics,
    kl_ce_scores,
    max_cosine_to_others,
    misc_metrics,
    per_token_ce,
    per_token_kl,
)
from featsep.sae import SAE, SAEConfigBase, make_sae
from tests.evals.helpers import D, HOOK


class IdentitySAE(SAE):
    """codes = normalised x, decode = codes: a perfect reconstruction."""

    def encode(self, x):
        return x.clone()

    def decode(self, codes):
        return codes


class ZeroSAE(SAE):
    def encode(self, x):
        return torch.zeros(*x.shape[:-1], self.cfg.d_sae, dtype=x.dtype, device=x.device)

    def decode(self, codes):
        return torch.zeros(*codes.shape[:-1], self.cfg.d_in, dtype=codes.dtype, device=codes.device)


def _special_sae(cls, factor=4.0):
    sae = cls(SAEConfigBase(d_in=D, d_sae=D, hook_name=HOOK, normalization_factor=factor))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(D))
        sae.W_dec.copy_(torch.eye(D))
    return sae


def _rows(letters_lm, n=8, length=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, letters_lm.vocab_size, (n, length), generator=g)
    ids[:, 0] = letters_lm.bos_token_id
    ids[1, 5] = letters_lm.bos_token_id  # a document boundary inside a row, as packing makes
    return ids


def test_sparsity_variance_formulas_by_hand():
    # one batch, one prompt of 3 tokens; the third is special (masked)
    x = torch.tensor([[[3.0, 4.0], [1.0, 0.0], [100.0, 100.0]]])
    x_hat = torch.tensor([[[3.0, 0.0], [2.0, 0.0], [7.0, 7.0]]])
    codes = torch.tensor([[[2.0, 0.0, 1.0], [0.0, 0.0, 0.0], [5.0, 5.0, 5.0]]])
    keep = torch.tensor([[True, True, False]])
    acc = SparsityVarianceAccumulator(3)
    acc.add(x, x_hat, codes, keep)
    m, per_latent = acc.result()
    expected = {
        "l2_norm_in": 3.0,  # (5 + 1) / 2
        "l2_norm_out": 2.5,  # (3 + 2) / 2
        "l2_ratio": 1.3,  # (3/5 + 2/1) / 2
        "relative_reconstruction_bias": 13 / 11,  # mean(9, 4) / mean(9, 2)
        "l0": 1.0,
        "l1": 1.5,
        "mse_per_token": 8.5,  # (16 + 1) / 2
        "mse": 4.25,  # SAEBench: each token's error / 2 tokens, then the mean
        "cossim": 0.8,  # (9/15 + 1) / 2
        "explained_variance_legacy": -0.7,  # (1 - 16/5 + 1 - 1/5) / 2 with batch mean (2, 2)
        "explained_variance": -0.7,  # 1 - 8.5 / (13 - 8)
        # SAEBench's bug: total = E||x||^2 - (mean of E[x_d^2] over d)^2 = 13 - 6.5^2
        "explained_variance_saebench": 1 - 8.5 / (13 - 6.5**2),
    }
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, rel=1e-6), key
    assert per_latent["feature_density"].tolist() == [0.5, 0.0, 0.5]
    cah = per_latent["consistent_activation_heuristic"].tolist()
    assert cah[0] == 1.0 and math.isnan(cah[1]) and cah[2] == 1.0


def test_conventional_explained_variance_uses_global_mean_across_batches():
    acc = SparsityVarianceAccumulator(1)
    keep1, keep2 = torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 1, dtype=torch.bool)
    acc.add(torch.tensor([[[1.0, 0.0], [3.0, 0.0]]]), torch.tensor([[[1.0, 0.0], [2.0, 0.0]]]), torch.ones(1, 2, 1), keep1)
    acc.add(torch.tensor([[[5.0, 0.0]]]), torch.tensor([[[5.0, 0.0]]]), torch.ones(1, 1, 1), keep2)
    m, _ = acc.result()
    # E||x||^2 = 35/3, E x = (3, 0): total 8/3; mse 1/3 -> 1 - 1/8
    assert m["explained_variance"] == pytest.approx(0.875)
    assert m["relative_reconstruction_bias"] == pytest.approx(((1 + 4) / 2 / ((1 + 6) / 2) + 1.0) / 2)


def test_kl_and_ce_per_token_by_hand():
    clean = torch.tensor([[[0.0, math.log(3.0)]]])  # p = (1/4, 3/4)
    new = torch.zeros(1, 1, 2)  # q = (1/2, 1/2)
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert per_token_kl(clean, new).item() == pytest.approx(expected)
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])
    ids = torch.tensor([[0, 1]])
    assert per_token_ce(logits, ids).flatten().tolist() == pytest.approx([-math.log(0.75)])
    scores = kl_ce_scores(kl_sae=0.5, kl_abl=2.0, ce_sae=3.0, ce_clean=2.0, ce_abl=6.0)
    assert scores == pytest.approx({"kl_div_score": 0.75, "ce_loss_score": 0.75})


def test_weight_and_misc_metrics_by_hand():
    vecs = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -1.0]])
    assert max_cosine_to_others(vecs, chunk=2).tolist() == pytest.approx([2**-0.5, 2**-0.5, 0.0])
    misc = misc_metrics({"feature_density": torch.tensor([0.0, 0.005, 0.05, 0.2])})
    assert misc["frac_alive"] == 0.75 and misc["freq_over_1_percent"] == 0.5 and misc["freq_over_10_percent"] == 0.25
    assert misc["normalized_freq_over_1_percent"] == pytest.approx(0.25 / 0.255)
    assert misc["normalized_freq_over_10_percent"] == pytest.approx(0.2 / 0.255)


def test_normalisation_is_applied_and_undone():
    sae = make_sae("topk", d_in=4, d_sae=8, k=8, normalization_factor=0.5)
    x = torch.randn(3, 4)
    codes, x_hat = encode_decode(sae, x)
    with torch.no_grad():
        assert torch.allclose(codes, sae.encode(x * 0.5))
        assert torch.allclose(x_hat, sae.decode(codes) / 0.5)


def test_perfect_sae_scores_one_and_zero_sae_scores_zero(letters_lm):
    ctx = EvalContext(letters_lm, HOOK, cache_dir=None, verbose=False)
    rows = _rows(letters_lm)
    perfect, zero = _special_sae(IdentitySAE), _special_sae(ZeroSAE)
    all_positions = CoreSettings(lm_batch_size=3, exclude_special_tokens_from_reconstruction=False)
    out = downstream_metrics(ctx, [perfect, zero], rows, all_positions)
    assert out[0]["model_behavior_preservation"]["kl_div_with_sae"] == pytest.approx(0.0, abs=1e-7)
    assert out[0]["model_behavior_preservation"]["kl_div_score"] == pytest.approx(1.0)
    assert out[0]["model_performance_preservation"]["ce_loss_score"] == pytest.approx(1.0)
    assert out[1]["model_behavior_preservation"]["kl_div_score"] == pytest.approx(0.0, abs=1e-6)
    assert out[1]["model_performance_preservation"]["ce_loss_score"] == pytest.approx(0.0, abs=1e-6)
    assert out[1]["model_behavior_preservation"]["kl_div_with_ablation"] > 0
    # keeping special positions unreconstructed changes the zero SAE's splice, not the ablation
    kept = downstream_metrics(ctx, [zero], rows, CoreSettings(exclude_special_tokens_from_reconstruction=True))[0]
    assert kept["model_behavior_preservation"]["kl_div_with_ablation"] == pytest.approx(
        out[1]["model_behavior_preservation"]["kl_div_with_ablation"]
    )
    assert kept["model_behavior_preservation"]["kl_div_with_sae"] != pytest.approx(
        out[1]["model_behavior_preservation"]["kl_div_with_sae"]
    )


def test_downstream_metrics_mask_special_tokens(letters_lm):
    """KL means skip BOS positions; CE skips predictions made at a BOS position."""
    ctx = EvalContext(letters_lm, HOOK, cache_dir=None, verbose=False)
    rows = _rows(letters_lm, n=2, length=6)
    sae = make_sae("topk", d_in=D, d_sae=64, k=4, hook_name=HOOK)
    got = downstream_metrics(ctx, [sae], rows, CoreSettings(exclude_special_tokens_from_reconstruction=False))[0]
    clean = letters_lm.logits(rows)
    patched = letters_lm.run_with_hook(rows, None, HOOK, lambda a: encode_decode(sae, a)[1])
    keep = rows != letters_lm.bos_token_id
    kl = per_token_kl(clean, patched)[keep].mean().item()
    ce = per_token_ce(patched, rows)[keep[:, :-1]].mean().item()
    assert got["model_behavior_preservation"]["kl_div_with_sae"] == pytest.approx(kl, rel=1e-5)
    assert got["model_performance_preservation"]["ce_loss_with_sae"] == pytest.approx(ce, rel=1e-5)
