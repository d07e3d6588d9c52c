"""unlearning: the permutation filter, latent selection, the clamping intervention, the score's
selection rules, and the whole eval on a tiny model with local question files and corpora."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch

from featsep.evals.unlearning import _resolved
from featsep.evals.unlearning.latents import clamp_latents, clamp_values, select_latents, unlearning_score
from featsep.evals.unlearning.questions import (
    _choice_tokens,
    _logits,
    _pad,
    choice_prompt,
    choice_scores,
    filter_permutation_list,
    permuted,
    question_prompt,
    staged_permutation_filter,
)
from featsep.evals.unlearning.settings import UnlearningSettings
from featsep.sae import make_sae


# ---- naive references the eval's efficient paths are tested against -------------------------------


def all_permutations_correct(predicted, answers, n_perms: int):
    """[n_questions] bool: correct under every permutation (predictions grouped per question)."""
    return (predicted == answers).view(-1, n_perms).all(1)


def continuation_logprobs(logprobs, input_ids, starts: list[int], ends: list[int]):
    """[B] summed log p(token t | tokens < t) over positions starts[b] <= t < ends[b] of each row.
    logprobs: [B, L, V] log-softmax outputs (position t predicts token t + 1)."""
    out = torch.zeros(len(starts), dtype=torch.float64)
    for b, (a, e) in enumerate(zip(starts, ends)):
        targets = input_ids[b, a:e].to(logprobs.device)
        out[b] = logprobs[b, a - 1 : e - 1].gather(-1, targets[:, None]).double().sum().cpu()
    return out


@torch.no_grad()
def choice_scores_full(lm, items, batch_size: int, hook=None, fn=None):
    """choice_scores the slow way: one full, padded prefix + choice row per choice."""
    prefixes, conts = _choice_tokens(lm, items)
    rows = [(p + c, len(p), len(p) + len(c)) for p, cs in zip(prefixes, conts) for c in cs]
    scores = torch.zeros(len(rows), dtype=torch.float64)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        ids, mask = _pad(lm, [r for r, _, _ in chunk])
        logprobs = _logits(lm, ids, mask, hook, fn).float().log_softmax(-1)
        scores[start : start + len(chunk)] = continuation_logprobs(logprobs, ids, [a for _, a, _ in chunk], [e for _, _, e in chunk])
    return scores.view(len(items), -1)


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


def test_staged_filter_keeps_what_asking_everything_keeps():
    gen = torch.Generator().manual_seed(0)
    n_q, n_p = 50, 24
    truth = torch.rand(n_q, n_p, generator=gen) < 0.9  # truth[q, j]: question q right under permutation j
    asked = []

    def correct(idx, j):
        asked.append(idx.numel())
        return truth[idx, j]

    keep, survivors = staged_permutation_filter(n_q, n_p, correct)
    brute = all_permutations_correct(truth.flatten().long(), torch.ones(n_q * n_p, dtype=torch.long), n_p)
    assert keep.tolist() == torch.nonzero(brute).flatten().tolist()
    # survivors after each permutation: the questions right under permutations 0..j
    assert survivors == [int(truth[:, : j + 1].all(1).sum()) for j in range(n_p)]
    assert survivors[-1] == len(keep) and asked[0] == n_q and asked[1:] == survivors[: len(asked) - 1]
    assert sum(asked) < n_q * n_p
    # nothing left: later permutations are not asked at all
    asked.clear()

    def all_wrong(idx, j):
        asked.append(j)
        return torch.zeros(idx.numel(), dtype=torch.bool)

    keep, survivors = staged_permutation_filter(3, 4, all_wrong)
    assert keep.numel() == 0 and survivors == [0, 0, 0, 0] and asked == [0]


def test_continuation_logprobs_by_hand():
    logprobs = torch.log_softmax(torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0)), -1)
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 5, 4, 0, 0]])
    got = continuation_logprobs(logprobs, ids, starts=[3, 1], ends=[5, 3])
    # row 0: tokens 3 and 4 (ids 4, 5) predicted at positions 2 and 3; row 1: tokens 1, 2 (ids 5, 4) at 0, 1
    want0 = logprobs[0, 2, 4] + logprobs[0, 3, 5]
    want1 = logprobs[1, 0, 5] + logprobs[1, 1, 4]
    torch.testing.assert_close(got, torch.stack([want0, want1]).double())


def test_choice_scores_cached_prefix_match_full_rows(letters_lm):
    import functools

    from tests.evals.helpers import HOOK, TOPIC_WORDS

    lm = letters_lm
    x = TOPIC_WORDS["x"]
    questions = [(f"{x[0]} {x[1]}", [x[2], f"{x[3]} {x[4]}", x[5], x[6]]), (x[7], [x[8], x[9], x[0], f"{x[1]} {x[2]}"]),
                 (f"{x[2]} {x[3]}", [x[1], x[4], f"{x[5]} {x[6]} {x[7]}", x[9]])]  # prefixes 1 and 3 share a length
    items = [choice_prompt(lm, "Pre line.\n", q, c) for q, c in questions]
    assert items[0][1][1] == f" {x[3]} {x[4]}"  # no chat template: " choice" after "Answer:"
    full = choice_scores_full(lm, items, batch_size=3)  # batches cut across questions
    # the reference by hand: one unpadded forward per choice
    for q, (prefix, conts) in enumerate(items):
        for k, c in enumerate(conts):
            p_ids = lm.tokenizer(prefix, add_special_tokens=False)["input_ids"]
            c_ids = lm.tokenizer(c, add_special_tokens=False)["input_ids"]
            lp = lm.logits(torch.tensor([[lm.bos_token_id] + p_ids + c_ids])).float().log_softmax(-1)[0]
            want = sum(float(lp[len(p_ids) + j, t]) for j, t in enumerate(c_ids))
            assert float(full[q, k]) == pytest.approx(want, abs=1e-4)
    torch.testing.assert_close(choice_scores(lm, items, batch_size=2), full, atol=1e-4, rtol=1e-5)
    # with a clamping hook: the cached prefix sees the BOS rule, the choice tokens do not
    sae = make_sae("topk", d_in=lm.d_model, d_sae=32, k=8, hook_name=HOOK)
    fn = functools.partial(clamp_latents, sae, latents=torch.arange(16), multiplier=torch.full((16,), 3.0))
    hooked_full = choice_scores_full(lm, items, 4, HOOK, fn)
    assert not torch.allclose(hooked_full, full, atol=1e-3)
    torch.testing.assert_close(choice_scores(lm, items, 4, HOOK, fn), hooked_full, atol=1e-4, rtol=1e-5)


def test_resolved_offline_and_saebench_defaults():
    from types import SimpleNamespace

    from featsep.evals.common.context import EvalContext

    cpu_lm = SimpleNamespace(device=torch.device("cpu"), hook_layer=lambda hook: 0)
    ctx = EvalContext(cpu_lm, "blocks.0.hook_resid_post")
    off = _resolved(ctx, UnlearningSettings())
    assert (off.answer_scoring, off.filter_permutations, off.multiplier_units) == ("choice_logprob", 1, "raw")
    assert off.multipliers == [25.0, 50.0, 100.0, 200.0] and off.max_questions_per_set == 60
    sb = _resolved(ctx, UnlearningSettings(forget_questions=["wmdp-bio"], retain_questions=["human_aging"]))
    assert (sb.answer_scoring, sb.filter_permutations, sb.multiplier_units) == ("letter", 24, "raw")
    assert sb.multipliers == [25.0, 50.0, 100.0, 200.0]
    weak = _resolved(ctx, UnlearningSettings(answer_scoring="letter", filter_permutations=4, multiplier_units="latent_mean"))
    assert (weak.filter_permutations, weak.multipliers) == (4, [1.0, 2.0, 5.0, 10.0])
    with pytest.raises(ValueError, match="order cannot matter"):
        _resolved(ctx, UnlearningSettings(filter_permutations=24))
    with pytest.raises(ValueError, match="1..24"):
        _resolved(ctx, UnlearningSettings(answer_scoring="letter", filter_permutations=25))


def test_clamp_values_units():
    latents = torch.tensor([3, 0])
    mean_active = torch.tensor([0.5, 1.0, 2.0, 4.0])
    assert clamp_values(50.0, "sae", latents).tolist() == [50.0, 50.0]
    # raw: the SAE decodes codes / factor, so codes of 50 x factor write 50 in raw units
    torch.testing.assert_close(clamp_values(50.0, "raw", latents, normalization_factor=0.2), torch.tensor([10.0, 10.0]))
    torch.testing.assert_close(clamp_values(2.0, "latent_mean", latents, mean_active=mean_active), torch.tensor([8.0, 1.0]))
    assert clamp_values(2.0, "sae", torch.zeros(0, dtype=torch.long)).numel() == 0
    with pytest.raises(ValueError, match="mean activations"):
        clamp_values(2.0, "latent_mean", latents)


def test_raw_units_write_multiplier_in_the_residual_stream():
    """With "raw" units the clamped latent's code becomes -multiplier x factor, and the SAE decodes
    codes / factor: the raw residual changes by (-multiplier - old raw value) x W_dec[l]."""
    factor = 0.25
    sae = make_sae("topk", d_in=6, d_sae=16, k=16, normalization_factor=factor)
    x = torch.randn(1, 3, 6, generator=torch.Generator().manual_seed(3))
    f = sae.encode(x * factor)
    pos, l = 1, int(torch.argmax(f[0, 1]))
    latents = torch.tensor([l])
    out = clamp_latents(sae, x, latents, clamp_values(5.0, "raw", latents, normalization_factor=factor))
    delta = out[0, pos] - x[0, pos]
    want = (-5.0 * factor - f[0, pos, l]) * sae.W_dec[l] / factor
    torch.testing.assert_close(delta, want.detach(), atol=1e-5, rtol=1e-4)
    # the clamped latent's own written change has raw norm multiplier + its old raw value
    torch.testing.assert_close(delta.norm(), (5.0 + f[0, pos, l] / factor).detach(), atol=1e-5, rtol=1e-4)


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
    # one clamp value per latent
    values = torch.arange(1.0, 9.0)
    out = clamp_latents(sae, x, latents, values)
    g = f.clone()
    sel = g[..., latents]
    g[..., latents] = torch.where(sel > 0, -values.expand_as(sel), sel)
    torch.testing.assert_close(out, sae.decode(g) / 2.0 + error)


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


def test_base_model_is_refused(letters_lm):
    from featsep.evals.unlearning import check_instruct

    lm = letters_lm
    with pytest.raises(ValueError, match="instruction-tuned"):
        check_instruct(lm, UnlearningSettings())
    check_instruct(lm, UnlearningSettings(require_instruct=False))


def _named(letters_lm, name: str, template: bool):
    from featsep.lm import LanguageModel
    from tests.evals.helpers import LETTERS_VOCAB
    from tests.helpers import word_tokenizer

    tok = word_tokenizer(LETTERS_VOCAB)
    if template:
        tok.chat_template = "{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}<a>"
    return LanguageModel.from_hf(letters_lm.model, tok, name=name)


def test_instruct_check_needs_a_chat_template_and_an_instruct_name(letters_lm):
    from featsep.evals.unlearning import check_instruct

    s = UnlearningSettings()
    with pytest.raises(ValueError) as err:  # a base model that ships a chat template
        check_instruct(_named(letters_lm, "tiny-llama-base", template=True), s)
    assert "\n" not in str(err.value) and "tiny-llama-base looks like a base model: it has a chat template" in str(err.value)
    with pytest.raises(ValueError, match="no chat template"):
        check_instruct(_named(letters_lm, "tiny-llama-it", template=False), s)
    for name in ("tiny-llama-it", "org/Tiny-Llama-Instruct", "tiny-llama-chat-hf", "local/Tiny-SFT"):
        check_instruct(_named(letters_lm, name, template=True), s)
    for name in ("tiny-llama-italic", "it/tiny-llama", "tinychat-base"):  # markers only as whole name parts
        with pytest.raises(ValueError, match="looks like a base model"):
            check_instruct(_named(letters_lm, name, template=True), s)


def _trivia_wheel(path, lists: dict[str, dict]):
    """A stand-in for the Red-DiscordBot wheel: only the trivia YAML lists, as its zip holds them."""
    import zipfile

    import yaml

    from featsep.data.offline import TRIVIA_LIST_DIR

    with zipfile.ZipFile(path, "w") as z:
        for name, items in lists.items():
            z.writestr(f"{TRIVIA_LIST_DIR}{name}.yaml", yaml.safe_dump({"AUTHOR": "tests", **items}))
    return str(path)


CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo", "Egypt": "Cairo",
    "Peru": "Lima", "Kenya": "Nairobi", "Norway": "Oslo", "Cuba": "Havana", "Chile": "Santiago", "Greece": "Athens",
    "Ireland": "Dublin", "Poland": "Warsaw", "Austria": "Vienna", "Hungary": "Budapest", "Thailand": "Bangkok",
    "Canada": "Ottawa", "Australia": "Canberra", "Mexico": "Mexico City", "Sweden": "Stockholm", "Finland": "Helsinki",
}


def test_offline_forget_corpus_holds_no_scored_question_or_answer(tmp_path):
    from featsep.evals.unlearning.latents import corpus_texts
    from featsep.evals.unlearning.questions import load_question_set
    from featsep.evals.unlearning.settings import OFFLINE_TRIVIA_CORPUS

    items = {f"What is the capital of {c}?": [a] for c, a in CAPITALS.items()}
    # some facts asked both ways, as the real lists do: one side in the pool must keep the other out
    items.update({f"{a} is the capital of which country?": [c] for c, a in list(CAPITALS.items())[:8]})
    wheel = _trivia_wheel(tmp_path / "red_discordbot-0-py3-none-any.whl", {"caps": items, "other": {"Q?": ["A"]}})
    s = UnlearningSettings(forget_questions=["trivia:caps"], trivia_wheel=wheel)
    corpus = list(corpus_texts(OFFLINE_TRIVIA_CORPUS, s))
    asked = []
    for seed in (0, 1, 42):  # every seed asks from the same pool
        questions, _ = load_question_set("trivia:caps", s.model_copy(update={"seed": seed}))
        asked.append(sorted(q["question"] for q in questions))
        for q in questions:
            answer = q["choices"][q["answer"]]
            assert all(q["question"] not in doc and answer not in doc for doc in corpus), (q, corpus)
    assert asked[0] == asked[1] == asked[2] and len(asked[0]) == (len(items) + 1) // 2
    # the corpus is the list's other facts, answer sentences included, about the same subject
    assert 3 <= len(corpus) <= len(items) - len(asked[0])
    facts = {f"{q} {a[0]}." for q, a in items.items()}
    assert set(corpus) <= facts and not set(corpus) & {f"{q} {items[q][0]}." for q in asked[0]}
def _question_file(path, words, n, seed):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            choices = rng.sample(words, 4)
            f.write(json.dumps({"question": " ".join(rng.sample(words, 3)), "choices": choices, "answer": rng.randrange(4)}) + "\n")
    return path


@pytest.mark.parametrize("scoring", ["letter", "choice_logprob"])
def test_unlearning_end_to_end(tmp_path, scoring, monkeypatch, letters_lm):
    from featsep.evals import evaluate  # the eval registered itself when imported above
    from featsep.evals.unlearning.questions import QuestionSet
    from tests.evals.helpers import HOOK, TOPIC_WORDS, WORDS

    hooked = []  # the hooked passes the sweep runs: one per set and distinct clamp
    accuracy = QuestionSet.accuracy
    def counting(self, lm, batch_size, hook=None, fn=None):
        if fn is not None:
            hooked.append((tuple(fn.keywords["latents"].tolist()), tuple(fn.keywords["multiplier"].tolist())))
        return accuracy(self, lm, batch_size, hook, fn)
    monkeypatch.setattr(QuestionSet, "accuracy", counting)

    lm = letters_lm
    torch.manual_seed(0)  # the SAE below starts from the same weights whatever ran before
    forget_q = _question_file(tmp_path / "forget.jsonl", TOPIC_WORDS["x"], 24, 0)
    retain_q = _question_file(tmp_path / "retain.jsonl", TOPIC_WORDS["y"], 24, 1)
    (tmp_path / "forget.txt").write_text(" ".join(random.Random(2).choices(TOPIC_WORDS["x"] + WORDS[:20], k=3000)))
    (tmp_path / "retain.txt").write_text(" ".join(random.Random(3).choices(TOPIC_WORDS["y"] + WORDS[20:40], k=3000)))
    sae = make_sae("topk", d_in=lm.d_model, d_sae=64, k=8, hook_name=HOOK)
    extra = {"filter_permutations": 1} if scoring == "letter" else {"answer_scoring": "choice_logprob", "multiplier_units": "latent_mean"}
    out = evaluate(
        sae, evals=["unlearning"], model=lm, out_dir=tmp_path / "out", cache_dir=None, verbose=False,
        settings={"unlearning": {
            "forget_questions": [str(forget_q)], "retain_questions": [str(retain_q)],
            "forget_corpus": str(tmp_path / "forget.txt"), "retain_corpus": str(tmp_path / "retain.txt"),
            "require_instruct": False, "retain_thresholds": [0.2, 1.0, 1.0],  # the repeat is not run again
            "n_features_list": [4], "multipliers": [1.0, 50.0], "sparsity_rows": 8, "sparsity_context": 32, **extra,
        }},
    )["unlearning"]
    configs = out["eval_result_details"]
    info = out["eval_result_unstructured"]
    assert len(configs) == 6
    clamps = {(tuple(c["latents"]), c["multiplier"]) for c in configs if c["latents"]}
    assert len(hooked) == 2 * len(clamps) == 2 * len(set(hooked)) and len(clamps) < len(configs)
    score = out["eval_result_metrics"]["unlearning"]["unlearning_score"]
    assert score == pytest.approx(unlearning_score(configs, info["clean_retain_accuracy"]))
    # kept questions are answered (identity order) by the clean model
    assert info["clean_retain_accuracy"] == 1.0 and info["clean_forget_accuracy"] == 1.0
    assert all(c["n_latents_selected"] == len(c["latents"]) <= 4 for c in configs)
    # the latents depend on the threshold only; retain sparsity < 1.0 leaves plenty to pick from
    by = {(c["retain_threshold"], c["multiplier"]): c for c in configs}
    assert all(by[t, 1.0]["latents"] == by[t, 50.0]["latents"] for t in (0.2, 1.0))
    assert by[1.0, 1.0]["n_latents_selected"] == 4
    # the clamp reaches the model: some config moves an answer
    assert any(c["forget_accuracy"] < 1.0 or c["retain_accuracy"] < 1.0 for c in configs)
    assert info["answer_scoring"] == scoring and out["eval_config"]["answer_scoring"] == scoring
    assert info["multiplier_units"] == ("raw" if scoring == "letter" else "latent_mean")
    sets = info["question_sets"]
    assert sets[str(forget_q)]["asked"] == 24 and sets[str(forget_q)]["kept"] == info["n_forget_questions"]
    assert sets[str(forget_q)]["survivors_per_permutation"] == [info["n_forget_questions"]]
    if scoring == "letter":  # the test SAE has no normalisation factor: raw units are its codes
        assert all(c["clamp_value_mean"] in (0.0, c["multiplier"]) for c in configs)
    else:  # latent_mean: c = multiplier x the same latents' mean activations
        for t in (0.2, 1.0):
            assert by[t, 1.0]["clamp_value_mean"] > 0
            assert by[t, 50.0]["clamp_value_mean"] == pytest.approx(50.0 * by[t, 1.0]["clamp_value_mean"], rel=1e-5)


def test_corpus_rows_eos_joined_bos_led_and_lazy(monkeypatch, letters_lm):
    import featsep.evals.unlearning.latents as unlearning
    from featsep.evals.common.context import EvalContext
    from tests.evals.helpers import HOOK, WORDS

    lm = letters_lm
    torch.manual_seed(0)  # the SAE below starts from the same weights whatever ran before
    ctx = EvalContext(lm, HOOK, cache_dir=None, verbose=False)
    s = UnlearningSettings(sparsity_rows=3, sparsity_context=8)
    read = []

    def endless(spec, s):  # 5 words + EOS = 6 tokens per text
        for i in itertools.count():
            read.append(i)
            yield " ".join(WORDS[i % 7 : i % 7 + 5])

    monkeypatch.setattr(unlearning, "corpus_texts", endless)
    rows = unlearning.corpus_rows(ctx, "endless", s)
    assert rows.shape == (3, 8) and (rows[:, 0] == lm.bos_token_id).all()
    eos = lm.tokenizer.eos_token_id
    assert (rows[:, 1:] == eos).any() and not (rows[:, 1:] == lm.bos_token_id).any()
    # 4 x (3 + 1) rows x 8 tokens = 128 wanted: the first 64 texts (384 tokens) are enough
    assert len(read) == 64
    monkeypatch.setattr(unlearning, "corpus_texts", lambda spec, s: iter([]))
    with pytest.raises(ValueError, match="holds no text"):
        unlearning.corpus_rows(ctx, "empty", s)


def test_hub_sets_without_a_network_fail_at_once_naming_the_offline_sets(monkeypatch):
    pytest.importorskip("datasets")
    from featsep import hub
    from featsep.evals.unlearning.latents import corpus_texts
    from featsep.evals.unlearning.questions import load_question_set

    monkeypatch.setattr(hub, "offline", lambda: False)
    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: False)
    s = UnlearningSettings()
    for load in (lambda: load_question_set("wmdp-bio", s), lambda: load_question_set("college_biology", s),
                 lambda: corpus_texts("wikitext", s)):
        with pytest.raises(ValueError, match=r"hub cannot be reached .*trivia:<list>.*unlearning.forget_questions"):
            load()
