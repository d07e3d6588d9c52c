"""competition eval: every statistic against a dense n x n computation, and one end-to-end run."""

from __future__ import annotations

import math

import pytest
import torch

from featsep.evals.competition import (
    CompetitionSettings,
    batch_competition,
    competition_stats,
    decoder_cosines,
    pair_sums,
    stability,
    strongest_partners,
    summarise,
)

N_LATENTS = 12


def _topk_codes(batch: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pre = torch.randn(batch, N_LATENTS, generator=g) + torch.linspace(0, 1.5, N_LATENTS)
    values, idx = pre.topk(k, dim=1)
    return torch.zeros(batch, N_LATENTS).scatter(1, idx, values.relu())


def _dense_c(codes: torch.Tensor) -> torch.Tensor:
    N = codes / (codes.norm(dim=0) + 1e-6)
    return N.T @ N


def test_batch_competition_matches_dense_rowsums():
    codes = _topk_codes(40, 4, 0)
    c = _dense_c(codes)
    torch.testing.assert_close(batch_competition(codes, "specified"), c.sum(1) - c.diagonal(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch_competition(codes, "reference"), c.sum(1) - 1, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="nonnegative"):
        batch_competition(-codes)


def test_pair_sums_hand_example():
    # rows: latents (0,1) together twice, (1,2) once
    x = torch.tensor([[1.0, 2.0, 0.0], [3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])
    keys, sums, counts = pair_sums(x)
    assert keys.tolist() == [0 * 3 + 1, 1 * 3 + 2]
    assert sums.tolist() == [1 * 2 + 3 * 1, 2 * 5]
    assert counts.tolist() == [2, 1]


def test_competition_stats_against_dense():
    batches = [(_topk_codes(30, 3, s), 0 if s < 2 else 1) for s in range(4)]
    stats = competition_stats(iter(batches), N_LATENTS, "specified")
    dense_comp = sum(_dense_c(c).sum(1) - _dense_c(c).diagonal() for c, _ in batches) / 4
    torch.testing.assert_close(stats.competition.float(), dense_comp, atol=1e-5, rtol=1e-5)
    mean_c = sum(_dense_c(c) for c, _ in batches) / 4
    i, j = stats.pair_keys // N_LATENTS, stats.pair_keys % N_LATENTS
    torch.testing.assert_close(stats.pair_c.float(), mean_c[i, j], atol=1e-5, rtol=1e-5)
    # every co-active pair is listed: off-diagonal upper entries not listed are zero
    listed = torch.zeros(N_LATENTS, N_LATENTS, dtype=torch.bool)
    listed[i, j] = True
    upper = torch.triu(torch.ones(N_LATENTS, N_LATENTS, dtype=torch.bool), 1)
    assert float(mean_c[upper & ~listed].abs().max()) == 0.0
    # per-latent competition = sum of its pairs' c (the pairs and the row-sum identity agree)
    from_pairs = torch.zeros(N_LATENTS, dtype=torch.float64).index_add_(0, i, stats.pair_c).index_add_(0, j, stats.pair_c)
    torch.testing.assert_close(from_pairs.float(), dense_comp, atol=1e-5, rtol=1e-5)
    # half co-activation rates = A^T A / tokens of that half
    for h in range(2):
        A = torch.cat([(c != 0).float() for c, hh in batches if hh == h])
        rate = A.T @ A / A.shape[0]
        keys, r = stats.halves[h]
        torch.testing.assert_close(r.float(), rate[keys // N_LATENTS, keys % N_LATENTS])
        assert len(keys) == int((rate[upper] > 0).sum())
    codes_all = torch.cat([c for c, _ in batches])
    assert stats.l0 == pytest.approx(float((codes_all != 0).sum(1).float().mean()))
    torch.testing.assert_close(stats.density.float(), (codes_all != 0).float().mean(0))


def test_stability_hand_numbers():
    # pair keys 1, 2 in half A; 2, 3 in half B; union {1, 2, 3}
    ra = torch.tensor([0.2, 0.4])
    rb = torch.tensor([0.2, 0.1])
    out = stability(torch.tensor([1, 2]), ra, torch.tensor([2, 3]), rb)
    a = torch.tensor([0.2, 0.4, 0.0], dtype=torch.float64)
    b = torch.tensor([0.0, 0.2, 0.1], dtype=torch.float64)
    assert out["n_pairs_compared"] == 3
    assert out["mean_abs_rate_diff"] == pytest.approx(float((a - b).abs().mean()))
    assert out["mean_relative_rate_diff"] == pytest.approx((1 + 0.5 + 1) / 3)
    expected_corr = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    assert out["coactivation_rate_correlation"] == pytest.approx(expected_corr)
    assert out["pair_set_jaccard"] == pytest.approx(1 / 3)


def test_strongest_partners():
    n = 4
    keys = torch.tensor([0 * n + 1, 0 * n + 2, 2 * n + 3])
    c = torch.tensor([0.5, 0.7, 0.1], dtype=torch.float64)
    partner, best = strongest_partners(n, keys, c)
    assert partner.tolist() == [2, 0, 0, 2]
    assert best.tolist() == pytest.approx([0.7, 0.5, 0.7, 0.1])


def test_summarise_schema_and_decoder_cosine():
    batches = [(_topk_codes(30, 3, s), s % 2) for s in range(4)]
    stats = competition_stats(iter(batches), N_LATENTS)
    W = torch.randn(N_LATENTS, 5, generator=torch.Generator().manual_seed(1))
    s = CompetitionSettings(n_top_pairs=3, histogram_bins=5, tau=0.3)
    res = summarise(stats, W, s)
    assert res.metrics["competition"]["share_over_tau"] == pytest.approx(float((stats.competition > 0.3).float().mean()))
    top = res.unstructured["top_pairs"]
    assert len(top) == 3 and top[0]["competition"] >= top[-1]["competition"]
    a, b = top[0]["latent_a"], top[0]["latent_b"]
    assert top[0]["decoder_cosine"] == pytest.approx(float(torch.cosine_similarity(W[a], W[b], dim=0)), abs=1e-6)
    assert len(res.details) == N_LATENTS and sum(res.unstructured["competition_histogram"]["counts"]) == N_LATENTS
    i, j = stats.pair_keys // N_LATENTS, stats.pair_keys % N_LATENTS
    all_cos = torch.cosine_similarity(W[i], W[j], dim=1)
    assert res.metrics["pairs"]["coactive_pairs_mean_abs_decoder_cosine"] == pytest.approx(float(all_cos.abs().mean()))
    assert math.isfinite(res.metrics["stability"]["coactivation_rate_correlation"])


def test_decoder_cosines_in_chunks():
    W = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))  # d 4: 8 elements are 2 pairs a chunk
    a, b = torch.tensor([0, 1, 2, 5, 3]), torch.tensor([1, 2, 5, 0, 4])
    torch.testing.assert_close(decoder_cosines(W, a, b, chunk_elements=8), torch.cosine_similarity(W[a], W[b], dim=1))
    assert decoder_cosines(W, a[:0], b[:0]).shape == (0,)


def test_competition_end_to_end(tmp_path, letters_lm):
    from featsep.evals import evaluate
    from featsep.sae import make_sae
    from tests.evals.helpers import HOOK

    lm = letters_lm
    torch.manual_seed(0)  # the SAE below starts from the same weights whatever ran before
    sae = make_sae("topk", d_in=lm.d_model, d_sae=64, k=4, hook_name=HOOK)
    corpus = tmp_path / "corpus.txt"
    words = " ".join(f"x{i % 10} y{(3 * i) % 10}" for i in range(4000))
    corpus.write_text(words)
    out = evaluate(
        sae, evals=["competition"], model=lm, out_dir=tmp_path / "out", cache_dir=None, verbose=False,
        settings={"competition": {"dataset": str(corpus), "n_tokens": 1024, "batch_size": 128, "context_size": 32}},
    )["competition"]
    m = out["eval_result_metrics"]
    assert m["sparsity"]["l0"] == pytest.approx(4.0)
    assert m["sparsity"]["n_batches"] == 8
    assert m["sparsity"]["n_tokens"] == 1024
    per_latent = [d["competition"] for d in out["eval_result_details"]]
    assert len(per_latent) == 64
    assert m["competition"]["share_over_tau"] == pytest.approx(sum(c > 0.4 for c in per_latent) / 64)
    assert m["competition"]["mean"] == pytest.approx(sum(per_latent) / 64, rel=1e-5)
    assert (tmp_path / "out" / "competition_eval_results.json").exists()
