"""SAEBench's eight sparse-probing datasets, loaded from fake hub data in the hub's real shape.

`featsep.data.hub.load_dataset` (featsep's only call of `datasets.load_dataset`) is replaced by a fake
that serves small `datasets.Dataset`s with the hub's column names and features (int64 ids,
ClassLabel, Translation, streamed rows), so the loaders run their hub code paths offline.
The expected values follow SAEBench's dataset_utils.py (sae-bench 0.6.0), see featsep/data/probing.py.
"""

from __future__ import annotations

import random

import pytest

pd = pytest.importorskip("pandas")
datasets = pytest.importorskip("datasets")

import featsep.data.hub as hub_data  # noqa: E402
from featsep.data import probing as pdata  # noqa: E402
from featsep.data.probing import load_probing_dataset  # noqa: E402

V = datasets.Value


class FakeHub:
    """Stands in for datasets.load_dataset: {(path, config name, split): Dataset}; records its calls."""

    def __init__(self, tables, script_repos=()):
        self.tables, self.script_repos, self.calls = tables, set(script_repos), []

    def __call__(self, path, section, **kw):
        assert section == "sparse_probing"  # hub errors name the asking eval's settings
        self.calls.append((path, kw))
        if path in self.script_repos:  # what datasets>=4 says for a hub repo with a loading script
            raise RuntimeError("Dataset scripts are no longer supported, but found x.py")
        if path == "parquet":  # the fallback: the repo's parquet files
            path = kw["data_files"]
        ds = self.tables[(path, kw.get("name"), kw.get("split"))]
        return ds.to_iterable_dataset() if kw.get("streaming") else ds


def _hub(monkeypatch, tables, **kw) -> FakeHub:
    fake = FakeHub(tables, **kw)
    monkeypatch.setattr(hub_data, "load_dataset", fake)
    return fake


# ---- bias_in_bios --------------------------------------------------------------------------------

BIOS_FEATURES = datasets.Features({"hard_text": V("string"), "profession": V("int64"), "gender": V("int64")})


def _bios_split(split, per_quadrant, professions=range(28)):
    rows = [{"hard_text": f"{split} p{p} g{g} #{i}", "profession": p, "gender": g}
            for p in professions for g in (0, 1) for i in range(per_quadrant)]
    return datasets.Dataset.from_list(rows, features=BIOS_FEATURES)


def _bios_tables(per_quadrant=8):
    return {("LabHC/bias_in_bios", None, s): _bios_split(s, per_quadrant) for s in ("train", "test")}


@pytest.mark.parametrize("class_set, classes", [
    ("class_set1", ["0", "1", "2", "6", "9"]),
    ("class_set2", ["11", "13", "14", "18", "19"]),
    ("class_set3", ["20", "21", "22", "25", "26"]),
])
def test_bios_classes_gender_balance_and_hub_splits(monkeypatch, class_set, classes):
    hub = _hub(monkeypatch, _bios_tables())
    ds = load_probing_dataset(f"LabHC/bias_in_bios_{class_set}", n_train=6, n_test=4, seed=42)
    assert ds.classes == classes
    assert {(c[0], c[1]["split"]) for c in hub.calls} == {("LabHC/bias_in_bios", "train"), ("LabHC/bias_in_bios", "test")}
    for cls in classes:
        for split, texts, n in (("train", ds.train[cls], 6), ("test", ds.test[cls], 4)):
            assert len(texts) == n
            assert all(t.startswith(f"{split} p{cls} ") for t in texts)  # right profession, the hub's split
            assert sum(" g1 " in t for t in texts) == n // 2  # gender balanced


def test_bios_draw_is_saebench_pandas_sample_per_gender(monkeypatch):
    tables = _bios_tables(per_quadrant=10)
    _hub(monkeypatch, tables)
    ds = load_probing_dataset("LabHC/bias_in_bios_class_set1", n_train=6, n_test=2, seed=42)
    df = tables[("LabHC/bias_in_bios", None, "train")].to_pandas()
    want = []
    for g in (0, 1):  # SAEBench: per gender group .sample(n=T//4, random_state=seed), gender 0 first
        want += df[(df.profession == 9) & (df.gender == g)]["hard_text"].sample(n=3, random_state=42).tolist()
    assert ds.train["9"] == want
    other = load_probing_dataset("LabHC/bias_in_bios_class_set1", n_train=6, n_test=2, seed=0)
    assert other.train["9"] != want


def test_bios_short_gender_group_keeps_balance(monkeypatch):
    rows = [{"hard_text": f"t p{p} g{g} #{i}", "profession": p, "gender": g}
            for p in (0, 1, 2, 6, 9) for g in (0, 1) for i in range(5 if g == 0 else 2)]
    table = datasets.Dataset.from_list(rows, features=BIOS_FEATURES)
    _hub(monkeypatch, {("LabHC/bias_in_bios", None, s): table for s in ("train", "test")})
    ds = load_probing_dataset("LabHC/bias_in_bios_class_set1", n_train=8, n_test=2, seed=1)
    assert all(len(ds.train[c]) == 4 and sum(" g1 " in t for t in ds.train[c]) == 2 for c in ds.classes)


# ---- amazon reviews ------------------------------------------------------------------------------

AMAZON_FEATURES = datasets.Features({"text": V("string"), "category": V("int64"), "rating": V("float64")})


def _amazon_tables(per_cell=6, categories=(0, 1, 2, 3, 4, 5, 6, 24, 30)):
    def split(s):
        rows = [{"text": f"{s} c{c} r{int(r)} #{i}", "category": c, "rating": r}
                for c in categories for r in (1.0, 5.0) for i in range(per_cell)]
        return datasets.Dataset.from_list(rows, features=AMAZON_FEATURES)

    return {("canrager/amazon_reviews_mcauley_1and5", None, s): split(s) for s in ("train", "test")}


def test_amazon_integer_categories_rating_balance_and_hub_splits(monkeypatch):
    hub = _hub(monkeypatch, _amazon_tables())
    ds = load_probing_dataset("canrager/amazon_reviews_mcauley_1and5", n_train=4, n_test=2, seed=42)
    # "1","2","3","5","6" are the hub's integer ids: Toys, Cell phones, Industrial, Musical instr., Electronics
    assert ds.classes == ["1", "2", "3", "5", "6"]
    assert [pdata.AMAZON_CATEGORIES[int(c)] for c in ds.classes] == [
        "Toys_and_Games", "Cell_Phones_and_Accessories", "Industrial_and_Scientific", "Musical_Instruments", "Electronics"]
    assert sorted(c[1]["split"] for c in hub.calls) == ["test", "train"]  # the hub's own splits, no re-split
    for cls in ds.classes:
        for split, texts, n in (("train", ds.train[cls], 4), ("test", ds.test[cls], 2)):
            assert len(texts) == n and all(t.startswith(f"{split} c{cls} ") for t in texts)
            assert sum(" r5 " in t for t in texts) == n // 2


def test_amazon_category_names_in_a_local_copy_map_to_ids(tmp_path):
    rows = [{"text": f"{s} {name} r{int(r)} #{i}", "category": name, "rating": r, "split": s}
            for s in ("train", "test") for name in pdata.AMAZON_CATEGORIES[:8] for r in (1.0, 5.0) for i in range(3)]
    path = tmp_path / "amazon.parquet"
    pd.DataFrame(rows).to_parquet(path)
    ds = load_probing_dataset("canrager/amazon_reviews_mcauley_1and5", 2, 2, seed=0,
                              local_copies={"canrager/amazon_reviews_mcauley_1and5": str(path)})
    assert ds.classes == ["1", "2", "3", "5", "6"]
    assert all(t.startswith("train Toys_and_Games ") for t in ds.train["1"])
    assert all(t.startswith("test Electronics ") for t in ds.test["6"])  # `split` column honoured


def test_amazon_ids_of_names_digits_and_junk():
    col = pd.Series(["Books", "6", "no such category", None])
    got = pdata.amazon_category_ids(col)
    assert got.tolist()[:2] == [24.0, 6.0] and got.isna().tolist()[2:] == [True, True]


def test_amazon_sentiment_classes_are_float_ratings(monkeypatch):
    _hub(monkeypatch, _amazon_tables())
    ds = load_probing_dataset("canrager/amazon_reviews_mcauley_1and5_sentiment", n_train=5, n_test=3, seed=42)
    assert ds.classes == ["1.0", "5.0"]
    for cls, tag in (("1.0", " r1 "), ("5.0", " r5 ")):
        assert len(ds.train[cls]) == 5 and all(t.startswith("train") and tag in t for t in ds.train[cls])
        assert len(ds.test[cls]) == 3 and all(t.startswith("test") and tag in t for t in ds.test[cls])


def test_single_file_without_split_column_gives_disjoint_splits(tmp_path):
    rows = [{"text": f"c{c} r{int(r)} #{i}", "category": c, "rating": r}
            for c in (1, 2, 3, 5, 6) for r in (1.0, 5.0) for i in range(4)]
    path = tmp_path / "amazon.jsonl"
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    ds = load_probing_dataset("canrager/amazon_reviews_mcauley_1and5", 4, 4, seed=3,
                              local_copies={"canrager/amazon_reviews_mcauley_1and5": str(path)})
    for cls in ds.classes:
        assert len(ds.train[cls]) == 4 and len(ds.test[cls]) == 4 and not set(ds.train[cls]) & set(ds.test[cls])


# ---- ag_news -------------------------------------------------------------------------------------

def test_ag_news_classlabel_ints(monkeypatch):
    features = datasets.Features({"text": V("string"),
                                  "label": datasets.ClassLabel(names=["World", "Sports", "Business", "Sci/Tech"])})
    tables = {("fancyzhx/ag_news", None, s): datasets.Dataset.from_list(
        [{"text": f"{s} l{c} #{i}", "label": c} for c in range(4) for i in range(7)], features=features)
        for s in ("train", "test")}
    _hub(monkeypatch, tables)
    ds = load_probing_dataset("fancyzhx/ag_news", n_train=5, n_test=3, seed=42)
    assert ds.classes == ["0", "1", "2", "3"]
    df = tables[("fancyzhx/ag_news", None, "train")].to_pandas()
    assert ds.train["2"] == df[df.label == 2]["text"].sample(n=5, random_state=42).tolist()  # SAEBench's draw
    assert all(len(ds.test[c]) == 3 and all(t.startswith(f"test l{c} ") for t in ds.test[c]) for c in ds.classes)


# ---- github-code ---------------------------------------------------------------------------------

GITHUB_FEATURES = datasets.Features(
    {**{k: V("string") for k in ("code", "repo_name", "path", "language", "license")}, "size": V("int64")})


def _code(lang, i, length):
    head = f"{lang}#{i}|".ljust(pdata.CODE_SKIP_CHARS, "h")  # the licence header SAEBench cuts
    return head + f"{lang} body {i} ".ljust(length - len(head), "x")


def _github_table(n_per_lang=12):
    rows = []
    for i in range(n_per_lang):
        for lang in ("C", "Python", "HTML", "Java", "PHP", "JavaScript"):
            length = 534 if i % 3 == 0 else 535 + i  # 534 chars is not "longer than 534": dropped
            rows.append({"code": _code(lang, i, length), "repo_name": "r", "path": f"f{i}", "language": lang,
                         "license": "mit", "size": length})
    return datasets.Dataset.from_list(rows, features=GITHUB_FEATURES)


def test_github_length_filter_header_cut_and_saebench_shuffle(monkeypatch):
    table = _github_table()
    hub = _hub(monkeypatch, {("hf://datasets/codeparrot/github-code/data/train-*.parquet", None, "train"): table},
               script_repos={"codeparrot/github-code"})
    monkeypatch.setattr(hub_data, "datasets_major", lambda: 4)
    ds = load_probing_dataset("codeparrot/github-code", n_train=3, n_test=2, seed=42)
    assert ds.classes == ["C", "Python", "HTML", "Java", "PHP"]
    assert hub.calls[-1][0] == "parquet" and hub.calls[-1][1]["streaming"] is True
    rows = list(table.to_iterable_dataset())
    pools = {c: [r["code"][150:] for r in rows if r["language"] == c and len(r["code"]) > 534] for c in ds.classes}
    # stream stops once every language has more than n_train + n_test = 5 files (6 each here)
    pools = {c: p[:6] for c, p in pools.items()}
    random.seed(42)  # SAEBench: one random.seed, then per language in class order shuffle and slice
    for c in ds.classes:
        random.shuffle(pools[c])
        assert ds.train[c] == pools[c][:3] and ds.test[c] == pools[c][3:5]
        assert all(t.startswith(f"{c} body ") and len(t) > 534 - 150 for t in ds.train[c] + ds.test[c])


def test_github_uses_the_loading_script_before_datasets_4(monkeypatch):
    table = _github_table()
    hub = _hub(monkeypatch, {("codeparrot/github-code", None, "train"): table})
    monkeypatch.setattr(hub_data, "datasets_major", lambda: 3)
    load_probing_dataset("codeparrot/github-code", n_train=2, n_test=1, seed=0)
    path, kw = hub.calls[0]
    assert path == "codeparrot/github-code" and kw["streaming"] and kw["trust_remote_code"]
    assert kw["languages"] == ["C", "Python", "HTML", "Java", "PHP"]


def test_github_collection_stops_when_every_language_has_enough():
    consumed = []

    def rows():
        for i in range(100):
            consumed.append(i)
            yield {"language": ("C", "PHP")[i % 2], "code": "y" * 600}

    pools = pdata.github_code_pools(rows(), ["C", "PHP"], need=3)
    assert [len(p) for p in pools.values()] == [4, 4] and len(consumed) == 8
    assert pools["C"][0] == "y" * 450


# ---- europarl ------------------------------------------------------------------------------------

def _pair_table(pair, n=20):
    a, b = pair.split("-")
    features = datasets.Features({"translation": datasets.Translation(languages=[a, b])})
    return datasets.Dataset.from_list(
        [{"translation": {a: f"{a} from {pair} #{i}", b: f"{b} from {pair} #{i}"}} for i in range(n)], features=features)


def test_europarl_takes_each_language_from_saebench_pair(monkeypatch):
    pairs = ["en-fr", "fr-it", "de-en", "es-fr", "nl-pt", "en-es", "en-nl", "de-fr"]  # the last three: decoys
    hub = _hub(monkeypatch, {("Helsinki-NLP/europarl", p, "train"): _pair_table(p) for p in pairs})
    ds = load_probing_dataset("Helsinki-NLP/europarl", n_train=4, n_test=3, seed=42)
    assert ds.classes == ["en", "fr", "de", "es", "nl"]
    asked = [kw["name"] for _, kw in hub.calls]
    assert asked == ["en-fr", "fr-it", "de-en", "es-fr", "nl-pt"] and all(kw["streaming"] for _, kw in hub.calls)
    want_pair = {"en": "en-fr", "fr": "fr-it", "de": "de-en", "es": "es-fr", "nl": "nl-pt"}
    random.seed(42)
    for lang in ds.classes:
        first = [f"{lang} from {want_pair[lang]} #{i}" for i in range(8)]  # the first n_train + n_test + 1 rows
        random.shuffle(first)
        assert ds.train[lang] == first[:4] and ds.test[lang] == first[4:7]


def test_europarl_falls_back_to_parquet_files_under_datasets_4(monkeypatch):
    tables = {(f"hf://datasets/Helsinki-NLP/europarl/{p}/*.parquet", None, "train"): _pair_table(p)
              for p in pdata.EUROPARL_PAIRS.values()}
    hub = _hub(monkeypatch, tables, script_repos={"Helsinki-NLP/europarl"})
    ds = load_probing_dataset("Helsinki-NLP/europarl", n_train=2, n_test=2, seed=0)
    assert all(t.startswith("nl from nl-pt") for t in ds.train["nl"] + ds.test["nl"])
    assert sum(path == "parquet" for path, _ in hub.calls) == 5


def test_europarl_local_copies_folder_and_single_file(tmp_path):
    folder = tmp_path / "europarl"
    folder.mkdir()
    frames = {p: _pair_table(p, n=6).to_pandas() for p in ["en-fr", "fr-it", "de-en", "es-fr", "nl-pt", "en-de"]}
    for p, df in frames.items():
        df.to_json(folder / f"{p}.jsonl", orient="records", lines=True)
    ds = load_probing_dataset("Helsinki-NLP/europarl", 3, 2, seed=1, local_copies={"Helsinki-NLP/europarl": str(folder)})
    assert all(t.startswith("de from de-en") for t in ds.train["de"] + ds.test["de"])
    single = tmp_path / "europarl.parquet"
    pd.concat(list(frames.values()), ignore_index=True).to_parquet(single)
    ds = load_probing_dataset("Helsinki-NLP/europarl", 3, 2, seed=1, local_copies={"Helsinki-NLP/europarl": str(single)})
    assert all(t.startswith("en from en-fr") for t in ds.train["en"] + ds.test["en"])
    assert all(t.startswith("fr from fr-it") for t in ds.train["fr"] + ds.test["fr"])
    assert [len(ds.train[c]) + len(ds.test[c]) for c in ds.classes] == [5] * 5


def test_local_files_and_their_errors(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("text,label\n" + "".join(f"t{i} words here,{'ab'[i % 2]}\n" for i in range(20)))
    ds = load_probing_dataset(str(csv), n_train=6, n_test=3, seed=0)
    assert ds.classes == ["a", "b"] and all(len(ds.train[c]) == 6 and len(ds.test[c]) == 3 for c in ds.classes)
    assert not set(ds.train["a"]) & set(ds.test["a"])
    with pytest.raises(ValueError, match="no column\\(s\\) 'category'"):
        load_probing_dataset(str(csv), 6, 3, label_column="category")
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no rows|empty"):
        load_probing_dataset(str(empty), 6, 3)
    with pytest.raises(ValueError, match="unknown probing dataset"):
        load_probing_dataset("no-such-dataset", 6, 3)


def test_saebench_hub_loaders_read_local_copies(tmp_path):
    import pandas as pd

    rows = [{"hard_text": f"bio {p} {g} {i}", "profession": p, "gender": g}
            for p in (0, 1, 2, 6, 9, 13) for g in (0, 1) for i in range(6)]
    pd.DataFrame(rows).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame(rows).to_parquet(tmp_path / "test.parquet")
    ds = load_probing_dataset("LabHC/bias_in_bios_class_set1", n_train=4, n_test=2, seed=0,
                              local_copies={"LabHC/bias_in_bios": str(tmp_path)})
    assert ds.classes == ["0", "1", "2", "6", "9"]  # SAEBench's class set 1
    for cls in ds.classes:
        genders = [int(t.split()[2]) for t in ds.train[cls]]
        assert len(genders) == 4 and sum(genders) == 2  # balanced by gender
    news = tmp_path / "news"
    news.mkdir()
    for split in ("train", "test"):
        pd.DataFrame([{"text": f"news {c} {i}", "label": c} for c in range(4) for i in range(5)]).to_json(
            news / f"{split}.jsonl", orient="records", lines=True)
    ds = load_probing_dataset("fancyzhx/ag_news", 3, 2, local_copies={"fancyzhx/ag_news": str(news)})
    assert ds.classes == ["0", "1", "2", "3"] and len(ds.test["3"]) == 2


def test_man_page_markup_is_stripped():
    from featsep.data.probing import man_to_text

    src = '.TH LS 1\n.SH NAME\nls \\- list\n.B bold words\n\\fBfett\\fR und \\(aqquote\\(aq\n.\\" comment\n'
    assert man_to_text(src) == "NAME ls list bold words fett und quote"
