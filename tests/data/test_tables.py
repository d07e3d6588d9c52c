"""featsep.data.tables: one reader for every table format, one missing-column error."""

from __future__ import annotations

import json

import pytest

pd = pytest.importorskip("pandas")

from featsep.data.errors import DataError  # noqa: E402
from featsep.data.tables import MissingColumnError, iter_column, read_table  # noqa: E402

ROWS = [{"text": "alpha beta", "label": 1}, {"text": "gamma, \"delta\"", "label": 0}, {"text": "", "label": 1}]


def _write(tmp_path, suffix):
    path = tmp_path / f"t{suffix}"
    df = pd.DataFrame(ROWS)
    if suffix == ".csv":
        df.to_csv(path, index=False)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif suffix == ".json":
        path.write_text(json.dumps(ROWS))
    else:
        df.to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".parquet"])
def test_each_format_reads_the_same_table(tmp_path, suffix):
    path = _write(tmp_path, suffix)
    df = read_table(path, ["text", "label"])
    assert list(df.columns) == ["text", "label"] and df["label"].tolist() == [1, 0, 1]
    assert [t if isinstance(t, str) else "" for t in df["text"]] == [r["text"] for r in ROWS]  # csv: "" reads as NaN
    assert list(iter_column(path, "text")) == [r["text"] for r in ROWS]


def test_txt_is_one_document(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text("line one\nline two\n")
    assert list(iter_column(path, "anything")) == ["line one\nline two\n"]  # no column names in a .txt
    assert read_table(path)["text"].tolist() == ["line one\nline two\n"]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".parquet"])
def test_a_missing_column_is_one_clear_error(tmp_path, suffix):
    path = _write(tmp_path, suffix)
    expected = rf"t{suffix}: no column\(s\) 'body', 'topic' \(columns: text, label\); rename them"
    with pytest.raises(MissingColumnError, match=expected):
        read_table(path, ["text", "body", "topic"], fix="rename them")
    with pytest.raises(MissingColumnError, match=rf"t{suffix}: no column\(s\) 'body' \(columns: text, label\); fix"):
        list(iter_column(path, "body", fix="fix"))
    assert issubclass(MissingColumnError, DataError) and issubclass(MissingColumnError, ValueError)


def test_unsupported_format_and_bad_jsonl(tmp_path):
    (tmp_path / "x.docx").write_text("?")
    with pytest.raises(DataError, match="unsupported file type '.docx'"):
        read_table(tmp_path / "x.docx")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2 is not valid JSON"):
        list(iter_column(tmp_path / "bad.jsonl", "text"))
