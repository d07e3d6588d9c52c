"""4-choice question sets (unlearning's): offline trivia lists, WMDP and MMLU from the hub, or
a local file, each as rows in cais/mmlu's shape {question, choices, answer} plus the subject
the pre-question line names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import featsep.data.hub as hub_data
from featsep.data.offline import TRIVIA_SUBJECTS, trivia_questions
from featsep.data.registry import DATASETS, QUESTIONS, TRIVIA_PREFIX, HubTextParams, TriviaParams
from featsep.data.tables import read_table

QUESTION_COLUMNS = ("question", "choices", "answer")
QUESTION_FILE_FIX = "a question file needs question, choices (4 strings), answer (0-3)"
WMDP_SUBJECTS = {"wmdp-bio": "biology"}  # SAEBench's pre-question line for wmdp-bio; others: the name less "wmdp-"


@DATASETS.loader(f"{TRIVIA_PREFIX}<list>", QUESTIONS)
def trivia_set(name: str, seed: int, params: TriviaParams) -> tuple[list[dict], str]:
    topic = name[len(TRIVIA_PREFIX):]
    return trivia_questions(topic, seed=seed, wheel=params.wheel), TRIVIA_SUBJECTS.get(topic, topic)


def _hub_rows(ds) -> list[dict]:
    return [{"question": r["question"], "choices": list(r["choices"]), "answer": int(r["answer"])} for r in ds]


@DATASETS.loader("wmdp", QUESTIONS)
def wmdp_set(name: str, seed: int, params: HubTextParams) -> tuple[list[dict], str]:
    ds = hub_data.load_dataset("cais/wmdp", params.section, params.fix, name=name, split="test")
    return _hub_rows(ds), WMDP_SUBJECTS.get(name, name[len("wmdp-"):])


@DATASETS.loader("<MMLU subject>", QUESTIONS)
def mmlu_set(name: str, seed: int, params: HubTextParams) -> tuple[list[dict], str]:
    ds = hub_data.load_dataset("cais/mmlu", params.section, params.fix, name=name, split="test")
    return _hub_rows(ds), name.replace("_", " ")


def question_set(name: str, seed: int, wheel: Optional[str] = None, section: str = "unlearning",
                 fix: Optional[str] = None) -> tuple[list[dict], str]:
    """(questions, subject) of a registered set or a local file; hub errors name `section` and `fix`."""
    entry = DATASETS.get(name, QUESTIONS)
    path = Path(name).expanduser()
    if entry is not None and not entry.needs_hub:
        return DATASETS.load(name, QUESTIONS)(name, seed, entry.parse(wheel=wheel))
    if path.is_file():
        rows = read_table(path, QUESTION_COLUMNS, fix=QUESTION_FILE_FIX).to_dict("records")
        return rows, path.stem.replace("_", " ")
    if entry is None:
        raise DATASETS.unknown(name, QUESTIONS)
    return DATASETS.load(name, QUESTIONS)(name, seed, entry.parse(section=section, fix=fix))
