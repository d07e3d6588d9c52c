"""featsep.data.tables: one reader for every table format, one missing-column error."""

from __future__ import annotations

import json

import pytest

pd = pytest.importorskip("pandas")

from featsep.data.errors import DataError  # noqa: E402
from featsep.data.tables import MissingColumnError, check_encoding, iter_column, read_table  # noqa: E402

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


LATIN1_ROWS = ["plain ascii", "café au lait", "naïve"]  # é and ï are one byte each in latin-1, not UTF-8


def _write_latin1(tmp_path, suffix):
    path = tmp_path / f"l{suffix}"
    if suffix == ".txt":
        text = "\n".join(LATIN1_ROWS) + "\n"
    elif suffix == ".csv":
        text = "text\n" + "".join(f"{r}\n" for r in LATIN1_ROWS)
    elif suffix == ".jsonl":
        text = "".join(json.dumps({"text": r}, ensure_ascii=False) + "\n" for r in LATIN1_ROWS)
    else:
        text = json.dumps([{"text": r} for r in LATIN1_ROWS], ensure_ascii=False, indent=0)
    path.write_bytes(text.encode("latin-1"))
    return path


# the line of the first é: line 2 everywhere but .json (indent=0 puts "[" and "{" on lines of their own)
BAD_LINE = {".txt": 2, ".csv": 3, ".jsonl": 2, ".json": 6}


@pytest.mark.parametrize("suffix", [".txt", ".csv", ".jsonl", ".json"])
def test_bytes_that_are_not_the_encoding_name_file_line_and_fix(tmp_path, suffix):
    """Bad bytes are never replaced: one error naming the file, the line and how to name the encoding."""
    path = _write_latin1(tmp_path, suffix)
    before = path.read_bytes()
    want = (rf"^{path}: line {BAD_LINE[suffix]}: bytes b'\\xe9' are not valid utf-8; name the file's encoding "
            r"\(data.encoding, e.g. --set data.encoding=latin-1; others: utf-8, latin-1, cp1252, utf-16\) "
            r"or re-save it as UTF-8$")
    with pytest.raises(DataError, match=want):
        list(iter_column(path, "text"))
    with pytest.raises(DataError, match=want):
        read_table(path)
    texts = list(iter_column(path, "text", encoding="latin-1"))
    assert texts == (["\n".join(LATIN1_ROWS) + "\n"] if suffix == ".txt" else LATIN1_ROWS)
    if suffix != ".txt":
        assert read_table(path, ["text"], encoding="latin-1")["text"].tolist() == LATIN1_ROWS
    assert path.read_bytes() == before


def test_the_bad_line_is_found_past_the_readers_buffer(tmp_path):
    """Readers decode in blocks far ahead of the row they yield; the line is still the right one."""
    path = tmp_path / "big.jsonl"
    good = "".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(20_000)).encode()
    path.write_bytes(good + b'{"text": "\xff"}\n')
    with pytest.raises(DataError, match=r"big.jsonl: line 20001: bytes b'\\xff' are not valid utf-8"):
        list(iter_column(path, "text"))
    utf16 = tmp_path / "wide.txt"
    utf16.write_bytes("one\ntwo\n".encode("utf-16"))
    assert list(iter_column(utf16, "text", encoding="utf-16")) == ["one\ntwo\n"]
    with pytest.raises(DataError, match=r"wide.txt: line 1: bytes b'\\xff' are not valid utf-8"):
        list(iter_column(utf16, "text"))  # the BOM


def test_a_truncated_character_at_the_end_and_an_unknown_encoding(tmp_path):
    path = tmp_path / "cut.txt"
    path.write_bytes("a\nb\n".encode() + "é".encode()[:1])
    with pytest.raises(DataError, match=r"cut.txt: line 3: bytes b'\\xc3' are not valid utf-8"):
        list(iter_column(path, "text"))
    for name in ("utf-9", "base64", "rot13"):  # not a codec; codecs of bytes or of str only
        with pytest.raises(DataError, match=rf"^unknown text encoding '{name}'; use a Python codec name such as utf-8, latin-1"):
            iter_column(path, "text", encoding=name)
    assert check_encoding("latin-1") == "latin-1"
