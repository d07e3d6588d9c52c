"""Judges for autointerp: something that explains a latent from examples and then predicts, from
the explanation alone, which new examples make it fire.

    class Judge(Protocol):
        def explain(self, examples: list[Example]) -> str
        def detect(self, explanation: str, examples: list[Example]) -> list[bool]

Two implementations:
- `OpenAIJudge`: any OpenAI-compatible chat-completions server (OpenAI, vLLM, llama.cpp, ...)
  over plain urllib, with SAEBench's prompts (gpt-4o-mini is SAEBench's judge). The API key is
  read from an environment variable, never stored in settings or results.
- `LexicalJudge`: needs no network. Explanation = the few tokens that carry most of the
  latent's activation mass in the generation examples and are over-represented there compared
  with the background token distribution (score m(t) * log(m(t) / b(t)): m = share of
  activation mass on token t, b = frequency of t in the dataset); detection = the window
  contains one of those tokens. It is a floor, not an LLM: it explains token-level latents
  well and context-level ones (a topic, a sentence position) badly. tests and the autointerp
  report measure it on latents with known triggers and on real ones.
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from typing import Optional, Protocol, Sequence


@dataclass
class Example:
    """One window of tokens (strings) with the latent's activation at each."""

    tokens: list[str]
    acts: list[float]
    act_threshold: float = 0.0

    @property
    def active_mask(self) -> list[bool]:
        return [a > self.act_threshold for a in self.acts]

    @property
    def is_active(self) -> bool:
        """What detection predicts: does the latent fire anywhere in the window."""
        return any(self.active_mask)

    def to_str(self, mark: bool = False) -> str:
        """SAEBench's rendering: active tokens in <<...>> when marked, newlines as ↵."""
        text = "".join(f"<<{t}>>" if mark and on else t for t, on in zip(self.tokens, self.active_mask))
        return text.replace("\ufffd", "").replace("\n", "↵")


class Judge(Protocol):
    def explain(self, examples: list[Example]) -> str: ...

    def detect(self, explanation: str, examples: list[Example]) -> list[bool]: ...


# ---- SAEBench's prompts --------------------------------------------------------------------------

EXPLAIN_SYSTEM = (
    "We're studying neurons in a neural network. Each neuron activates on some particular word/words/substring/concept "
    "in a short document. The activating words in each document are indicated with << ... >>. We will give you a list "
    "of documents on which the neuron activates, in order from most strongly activating to least strongly activating. "
    "Look at the parts of the document the neuron activates for and summarize in a single sentence what the neuron is "
    "activating on. Try not to be overly specific in your explanation. Note that some neurons will activate only on "
    "specific words or substrings, but others will activate on most/all words in a sentence provided that sentence "
    "contains some particular concept. Your explanation should cover most or all activating words (for example, "
    "don't give an explanation which is specific to a single word if all words in a sentence cause the neuron to "
    "activate). Pay attention to things like the capitalization and punctuation of the activating words or concepts, "
    "if that seems relevant. Keep the explanation as short and simple as possible, limited to 20 words or less. Omit "
    "punctuation and formatting. You should avoid giving long lists of words."
    'Your response should be in the form "This neuron activates on...".'
)


def detect_system(n_examples: int, example_answer: str) -> str:
    return (
        "We're studying neurons in a neural network. Each neuron activates on some particular word/words/substring/"
        "concept in a short document. You will be given a short explanation of what this neuron activates for, and "
        f"then be shown {n_examples} example sequences in random order. You will have to return a comma-separated list "
        "of the examples where you think the neuron should activate at least once, on ANY of the words or substrings "
        f'in the document. For example, your response might look like "{example_answer}". Try not to be overly '
        "specific in your interpretation of the explanation. If you think there are no examples where the neuron will "
        'activate, you should just respond with "None". You should include nothing else in your response other than '
        'comma-separated numbers or the word "None" - this is important.'
    )


def explain_messages(examples: list[Example]) -> list[dict[str, str]]:
    shown = "\n".join(f"{i + 1}. {ex.to_str(mark=True)}" for i, ex in enumerate(examples))
    return [{"role": "system", "content": EXPLAIN_SYSTEM}, {"role": "user", "content": f"The activating documents are given below:\n\n{shown}"}]


def detect_messages(explanation: str, examples: list[Example], example_answer: str = "1, 4, 7") -> list[dict[str, str]]:
    shown = "\n".join(f"{i + 1}. {ex.to_str(mark=False)}" for i, ex in enumerate(examples))
    user = f"Here is the explanation: this neuron fires on {explanation}.\n\nHere are the examples:\n\n{shown}"
    return [{"role": "system", "content": detect_system(len(examples), example_answer)}, {"role": "user", "content": user}]


def parse_explanation(text: str) -> str:
    """SAEBench: keep what follows the last "activates on", without a final period."""
    return text.split("activates on")[-1].rstrip(".").strip()


def parse_predictions(text: str, n_examples: int) -> Optional[list[bool]]:
    """"1, 4 and 7" / "None" -> booleans per example; None when the reply is not a number list."""
    parts = [p.strip() for p in text.strip().rstrip(".").replace("and", ",").replace("None", "").split(",")]
    parts = [p for p in parts if p]
    if not all(p.isdigit() for p in parts):
        return None
    chosen = {int(p) for p in parts}
    return [i + 1 in chosen for i in range(n_examples)]


# ---- OpenAI-compatible HTTP judge ----------------------------------------------------------------


class JudgeError(RuntimeError):
    pass


class OpenAIJudge:
    """POST {base_url}/chat/completions with SAEBench's prompts.

    base_url: e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1; api_key_env: the
    environment variable holding the key (may be unset for local servers)."""

    def __init__(self, base_url: str = "https://api.openai.com/v1", model: str = "gpt-4o-mini", api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 60.0, max_tokens_explanation: int = 30, max_tokens_prediction: int = 5, retries: int = 2):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env, self.timeout, self.retries = model, api_key_env, timeout, retries
        self.max_tokens_explanation, self.max_tokens_prediction = max_tokens_explanation, max_tokens_prediction

    def _complete(self, messages: list[dict[str, str]], max_tokens: int) -> str:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        elif "api.openai.com" in self.url:
            raise JudgeError(f"no API key: set the environment variable {self.api_key_env} (or use the offline judge: autointerp.judge='lexical')")
        body = json.dumps({"model": self.model, "messages": messages, "max_tokens": max_tokens, "n": 1, "stream": False}).encode()
        last: Exception | None = None
        for _ in range(self.retries + 1):
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    reply = json.loads(response.read().decode())
                return str(reply["choices"][0]["message"]["content"]).strip()
            except urllib.error.HTTPError as e:
                last = e
                if e.code in (400, 401, 403, 404):
                    break
            except (urllib.error.URLError, TimeoutError, KeyError, IndexError, json.JSONDecodeError) as e:
                last = e
        raise JudgeError(f"judge call to {self.url} (model {self.model}) failed: {last}; check autointerp.judge_base_url / judge_model and the key in ${self.api_key_env}")

    def explain(self, examples: list[Example]) -> str:
        return parse_explanation(self._complete(explain_messages(examples), self.max_tokens_explanation))

    def detect(self, explanation: str, examples: list[Example]) -> list[bool]:
        reply = self._complete(detect_messages(explanation, examples), self.max_tokens_prediction)
        parsed = parse_predictions(reply, len(examples))
        if parsed is None:
            raise JudgeError(f"judge reply {reply!r} is not a comma-separated list of example numbers")
        return parsed


# ---- offline lexical judge -----------------------------------------------------------------------


def _norm(token: str) -> str:
    return token.strip().lower()


QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


class LexicalJudge:
    """See the module doc. max_tokens: explanation size; mass_share: stop adding tokens once they
    cover this share of the activation mass."""

    def __init__(self, max_tokens: int = 3, mass_share: float = 0.6, background: Optional[dict[str, float]] = None):
        self.max_tokens, self.mass_share = max_tokens, mass_share
        self.background = background or {}

    def set_background(self, token_counts) -> None:
        """Background token counts (token string -> count), e.g. over the eval's token rows."""
        merged: Counter = Counter()
        for token, count in token_counts.items():
            merged[_norm(token)] += count
        total = sum(merged.values()) or 1
        self.background = {t: c / total for t, c in merged.items()}

    def explain(self, examples: list[Example]) -> str:
        mass: Counter = Counter()
        for ex in examples:
            for tok, act, on in zip(ex.tokens, ex.acts, ex.active_mask):
                if on and _norm(tok):
                    mass[_norm(tok)] += act
        total = sum(mass.values())
        if total <= 0:
            return "nothing recognisable"
        floor = min(self.background.values()) if self.background else 1e-6
        scored = []
        for tok, m in mass.items():
            share = m / total
            scored.append((share * math.log(share / self.background.get(tok, floor)), share, tok))
        scored.sort(reverse=True)
        chosen, covered = [], 0.0
        for score, share, tok in scored:
            if score <= 0 and chosen:
                break
            chosen.append(tok)
            covered += share
            if len(chosen) >= self.max_tokens or covered >= self.mass_share:
                break
        return "the tokens " + ", ".join(json.dumps(t) for t in chosen)

    def detect(self, explanation: str, examples: list[Example]) -> list[bool]:
        wanted = {_norm(json.loads(q)) for q in QUOTED.findall(explanation)}
        if not wanted:  # a free-text explanation: its words
            wanted = {w for w in re.findall(r"[a-z0-9]+", explanation.lower()) if len(w) > 3}
        return [any(_norm(t) in wanted for t in ex.tokens) for ex in examples]


def score_detection(predictions: Sequence[bool], examples: list[Example]) -> float:
    """SAEBench's score: fraction of examples classified correctly (active or not)."""
    if len(predictions) != len(examples):
        raise ValueError(f"judge returned {len(predictions)} predictions for {len(examples)} examples")
    return sum(p == ex.is_active for p, ex in zip(predictions, examples)) / len(examples)


def make_judge(kind: str, base_url: str, model: str, api_key_env: str, **kwargs) -> Judge:
    if kind == "lexical":
        return LexicalJudge()
    if kind == "openai":
        return OpenAIJudge(base_url=base_url, model=model, api_key_env=api_key_env, **kwargs)
    raise ValueError(f"unknown judge {kind!r}; use 'lexical' (offline) or 'openai' (any OpenAI-compatible server)")
