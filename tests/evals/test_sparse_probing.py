"""featsep.evals.sparse_probing end to end on two separable topics, and its probe cache."""

from __future__ import annotations

import json
import random

import pytest

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
    monkeypatch.setattr(sp, "probe_accuracies", lambda *a: trained.append(a[-1]) or real(*a))
    sae = make_sae("topk", d_in=D, d_sae=64, k=8, hook_name=HOOK)
    run = lambda: evaluate(sae, evals=["sparse_probing"], model=letters_lm, settings=topics,  # noqa: E731
                           cache_dir=tmp_path / "cache", verbose=False)
    run()
    run()
    assert trained == ["llm", "sae", "sae"]  # the model's probes come from the disk cache the second time
    monkeypatch.setattr(sp, "LOADERS_VERSION", sp.LOADERS_VERSION + 1)
    run()
    assert trained[3:] == ["llm", "sae"]  # new loaders: new texts, so the model's probes are retrained
