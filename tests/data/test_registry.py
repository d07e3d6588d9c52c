"""The datasets registry: every kind lists what it should, unknown names get the one error,
parameters are validated, and every registered (name, kind) resolves to a loader."""

from __future__ import annotations

import pytest

import featsep.data as data
from featsep.data import DATASETS, DataError, datasets, load_probing_dataset, question_set, scr_frames, text_source
from featsep.data.registry import (
    KINDS, MMLU_SUBJECTS, PROBING, QUESTIONS, SCR, TEXT, DatasetEntry, DatasetRegistry, HubSetParams,
    LabelledFileParams, validate_params,
)

SAEBENCH_PROBING = [
    "LabHC/bias_in_bios_class_set1", "LabHC/bias_in_bios_class_set2", "LabHC/bias_in_bios_class_set3",
    "canrager/amazon_reviews_mcauley_1and5", "canrager/amazon_reviews_mcauley_1and5_sentiment",
    "codeparrot/github-code", "fancyzhx/ag_news", "Helsinki-NLP/europarl",
]


def _names(kind):
    return [e.name for e in datasets(kind)]


def test_every_kind_lists_what_it_should():
    assert _names(TEXT) == ["bbc-news", "wikitext", "offline:trivia"]
    assert _names(PROBING) == ["bbc-news", "code-languages", "manpage-languages", *SAEBENCH_PROBING]
    assert _names(SCR) == ["LabHC/bias_in_bios_class_set1", "canrager/amazon_reviews_mcauley_1and5", "bbc-news-byline"]
    assert _names(QUESTIONS) == ["trivia:<list>", "wmdp", "<MMLU subject>"]
    assert [e.name for e in datasets()] == list(dict.fromkeys(n for k in KINDS for n in _names(k)))  # each once
    assert {e.name for e in datasets() if e.needs_hub} == {"wikitext", *SAEBENCH_PROBING, "wmdp", "<MMLU subject>"}
    assert all(e.description for e in datasets())
    with pytest.raises(ValueError, match="unknown dataset kind 'corpus'"):
        datasets("corpus")


def test_families_match_their_members_only():
    assert DATASETS.find("trivia:worldcapitals", QUESTIONS).name == "trivia:<list>"
    assert DATASETS.find("wmdp-bio", QUESTIONS).name == "wmdp"
    assert len(MMLU_SUBJECTS) == 57 and DATASETS.find("high_school_us_history", QUESTIONS).name == "<MMLU subject>"
    for name in ("trivia:", "wmdp", "wmdp-physics", "<MMLU subject>", "bbc-news"):
        assert DATASETS.get(name, QUESTIONS) is None


@pytest.mark.parametrize("kind, call", [
    (TEXT, lambda: text_source("bbc_news")),
    (PROBING, lambda: load_probing_dataset("no-such-dataset", 6, 3)),
    (SCR, lambda: scr_frames("nope", 0)),
    (QUESTIONS, lambda: question_set("college_biologie", 0)),
])
def test_an_unknown_name_gets_one_error_listing_its_kind(kind, call):
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    plural = "text corpora" if kind == TEXT else f"{kind}s"
    assert message.count("unknown") == 1 and f"registered {plural} are " in message
    listed = message.split(f"registered {plural} are ", 1)[1].split("; ", 1)[0].split(", ")
    assert listed == _names(kind)  # that kind's names, no other
    assert "local" in message  # a local path (or copy) is accepted too


def test_parameters_are_validated(tmp_path):
    with pytest.raises(DataError, match=r"bad parameters for dataset 'offline:trivia': topics: .*\(accepted: topics, wheel\)"):
        text_source("offline:trivia", topics=[])
    with pytest.raises(DataError, match=r"bad parameters for dataset 'offline:trivia': topics: Field required"):
        text_source("offline:trivia")
    with pytest.raises(DataError, match="'bbc-news' takes no parameters"):
        text_source("bbc-news", topics=["x"])
    with pytest.raises(DataError, match="takes no parameters"):
        text_source(str(tmp_path), section="data")
    with pytest.raises(DataError, match=r"bad parameters for dataset 'x.csv': text_column: .*accepted: label_column, path, text_column"):
        validate_params(LabelledFileParams, "x.csv", {"path": "x.csv", "text_column": 3})
    with pytest.raises(DataError, match=r"local_copie: unknown field"):
        DATASETS.find("fancyzhx/ag_news", PROBING).parse(local_copie={})
    assert DATASETS.find("fancyzhx/ag_news", PROBING).parse(local_copies={"a": "b"}) == HubSetParams(local_copies={"a": "b"})


def test_every_registered_entry_resolves_to_a_loader():
    for entry in datasets():
        for kind in entry.kinds:
            name = entry.members[0] if entry.members else (entry.prefix + "x" if entry.prefix else entry.name)
            assert callable(DATASETS.load(name, kind)), (entry.name, kind)
    assert len(DATASETS.loaders) == sum(len(e.kinds) for e in datasets())  # no loader without an entry
    assert data.DatasetEntry is DatasetEntry


def test_registration_errors():
    reg = DatasetRegistry()
    reg.add(DatasetEntry("a", (TEXT,), "an a", False))
    with pytest.raises(ValueError, match="registered twice"):
        reg.add(DatasetEntry("a", (TEXT,), "again", False))
    with pytest.raises(ValueError, match="kinds must be among"):
        reg.add(DatasetEntry("b", ("movies",), "b", False))
    with pytest.raises(ValueError, match="declare it first"):
        reg.loader("a", PROBING)
    reg.loader("a", TEXT)(len)
    with pytest.raises(ValueError, match="two loaders"):
        reg.loader("a", TEXT)(print)
