"""The vocabulary of the `letters_lm` fixture, which the eval tests write their corpora and questions in."""

from __future__ import annotations

import random
import string

HOOK = "blocks.0.hook_resid_post"
D = 32
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
LETTERS_VOCAB = TEMPLATE_WORDS + LETTER_TOKENS + WORDS + TOPIC_WORDS["x"] + TOPIC_WORDS["y"]
