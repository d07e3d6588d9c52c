"""featsep.evals: core, sparse_probing and absorption on a tiny random model.

Formulas are checked against numbers computed by hand; the pipelines run end to end on a
2-layer Llama with a word-level tokenizer built in memory.
"""

from __future__ import annotations

import json
import math
import random
import string

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from featsep.evals import available_evals, evaluate
from featsep.evals.absorption import (
    AbsorptionSettings,
    absorption_scores,
    alpha_words,
    icl_prompt,
    split_features,
    word_end_position,
)
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
from featsep.evals.common.probes import top_k_dims
from featsep.data.probing import load_probing_dataset, man_to_text
from featsep.evals.common.pooling import balanced_indices, kept_positions, segment_mean
from featsep.evals.sparse_probing import SparseProbingSettings
from featsep.lm import LanguageModel
from featsep.sae import SAE, SAEConfigBase, make_sae, save_sae

HOOK = "blocks.0.hook_resid_post"
D = 32
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
TEMPLATE_WORDS = ["has", "the", "first", "letter", ":"]
LETTER_TOKENS = list(string.ascii_uppercase)


def _words() -> list[str]:
    rng = random.Random(0)
    words = set()
    for letter in string.ascii_lowercase:
        while len([w for w in words if w[0] == letter]) < 6:
            words.add(letter + "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 5))))
    return sorted(words)


WORDS = _words()
TOPIC_WORDS = {"x": [f"x{i}" for i in range(10)], "y": [f"y{i}" for i in range(10)]}


def make_lm() -> LanguageModel:
    vocab_list = SPECIALS + TEMPLATE_WORDS + LETTER_TOKENS + WORDS + TOPIC_WORDS["x"] + TOPIC_WORDS["y"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab_list)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab_list), hidden_size=D, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=256, initializer_range=0.5, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    return LanguageModel.from_hf(LlamaForCausalLM(config), tokenizer, name="tiny-llama-evals")


@pytest.fixture(scope="module")
def lm():
    return make_lm()


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


def _rows(lm, n=8, length=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, lm.vocab_size, (n, length), generator=g)
    ids[:, 0] = lm.bos_token_id
    ids[1, 5] = lm.bos_token_id  # a document boundary inside a row, as packing makes
    return ids


# ---- core formulas -------------------------------------------------------------------------------


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


def test_perfect_sae_scores_one_and_zero_sae_scores_zero(lm):
    ctx = EvalContext(lm, HOOK, cache_dir=None, verbose=False)
    rows = _rows(lm)
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


def test_downstream_metrics_mask_special_tokens(lm):
    """KL means skip BOS positions; CE skips predictions made at a BOS position."""
    ctx = EvalContext(lm, HOOK, cache_dir=None, verbose=False)
    rows = _rows(lm, n=2, length=6)
    sae = make_sae("topk", d_in=D, d_sae=64, k=4, hook_name=HOOK)
    got = downstream_metrics(ctx, [sae], rows, CoreSettings(exclude_special_tokens_from_reconstruction=False))[0]
    clean = lm.logits(rows)
    patched = lm.run_with_hook(rows, None, HOOK, lambda a: encode_decode(sae, a)[1])
    keep = rows != lm.bos_token_id
    kl = per_token_kl(clean, patched)[keep].mean().item()
    ce = per_token_ce(patched, rows)[keep[:, :-1]].mean().item()
    assert got["model_behavior_preservation"]["kl_div_with_sae"] == pytest.approx(kl, rel=1e-5)
    assert got["model_performance_preservation"]["ce_loss_with_sae"] == pytest.approx(ce, rel=1e-5)


# ---- runner, schema, cache -----------------------------------------------------------------------


@pytest.fixture
def corpus(tmp_path):
    rng = random.Random(0)
    path = tmp_path / "corpus.jsonl"
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) for _ in range(200)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return str(path)


def test_core_end_to_end_on_a_run_dir_writes_saebench_json_and_final_info(lm, corpus, tmp_path):
    run = tmp_path / "run"
    save_sae(make_sae("topk", d_in=D, d_sae=64, k=4, hook_name=HOOK, model_name="tiny"), run / "sae")
    settings = {"core": {"dataset": corpus, "context_size": 16, "batch_size_prompts": 4,
                         "n_eval_reconstruction_batches": 2, "n_eval_sparsity_variance_batches": 2}}
    out = evaluate(str(run), evals=["core"], model=lm, settings=settings, cache_dir=tmp_path / "cache", verbose=False)
    result = json.loads((run / "eval_results" / "core_eval_results.json").read_text())
    for key in ("eval_type_id", "eval_config", "eval_id", "datetime_epoch_millis", "eval_result_metrics",
                "eval_result_details", "eval_result_unstructured", "sae_bench_commit_hash", "sae_lens_id",
                "sae_lens_release_id", "sae_lens_version", "sae_cfg_dict"):
        assert key in result
    metrics = result["eval_result_metrics"]
    assert metrics["sparsity"]["l0"] <= 4
    assert metrics["token_stats"]["total_tokens_eval_reconstruction"] == 2 * 4 * 16
    assert len(result["eval_result_details"]) == 64
    assert "explained_variance_saebench" in result["eval_result_unstructured"]["metric_conventions"]
    info = json.loads((run / "final_info.json").read_text())
    assert info["core evaluation results"]["eval_result_metrics"] == metrics
    # a second call reads the model-side work from the disk cache and agrees
    again = evaluate(str(run), evals=["core"], model=lm, settings=settings, cache_dir=tmp_path / "cache", verbose=False)
    assert again["core"]["eval_result_metrics"] == out["core"]["eval_result_metrics"]
    assert any((tmp_path / "cache").glob("core_reference-*.pt"))


def test_bad_input_gives_one_clear_error(lm, tmp_path):
    wrong_width = make_sae("topk", d_in=D + 1, d_sae=16, k=2, hook_name=HOOK)
    with pytest.raises(ValueError, match="d_in=33 does not match"):
        evaluate(wrong_width, evals=["core"], model=lm, cache_dir=None)
    deep = make_sae("topk", d_in=D, d_sae=16, k=2, hook_name="blocks.9.hook_resid_post")
    with pytest.raises(ValueError, match="out of range"):
        evaluate(deep, evals=["core"], model=lm, cache_dir=None)
    sae = make_sae("topk", d_in=D, d_sae=16, k=2, hook_name=HOOK)
    with pytest.raises(ValueError, match="unknown eval 'cor'"):
        evaluate(sae, evals=["cor"], model=lm)
    with pytest.raises(ValueError, match="unknown setting 'n_batches'"):
        evaluate(sae, evals=["core"], model=lm, settings={"n_batches": 3})
    with pytest.raises(ValueError, match="neither an SAE directory"):
        evaluate(str(tmp_path), evals=["core"], model=lm)
    assert {"core", "sparse_probing", "absorption"} <= set(available_evals())


# ---- sparse probing ------------------------------------------------------------------------------


def test_balancing_follows_saebench():
    gen = torch.Generator().manual_seed(0)
    items, labels = balanced_indices({"a": 10, "b": 6, "c": 4}, "a", gen)
    negatives = [it for it, y in zip(items, labels) if y == 0]
    assert labels.sum().item() == 10 and len(negatives) == 9  # ceil(10/2)=5 from b, all 4 of c
    assert sum(c == "b" for c, _ in negatives) == 5 and sum(c == "c" for c, _ in negatives) == 4
    assert len(set(negatives)) == 9
    items, labels = balanced_indices({"a": 10, "b": 6, "c": 4}, "c", gen)
    negatives = [c for (c, _), y in zip(items, labels) if y == 0]
    assert labels.sum().item() == 4 and sorted(negatives) == ["a", "a", "b", "b"]


def test_top_k_dims_pick_the_largest_mean_difference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 10, generator=g) * 0.1
    y = torch.tensor([1] * 20 + [0] * 20)
    x[:20, 3] += 2.0
    x[20:, 7] += 1.0
    x[:20, 5] -= 0.5
    assert top_k_dims(x, y, 1).tolist() == [3]
    assert sorted(top_k_dims(x, y, 3).tolist()) == [3, 5, 7]


def test_pooling_matches_saebench_zero_mask_mean(lm):
    texts = ["x1 x2 x3", "y1 y2", "apple"]
    s = SparseProbingSettings(llm_batch_size=2, context_length=8)
    ctx = EvalContext(lm, HOOK, cache_dir=None, verbose=False)
    pooled = segment_mean(**kept_positions(ctx, texts, s)).float()
    ids, mask = lm.tokenize(texts, max_length=8)
    acts = lm.forward_to_hook(ids, mask, HOOK)
    acts = acts * ((ids != 0) & (ids != 1) & (ids != 2))[..., None]  # SAEBench zeroes pad/eos/bos
    nonzero = acts.sum(-1) != 0
    expected = acts.sum(1) / nonzero.sum(1, keepdim=True)
    assert torch.allclose(pooled, expected, atol=1e-5)


def test_local_files_and_their_errors(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("text,label\n" + "".join(f"t{i} words here,{'ab'[i % 2]}\n" for i in range(20)))
    ds = load_probing_dataset(str(csv), n_train=6, n_test=3, seed=0)
    assert ds.classes == ["a", "b"] and all(len(ds.train[c]) == 6 and len(ds.test[c]) == 3 for c in ds.classes)
    assert not set(ds.train["a"]) & set(ds.test["a"])
    with pytest.raises(ValueError, match="no column\\(s\\) 'category'"):
        load_probing_dataset(str(csv), 6, 3, label_column="category")
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no rows|empty"):
        load_probing_dataset(str(empty), 6, 3)
    with pytest.raises(ValueError, match="unknown probing dataset"):
        load_probing_dataset("no-such-dataset", 6, 3)


def test_saebench_hub_loaders_read_local_copies(tmp_path):
    import pandas as pd

    rows = [{"hard_text": f"bio {p} {g} {i}", "profession": p, "gender": g}
            for p in (0, 1, 2, 6, 9, 13) for g in (0, 1) for i in range(6)]
    pd.DataFrame(rows).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame(rows).to_parquet(tmp_path / "test.parquet")
    ds = load_probing_dataset("LabHC/bias_in_bios_class_set1", n_train=4, n_test=2, seed=0,
                              local_copies={"LabHC/bias_in_bios": str(tmp_path)})
    assert ds.classes == ["0", "1", "2", "6", "9"]  # SAEBench's class set 1
    for cls in ds.classes:
        genders = [int(t.split()[2]) for t in ds.train[cls]]
        assert len(genders) == 4 and sum(genders) == 2  # balanced by gender
    news = tmp_path / "news"
    news.mkdir()
    for split in ("train", "test"):
        pd.DataFrame([{"text": f"news {c} {i}", "label": c} for c in range(4) for i in range(5)]).to_json(
            news / f"{split}.jsonl", orient="records", lines=True)
    ds = load_probing_dataset("fancyzhx/ag_news", 3, 2, local_copies={"fancyzhx/ag_news": str(news)})
    assert ds.classes == ["0", "1", "2", "3"] and len(ds.test["3"]) == 2


def test_man_page_markup_is_stripped():
    src = '.TH LS 1\n.SH NAME\nls \\- list\n.B bold words\n\\fBfett\\fR und \\(aqquote\\(aq\n.\\" comment\n'
    assert man_to_text(src) == "NAME ls list bold words fett und quote"


@pytest.fixture
def topics(tmp_path):
    """A labelled file of two separable topics, and small sparse_probing settings that read it."""
    rng = random.Random(1)
    path = tmp_path / "topics.jsonl"
    lines = [json.dumps({"text": " ".join(rng.choice(TOPIC_WORDS[c]) for _ in range(30)), "label": c})
             for c in "xy" for _ in range(40)]
    path.write_text("\n".join(lines) + "\n")
    return {"sparse_probing": {"datasets": [str(path)], "probe_train_set_size": 25, "probe_test_set_size": 10,
                               "k_values": [1, 2], "context_length": 32}}


def test_sparse_probing_end_to_end_separable_topics(lm, topics):
    sae = make_sae("topk", d_in=D, d_sae=64, k=8, hook_name=HOOK)
    out = evaluate([sae, sae], evals=["sparse_probing"], model=lm, settings=topics, cache_dir=None, verbose=False)
    metrics = out[0]["sparse_probing"]["eval_result_metrics"]
    assert metrics["llm"]["llm_test_accuracy"] >= 0.9
    assert set(metrics["sae"]) == {"sae_test_accuracy", "sae_top_1_test_accuracy", "sae_top_2_test_accuracy"}
    assert out[0]["sparse_probing"]["eval_result_metrics"] == out[1]["sparse_probing"]["eval_result_metrics"]


def test_sparse_probing_llm_probe_cache_follows_the_loaders_version(lm, topics, tmp_path, monkeypatch):
    import featsep.evals.sparse_probing as sp

    trained = []
    real = sp.probe_accuracies
    monkeypatch.setattr(sp, "probe_accuracies", lambda *a: trained.append(a[-1]) or real(*a))
    sae = make_sae("topk", d_in=D, d_sae=64, k=8, hook_name=HOOK)
    run = lambda: evaluate(sae, evals=["sparse_probing"], model=lm, settings=topics,  # noqa: E731
                           cache_dir=tmp_path / "cache", verbose=False)
    run()
    run()
    assert trained == ["llm", "sae", "sae"]  # the model's probes come from the disk cache the second time
    monkeypatch.setattr(sp, "LOADERS_VERSION", sp.LOADERS_VERSION + 1)
    run()
    assert trained[3:] == ["llm", "sae"]  # new loaders: new texts, so the model's probes are retrained


# ---- absorption ----------------------------------------------------------------------------------


def test_absorption_arithmetic_on_constructed_cases():
    s = AbsorptionSettings()
    u = torch.tensor([1.0, 0.0, 0.0])
    W_dec = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0], [0.05, (1 - 0.05**2) ** 0.5, 0.0]])
    codes = torch.tensor([
        [2.0, 0.0, 0.0, 0.0],  # the split feature carries everything: none
        [0.0, 2.0, 1.0, 0.0],  # split feature silent, latent 1 carries it: full
        [0.5, 2.0, 0.0, 0.0],  # partial: A = min(T, P - M) = T
        [0.5, 2.0, 0.0, 0.0],  # partial, P smaller: A = P - M
        [0.0, 0.0, 0.0, 30.0],  # only a barely aligned latent (cos 0.05 < 0.1): fraction 0 but full
    ])
    x = codes @ W_dec
    x[3, 0] -= 0.5
    fractions, full = absorption_scores(codes, x, u, W_dec, [0], s)
    assert fractions == pytest.approx([0.0, 1.0, 1.2 / 1.7, 0.7 / 1.2, 0.0])
    assert full == [False, True, False, False, True]


def test_split_features_rule():
    feats = [[1], [1, 2], [1, 2, 3], [1, 2, 3, 4]]
    assert split_features([0.5, 0.52, 0.6, 0.7], feats, 0.03) == [1]
    assert split_features([0.5, 0.6, 0.62, 0.9], feats, 0.03) == [1, 2]
    assert split_features([0.5, 0.6, 0.7, 0.8], feats, 0.03) == [1, 2, 3, 4]


def test_vocabulary_and_word_position(lm):
    words = alpha_words(lm.tokenizer)
    assert set(WORDS) <= set(words) and ":" not in words and "<bos>" not in words and "x1" not in words
    s = AbsorptionSettings()
    word, ex1, ex2 = WORDS[0], WORDS[10], WORDS[20]
    prompt = icl_prompt(word, [ex1, ex2], s)
    assert prompt == (f"\n{ex1} has the first letter: {ex1[0].upper()}\n{ex2} has the first letter: "
                      f"{ex2[0].upper()}\n{word} has the first letter:")
    pos = word_end_position(lm, prompt, len(prompt) - len(" has the first letter:"))
    ids, _ = lm.tokenize([prompt], max_length=64)
    assert lm.tokenizer.convert_ids_to_tokens(int(ids[0, pos])) == word
    assert ids.shape[1] - pos == 6  # SAEBench's -6 holds for this tokenizer


def test_absorption_end_to_end(lm):
    sae = make_sae("topk", d_in=D, d_sae=64, k=8, hook_name=HOOK)
    base = {"max_words": 120, "n_icl_examples": 3, "probe_epochs": 5, "k_sparse_probe_num_epochs": 5, "max_k_value": 3}
    out = evaluate(sae, evals=["absorption"], model=lm, settings={"absorption": base}, cache_dir=None, verbose=False)
    res = out["absorption"]
    assert res["eval_type_id"] == "absorption_first_letter"
    u = res["eval_result_unstructured"]
    # the 20-letter gate counts letters whose probe F1 exceeds 0.6, and the status says which side it fell on
    assert u["enough_letters"] == (sum(f1 > 0.6 for f1 in u["probe_f1_by_letter"].values()) >= 20)
    assert u["status"] == "ok" if u["enough_letters"] else "too few letters" in u["status"]
    assert res["eval_result_unstructured"]["word_position_from_end_counts"] == {"6": 96}
    loose = {**base, "min_probe_f1": -1.0, "min_letters": 1}
    res = evaluate(sae, evals=["absorption"], model=lm, settings={"absorption": loose}, cache_dir=None,
                   verbose=False)["absorption"]
    assert res["eval_result_details"]
    u = res["eval_result_unstructured"]  # the gate's other side: every letter passes F1 > -1, one is enough
    assert u["enough_letters"] and u["status"] == "ok"
    for d in res["eval_result_details"]:
        assert 0 <= d["mean_absorption_fraction"] <= 1 and 0 <= d["full_absorption_rate"] <= 1
        assert 1 <= d["num_split_features"] <= 3
    assert res["eval_result_metrics"]["mean"]["num_letters"] == len(res["eval_result_details"])


def test_sweep_dir_expands_to_its_run_dirs(tmp_path):
    from featsep.evals.runner import resolve_targets

    for name in ("b", "a"):
        save_sae(make_sae("topk", d_in=D, d_sae=16, k=2, hook_name=HOOK), tmp_path / "sweep" / name / "sae")
    (tmp_path / "sweep" / "report").mkdir()
    targets = resolve_targets(str(tmp_path / "sweep"))
    assert [t.name for t in targets] == ["a", "b"] and all(t.run_dir is not None for t in targets)


def test_run_eval_cli_parses_set_overrides(lm, corpus, tmp_path, capsys):
    from featsep.evals import run_eval_cli

    run = tmp_path / "run"
    save_sae(make_sae("topk", d_in=D, d_sae=32, k=4, hook_name=HOOK), run / "sae")
    overrides = [f"core.dataset={json.dumps(corpus)}", "core.context_size=16", "core.batch_size_prompts=2",
                 "core.n_eval_reconstruction_batches=1", "core.n_eval_sparsity_variance_batches=1",
                 "seed=3", f"cache_dir={json.dumps(str(tmp_path / 'c'))}"]
    out = run_eval_cli(str(run), ["core"], overrides, model=lm)
    assert out["core"]["eval_config"]["seed"] == 3 and out["core"]["eval_config"]["context_size"] == 16
    assert "model_performance_preservation: ce_loss_score=" in capsys.readouterr().out
    assert (run / "eval_results" / "core_eval_results.json").exists()
