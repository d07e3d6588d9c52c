"""Local tables: one reader for .txt / .jsonl / .json / .csv / .parquet, used for training text
and for labelled eval tables alike, with one missing-column error.

Two ways to read the same formats: `read_table` (a pandas DataFrame, dtypes inferred as pandas
does: labelled sets rely on that, e.g. integer class ids) and `iter_column` (one column as
strings, streamed: training corpora can be larger than memory). A .txt file has no column
names: `iter_column` yields the whole file whatever column is asked; `read_table` gives one row
in a `text` column.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import json
import sys
from pathlib import Path
from typing import Iterable, Iterator

from featsep.data.errors import DataError

TABLE_SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".parquet")
TXT_COLUMN = "text"
ENCODING_EXAMPLES = "utf-8, latin-1, cp1252, utf-16"


class MissingColumnError(DataError):
    """A table lacks a column the caller needs; the message lists the columns it has."""


def require_columns(source, columns: Iterable[str], available: Iterable, fix: str) -> None:
    """Raise MissingColumnError naming every column of `columns` not in `available`, and the fix."""
    available = [str(c) for c in available]
    missing = [c for c in columns if c not in available]
    if missing:
        raise MissingColumnError(
            f"{source}: no column(s) {', '.join(map(repr, missing))} (columns: {', '.join(available)}); {fix}"
        )


def suffix_of(path: Path) -> str:
    """The table format of `path`; DataError for one this module cannot read."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(f"cannot read {path}: unsupported file type {suffix!r}; use one of {', '.join(TABLE_SUFFIXES)}")
    return suffix


def check_encoding(encoding: str) -> str:
    """`encoding` if Python knows it as a text codec, else one DataError naming some that are."""
    try:
        "x".encode(encoding)  # LookupError for unknown names and bytes codecs (base64); "" would skip the lookup
    except (LookupError, TypeError, UnicodeError):
        raise DataError(f"unknown text encoding {encoding!r}; use a Python codec name such as {ENCODING_EXAMPLES}") from None
    return encoding


def decode_error(path: Path, encoding: str) -> DataError:
    """The error for a file that is not valid `encoding`: its first bad line, and the fix.

    Found by decoding the file again from the start, because a decoder reading ahead in blocks
    (csv, pandas, text-mode files) cannot say which line held the bad bytes."""
    decoder = codecs.getincrementaldecoder(encoding)()
    newlines, bad = 0, None
    with open(path, "rb") as f:
        while bad is None:
            block = f.read(1 << 16)
            try:
                newlines += decoder.decode(block, final=not block).count("\n")
            except UnicodeDecodeError as e:  # e.object: the decoder's held-back bytes + this block
                newlines += e.object[: e.start].decode(encoding, errors="replace").count("\n")
                bad = e.object[e.start : e.end]
            if not block:
                break
    what = f"bytes {bad!r} are" if bad is not None else "the file is"
    return DataError(
        f"{path}: line {newlines + 1}: {what} not valid {encoding}; name the file's encoding "
        f"(data.encoding, e.g. --set data.encoding=latin-1; others: {ENCODING_EXAMPLES}) or re-save it as UTF-8"
    )


@contextlib.contextmanager
def _decoding(path: Path, encoding: str) -> Iterator[None]:
    try:
        yield
    except UnicodeDecodeError:
        raise decode_error(path, encoding) from None


def read_table(path: Path, columns: Iterable[str] = (), fix: str = "name the right columns", encoding: str = "utf-8"):
    """The whole table as a pandas DataFrame; `columns` must be present (else MissingColumnError).
    encoding: of .txt/.csv/.json(l) files (parquet stores UTF-8); bad bytes are a DataError."""
    import pandas as pd

    path = Path(path)
    suffix = suffix_of(path)
    check_encoding(encoding)
    with _decoding(path, encoding):
        if suffix == ".txt":
            df = pd.DataFrame({TXT_COLUMN: [path.read_text(encoding=encoding)]})
        elif suffix == ".csv":
            df = pd.read_csv(path, encoding=encoding)
        elif suffix in (".jsonl", ".json"):
            df = pd.read_json(path, lines=suffix == ".jsonl", encoding=encoding)
        else:
            df = pd.read_parquet(path)
    require_columns(path, columns, df.columns, fix)
    return df


def iter_column(path: Path, column: str, fix: str = "name the right column", encoding: str = "utf-8") -> Iterator[str]:
    """The values of one column as strings (missing values as ""), streamed row by row.

    Checks the column before the first value where the format allows (csv header, parquet
    schema); .jsonl checks each line, .json reads the whole file. Bad bytes for `encoding` are
    a DataError naming the line, raised when the reader gets there."""
    path = Path(path)
    suffix = suffix_of(path)
    check_encoding(encoding)
    if suffix == ".txt":
        with _decoding(path, encoding):
            return iter([path.read_text(encoding=encoding)])
    if suffix == ".csv":
        return _csv_column(path, column, fix, encoding)
    if suffix == ".parquet":
        return _parquet_column(path, column, fix)
    if suffix == ".json":
        df = read_table(path, [column], fix, encoding)
        return iter(["" if v is None else str(v) for v in df[column].tolist()])
    return _jsonl_column(path, column, fix, encoding)


def _csv_column(path: Path, column: str, fix: str, encoding: str) -> Iterator[str]:
    csv.field_size_limit(sys.maxsize)
    f = path.open(encoding=encoding, newline="")
    reader = csv.DictReader(f)
    try:
        with _decoding(path, encoding):
            require_columns(path, [column], reader.fieldnames or [], fix)
    except DataError:
        f.close()
        raise

    def rows() -> Iterator[str]:
        with f, _decoding(path, encoding):
            for row in reader:
                yield row[column] or ""

    return rows()


def _parquet_column(path: Path, column: str, fix: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    require_columns(path, [column], pf.schema_arrow.names, fix)

    def rows() -> Iterator[str]:
        for batch in pf.iter_batches(columns=[column], batch_size=1024):
            for value in batch.column(0).to_pylist():
                yield value or ""

    return rows()


def _jsonl_column(path: Path, column: str, fix: str, encoding: str) -> Iterator[str]:
    with path.open(encoding=encoding) as f, _decoding(path, encoding):
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no} is not valid JSON ({e}); fix or remove that line") from None
            require_columns(path, [column], obj.keys() if isinstance(obj, dict) else [], fix)
            yield str(obj[column])
