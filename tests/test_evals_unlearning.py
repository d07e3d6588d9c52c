"""unlearning: the permutation filter, latent selection, the clamping intervention, the score's
selection rules, and the whole eval on a tiny model with local question files and corpora."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch

from featsep.evals.unlearning import (
    UnlearningSettings,
    all_permutations_correct,
    clamp_latents,
    filter_permutation_list,
    permuted,
    question_prompt,
    select_latents,
    unlearning_score,
)
from featsep.sae import make_sae


def test_filter_permutations():
    all24 = filter_permutation_list(24)
    assert len(set(all24)) == 24 and set(all24) == set(itertools.permutations(range(4)))
    assert all24[0] == (0, 1, 2, 3)
    cyclic = filter_permutation_list(4)
    # every choice visits every position once
    for choice in range(4):
        assert sorted(p.index(choice) for p in cyclic) == [0, 1, 2, 3]
    assert filter_permutation_list(1) == [(0, 1, 2, 3)]


def test_permuted_answer_index_and_filter():
    q = {"choices": ["w", "x", "y", "z"], "answer": 2}
    choices, answer = permuted(q, (2, 0, 3, 1))
    assert choices == ["y", "w", "z", "x"] and answer == 0
    # 2 questions x 3 permutations: the first right every time, the second wrong once
    predicted = torch.tensor([1, 0, 3, 2, 2, 1])
    answers = torch.tensor([1, 0, 3, 2, 2, 0])
    assert all_permutations_correct(predicted, answers, 3).tolist() == [True, False]


def test_select_latents_saebench_rule():
    forget = torch.tensor([0.30, 0.50, 0.10, 0.00, 0.40, 0.20])
    retain = torch.tensor([0.000, 0.020, 0.005, 0.000, 0.0099, 0.0100])
    # retain < 0.01: latents 0, 2, 3, 4; forget-ranked, zero forget sparsity dropped
    assert select_latents(forget, retain, 0.01).tolist() == [4, 0, 2]
    assert select_latents(forget, retain, 0.001).tolist() == [0]
    assert select_latents(torch.zeros(3), torch.zeros(3), 0.01).numel() == 0


def test_unlearning_score_rules():
    configs = [
        {"forget_accuracy": 0.2, "retain_accuracy": 0.98},  # retain below 0.99 x clean: ignored
        {"forget_accuracy": 0.6, "retain_accuracy": 0.99},  # exactly 0.99 passes
        {"forget_accuracy": 0.7, "retain_accuracy": 1.0},
    ]
    assert unlearning_score(configs, 1.0) == pytest.approx(0.4)
    assert unlearning_score(configs, 0.5) == pytest.approx(0.8)  # relative to a clean accuracy of 0.5
    assert unlearning_score(configs[:1], 1.0) == 0.0  # no config qualifies


def test_clamp_intervention_against_definition():
    sae = make_sae("topk", d_in=6, d_sae=16, k=4, normalization_factor=2.0)
    with torch.no_grad():
        sae.b_dec.normal_(generator=torch.Generator().manual_seed(1))
    x = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(0))
    latents = torch.arange(16)[:8]
    out = clamp_latents(sae, x, latents, multiplier=50.0)
    # by hand
    f = sae.encode(x * 2.0)
    f[:, 0] = 0
    error = x - sae.decode(f) / 2.0
    g = f.clone()
    sel = g[..., latents]
    g[..., latents] = torch.where(sel > 0, torch.full_like(sel, -50.0), sel)
    torch.testing.assert_close(out, sae.decode(g) / 2.0 + error)
    torch.testing.assert_close(out[:, 0], x[:, 0])  # the BOS position is left alone
    # positions where no selected latent fires are unchanged
    untouched = ~(f[..., latents] > 0).any(-1)
    torch.testing.assert_close(out[untouched], x[untouched])
    assert bool((~untouched).any()) and not torch.allclose(out[~untouched], x[~untouched])
    assert torch.equal(clamp_latents(sae, x, torch.zeros(0, dtype=torch.long), 50.0), x)


def test_prompt_uses_chat_template_when_present():
    class Tok:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return f"<user>{messages[0]['content']}</user><model>"

    class LM:
        tokenizer = Tok()

    p = question_prompt(LM(), "Pre.\n", "Q?", ["a", "b", "c", "d"])
    assert p == "<user>Pre.\nQ?\nA. a\nB. b\nC. c\nD. d</user><model>Answer: ("
    LM.tokenizer.chat_template = None
    assert question_prompt(LM(), "Pre.\n", "Q?", ["a", "b", "c", "d"]).endswith("D. d\nAnswer: (")


def test_base_model_is_refused():
    from featsep.evals.unlearning import check_instruct
    from tests.test_evals import make_lm

    lm = make_lm()
    with pytest.raises(ValueError, match="instruction-tuned"):
        check_instruct(lm, UnlearningSettings())
    check_instruct(lm, UnlearningSettings(require_instruct=False))


def _question_file(path, words, n, seed):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            choices = rng.sample(words, 4)
            f.write(json.dumps({"question": " ".join(rng.sample(words, 3)), "choices": choices, "answer": rng.randrange(4)}) + "\n")
    return path


def test_unlearning_end_to_end(tmp_path):
    import featsep.evals.unlearning  # noqa: F401  (registers the eval)
    from featsep.evals import evaluate
    from tests.test_evals import HOOK, TOPIC_WORDS, WORDS, make_lm

    lm = make_lm()
    forget_q = _question_file(tmp_path / "forget.jsonl", TOPIC_WORDS["x"], 24, 0)
    retain_q = _question_file(tmp_path / "retain.jsonl", TOPIC_WORDS["y"], 24, 1)
    (tmp_path / "forget.txt").write_text(" ".join(random.Random(2).choices(TOPIC_WORDS["x"] + WORDS[:20], k=3000)))
    (tmp_path / "retain.txt").write_text(" ".join(random.Random(3).choices(TOPIC_WORDS["y"] + WORDS[20:40], k=3000)))
    sae = make_sae("topk", d_in=lm.d_model, d_sae=64, k=8, hook_name=HOOK)
    out = evaluate(
        sae, evals=["unlearning"], model=lm, out_dir=tmp_path / "out", cache_dir=None, verbose=False,
        settings={"unlearning": {
            "forget_questions": [str(forget_q)], "retain_questions": [str(retain_q)],
            "forget_corpus": str(tmp_path / "forget.txt"), "retain_corpus": str(tmp_path / "retain.txt"),
            "require_instruct": False, "filter_permutations": 1, "retain_thresholds": [0.2, 1.0],
            "n_features_list": [4], "multipliers": [1.0, 50.0], "sparsity_rows": 8, "sparsity_context": 32,
        }},
    )["unlearning"]
    configs = out["eval_result_details"]
    assert len(configs) == 4
    score = out["eval_result_metrics"]["unlearning"]["unlearning_score"]
    assert score == pytest.approx(unlearning_score(configs, out["eval_result_unstructured"]["clean_retain_accuracy"]))
    assert out["eval_result_unstructured"]["clean_retain_accuracy"] == 1.0  # kept questions are answered under the identity order
    assert all(c["n_latents_selected"] <= 4 for c in configs)
