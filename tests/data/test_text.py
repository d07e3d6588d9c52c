"""featsep.data.text: local files, hub datasets and the built-in BBC articles as text sources."""

from __future__ import annotations

import json

import pytest

from featsep.data import (
    DataError,
    load_bbc_news,
    text_source,
)
from featsep import hub




def test_local_file_sources(tmp_path):
    docs = ["first doc, with a comma", "second\nwith a newline", "third"]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    import csv

    with open(tmp_path / "b.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "body"])
        writer.writeheader()
        writer.writerows({"id": i, "body": d} for i, d in enumerate(docs))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": docs, "n": [1, 2, 3]}), tmp_path / "c.parquet")
    for name in ("a.jsonl", "b.csv", "c.parquet"):
        assert list(text_source(str(tmp_path / name), text_column="body")) == docs
    sub = tmp_path / "txt"
    sub.mkdir()
    for i, d in enumerate(docs):
        (sub / f"{i}.txt").write_text(d)
    (sub / "notes.md").write_text("ignored")
    assert list(text_source(str(sub))) == docs  # a .txt file is one document, sorted by path
    # a directory mixes formats, each file read with its own reader, in sorted path order
    assert list(text_source(str(tmp_path), text_column="body")) == docs * 3 + docs


def test_text_source_errors(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"content": "x"}) + "\n")
    with pytest.raises(DataError, match=r"no column\(s\) 'text' \(columns: content\); pass text_column"):
        list(text_source(str(tmp_path / "a.jsonl")))
    (tmp_path / "b.csv").write_text("content\nx\n")
    with pytest.raises(DataError, match=r"b.csv: no column\(s\) 'text' \(columns: content\)"):
        list(text_source(str(tmp_path / "b.csv")))
    (tmp_path / "empty.jsonl").write_text(json.dumps({"text": "  "}) + "\n")
    with pytest.raises(DataError, match="empty corpus"):
        list(text_source(str(tmp_path / "empty.jsonl")))
    with pytest.raises(DataError, match="no such file"):
        text_source(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="unknown dataset 'bbc_news'.*bbc-news"):
        text_source("bbc_news")
    (tmp_path / "x.docx").write_text("?")
    with pytest.raises(DataError, match="unsupported file type"):
        text_source(str(tmp_path / "x.docx"))
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(DataError, match="no readable text files"):
        text_source(str(tmp_path / "emptydir"))


def test_local_text_in_another_encoding(tmp_path):
    """encoding reaches every file of a directory; the wrong one is an error, never U+FFFD."""
    docs = ["caf\u00e9", "na\u00efve", "plain"]
    for i, d in enumerate(docs):
        (tmp_path / f"{i}.txt").write_bytes(d.encode("cp1252"))
    assert list(text_source(str(tmp_path), encoding="cp1252")) == docs
    with pytest.raises(DataError, match=r"0.txt: line 1: bytes b'\\xe9' are not valid utf-8; name the file's encoding"):
        list(text_source(str(tmp_path)))
    with pytest.raises(DataError, match="unknown text encoding 'latin-9'"):
        text_source(str(tmp_path), encoding="latin-9")  # eager, like a bad spec


def test_hf_dataset_offline_fails_fast_naming_bbc(monkeypatch):
    monkeypatch.setattr(hub, "offline", lambda: False)
    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: False)
    with pytest.raises(DataError, match="bbc-news"):
        text_source("Skylion007/openwebtext")


def test_hf_dataset_streams_through_datasets(monkeypatch):
    import datasets

    calls = {}

    class FakeStream:
        column_names = ["text", "meta"]

        def shuffle(self, seed, buffer_size):
            calls["shuffle"] = seed
            return self

        def __iter__(self):
            return iter([{"text": "hello", "meta": 1}, {"text": "world", "meta": 2}])

    def fake_load_dataset(name, split, streaming):
        calls.update(name=name, split=split, streaming=streaming)
        return FakeStream()

    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert list(text_source("monology/pile-uncopyrighted", seed=7)) == ["hello", "world"]
    assert calls == {"name": "monology/pile-uncopyrighted", "split": "train", "streaming": True, "shuffle": 7}
    with pytest.raises(DataError, match="no column\\(s\\) 'body'"):
        text_source("monology/pile-uncopyrighted", text_column="body")


def test_bbc_news():
    articles = load_bbc_news()
    assert len(articles) == 2225
    counts = {}
    for _, topic in articles:
        counts[topic] = counts.get(topic, 0) + 1
    assert counts == {"business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401}
    first = list(text_source("bbc-news"))
    assert sorted(first) == sorted(t for t, _ in articles)  # every article once
    assert first == list(text_source("bbc-news"))  # seeded
    assert first[:20] != list(text_source("bbc-news", seed=1))[:20]
    assert len({topic for _, topic in articles if _ in set(first[:50])}) > 1  # topics are mixed
