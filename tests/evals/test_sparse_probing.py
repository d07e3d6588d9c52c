"""featsep.evals.sparse_probing end to end on two separable topics, and its probe cache."""

from __future__ import annotations

import json
import random

import pytest
import torch

from featsep.evals import evaluate
from featsep.sae import make_sae
from tests.evals.helpers import D, HOOK, TOPIC_WORDS


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


def test_sparse_probing_end_to_end_separable_topics(letters_lm, topics):
    sae = make_sae("topk", d_in=D, d_sae=64, k=8, hook_name=HOOK)
    out = evaluate([sae, sae], evals=["sparse_probing"], model=letters_lm, settings=topics, cache_dir=None, verbose=False)
    metrics = out[0]["sparse_probing"]["eval_result_metrics"]
    assert metrics["llm"]["llm_test_accuracy"] >= 0.9
    assert set(metrics["sae"]) == {"sae_test_accuracy", "sae_top_1_test_accuracy", "sae_top_2_test_accuracy"}
    assert out[0]["sparse_probing"]["eval_result_metrics"] == out[1]["sparse_probing"]["eval_result_metrics"]


def test_sparse_probing_llm_probe_cache_follows_the_loaders_version(letters_lm, topics, tmp_path, monkeypatch):
    import featsep.evals.sparse_probing as sp

    trained = []
    real = sp.probe_accuracies
    monkeypatch.setattr(sp, "probe_accuracies", lambda *a, **kw: trained.append(a[-1]) or real(*a, **kw))
    sae = make_sae("topk", d_in=D, d_sae=64, k=8, hook_name=HOOK)
    run = lambda: evaluate(sae, evals=["sparse_probing"], model=letters_lm, settings=topics,  # noqa: E731
                           cache_dir=tmp_path / "cache", verbose=False)
    run()
    run()
    assert trained == ["llm", "sae", "sae"]  # the model's probes come from the disk cache the second time
    monkeypatch.setattr(sp, "LOADERS_VERSION", sp.LOADERS_VERSION + 1)
    run()
    assert trained[3:] == ["llm", "sae"]  # new loaders: new texts, so the model's probes are retrained


def test_standardized_top_k_against_a_by_hand_reference():
    from sklearn.linear_model import LogisticRegression

    from featsep.evals.common.probes import standardized_top_k_accuracy, top_dim_share, top_k_accuracy

    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 2
    x = torch.randn(40, 6, generator=g)
    x[:, 3] += 2.0 * y  # the informative dim, unit scale
    x[:, 0] = 1000.0 + 300.0 * torch.randn(40, generator=g)  # massive, uninformative
    x_tr, y_tr, x_te, y_te = x[:30], y[:30], x[30:], y[30:]
    mean, std = x_tr.mean(0), x_tr.std(0, unbiased=False)
    z_tr, z_te = (x_tr - mean) / std, (x_te - mean) / std
    dim = int((z_tr[y_tr == 1].mean(0) - z_tr[y_tr == 0].mean(0)).abs().argmax())
    assert dim == 3
    clf = LogisticRegression(C=1.0, max_iter=1000, random_state=42).fit(z_tr[:, [dim]].numpy(), y_tr.numpy())
    expected = float((clf.predict(z_te[:, [dim]].numpy()) == y_te.numpy()).mean())
    assert standardized_top_k_accuracy(x_tr, y_tr, x_te, y_te, 1) == expected
    diff = (x_tr[y_tr == 1].mean(0) - x_tr[y_tr == 0].mean(0)).abs()
    assert top_dim_share(x_tr, y_tr) == (0, pytest.approx(float(diff[0] / diff.sum())))
    # SAEBench's ranking on raw dims picks the massive one
    raw = top_k_accuracy(x_tr, y_tr, x_te, y_te, 1)
    clf0 = LogisticRegression(C=1.0, max_iter=1000, random_state=42).fit(x_tr[:, [0]].numpy(), y_tr.numpy())
    assert raw == float((clf0.predict(x_te[:, [0]].numpy()) == y_te.numpy()).mean())


def test_a_massive_dimension_gets_a_caveat_and_the_standardized_variant(letters_lm, topics):
    from featsep.lm.model import hidden_states

    settings = {"sparse_probing": {**topics["sparse_probing"], "probe_epochs": 5}}
    sae = make_sae("topk", d_in=D, d_sae=64, k=8, hook_name=HOOK)
    kw = dict(evals=["sparse_probing"], model=letters_lm, settings=settings, cache_dir=None, verbose=False)
    plain = evaluate(sae, **kw)["sparse_probing"]
    assert plain["eval_result_unstructured"]["caveat"] is None
    gen = torch.Generator().manual_seed(0)

    def massive(_module, _args, output):  # dim 5: huge, class-blind noise (gemma-3's massive dim)
        h = hidden_states(output)
        h[..., 5] += 1e4 * (1 + torch.rand(h.shape[:-1], generator=gen))

    handle = letters_lm.layers[0].register_forward_hook(massive)
    try:
        out = evaluate(sae, **kw)["sparse_probing"]
    finally:
        handle.remove()
    llm = out["eval_result_metrics"]["llm"]
    caveat = out["eval_result_unstructured"]["caveat"]
    name = settings["sparse_probing"]["datasets"][0]
    assert caveat.startswith(f"{name}: model dim 5 is SAEBench's top-1 pick for 2/2 classes")
    assert "llm_top_k_standardized_test_accuracy" in caveat
    tops = out["eval_result_unstructured"]["llm_top_1_dim"][name]
    assert {t["dim"] for t in tops.values()} == {5} and min(t["mass_share"] for t in tops.values()) > 0.2
    assert "llm_top_1 accuracy is exactly 0.5 on every class" in caveat  # as gemma-3 on SAEBench's ranking
    assert llm["llm_top_1_standardized_test_accuracy"] >= 0.9 > llm["llm_top_1_test_accuracy"]
    assert set(llm) == {"llm_test_accuracy", "llm_top_1_test_accuracy", "llm_top_2_test_accuracy",
                        "llm_top_1_standardized_test_accuracy", "llm_top_2_standardized_test_accuracy"}
    # the plain model: SAEBench's numbers are the standardised ones' neighbours, and no caveat
    assert plain["eval_result_metrics"]["llm"]["llm_top_1_test_accuracy"] >= 0.9


def test_dominance_caveat_rules():
    from featsep.evals.sparse_probing import dominance_caveat

    informative = {"a": {"llm_top_1_test_accuracy": 0.9}, "b": {"llm_top_1_test_accuracy": 0.5}}
    assert dominance_caveat("d", {"a": {"dim": 3, "mass_share": 0.4}, "b": {"dim": 7, "mass_share": 0.5}}, informative) is None
    text = dominance_caveat("d", {"a": {"dim": 3, "mass_share": 0.6}, "b": {"dim": 3, "mass_share": 0.5}}, informative)
    assert text.startswith("d: model dim 3 is SAEBench's top-1 pick for 2/2 classes and holds 55% of") and "exactly" not in text
    chance = {c: {"llm_top_1_test_accuracy": 0.5} for c in "ab"}
    text = dominance_caveat("d", {"a": {"dim": 3, "mass_share": 0.1}, "b": {"dim": 4, "mass_share": 0.1}}, chance)
    assert "exactly 0.5 on every class" in text
