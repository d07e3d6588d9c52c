"""featsep.report on a small fake sweep: files, HTML structure, numbers, matched-L0 maths.

The fake sweep has 3 methods x 3 L0 levels written through featsep.rundir (training and eval
sections, one result file per eval, a training log with penalty stats), with some results left
out on purpose, a corrupt log line, and a run without its training wall time.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from featsep.report import build_report, collect, main_findings  # noqa: E402
from featsep.report.figures import FIGURES  # noqa: E402
from featsep.report.frontier import frontier, interpolate, matched_grid  # noqa: E402
from featsep.rundir import RunDir, TrainingResults, write_eval_result, write_sweep_manifest  # noqa: E402
from tests.report.pages import PageParser  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# method -> (penalty, [(L0, ce_loss_score, explained_variance, absorption, probing top-1)])
METHODS = {
    "topk": (None, [(16, 0.90, 0.60, 0.050, 0.70), (32, 0.94, 0.70, 0.040, 0.72), (64, 0.97, 0.80, 0.030, 0.74)]),
    "topk+momentum": ("momentum", [(20, 0.93, 0.62, 0.020, 0.75), (40, 0.95, 0.71, 0.015, 0.76),
                                   (80, 0.98, 0.82, 0.010, 0.78)]),
    "topk+temporal": ("temporal", [(10, 0.85, 0.50, 0.060, 0.69), (30, 0.92, 0.66, 0.045, 0.71),
                                   (90, 0.985, 0.85, 0.035, 0.73)]),
}
ABSENT_ABSORPTION = "run_8"  # no absorption anywhere, no metrics.jsonl
EVAL_RESULTS_ONLY = "run_7"  # eval result files only: no training section, no final_info sections
NO_WALL_TIME = "run_5"  # a training section without wall_time_s


def _core(l0, ce, ev):
    return {
        "eval_type_id": "core",
        "eval_result_metrics": {
            "model_behavior_preservation": {"kl_div_score": ce - 0.01, "kl_div_with_ablation": 10.0,
                                            "kl_div_with_sae": 0.3},
            "model_performance_preservation": {"ce_loss_score": ce, "ce_loss_with_ablation": 12.0,
                                               "ce_loss_with_sae": 3.5, "ce_loss_without_sae": 3.2},
            "reconstruction_quality": {"explained_variance": ev, "explained_variance_legacy": ev - 0.02,
                                       "mse": 1.5, "cossim": 0.9},
            "sparsity": {"l0": float(l0), "l1": 120.5},
        },
        "eval_result_details": [],
    }


def _absorption(frac):
    return {"eval_type_id": "absorption_first_letter", "eval_result_metrics": {"mean": {
        "mean_absorption_fraction_score": frac, "mean_full_absorption_score": frac / 2,
        "mean_num_split_features": 1.25}}}


def _probing(top1):
    return {"eval_type_id": "sparse_probing", "eval_result_metrics": {
        "llm": {"llm_test_accuracy": 0.95, "llm_top_1_test_accuracy": 0.65, "llm_top_5_test_accuracy": 0.8},
        "sae": {"sae_test_accuracy": 0.93, "sae_top_1_test_accuracy": top1, "sae_top_5_test_accuracy": top1 + 0.1}}}


def _scr(value):
    return {"eval_type_id": "scr", "eval_result_metrics": {"scr_metrics": {
        f"scr_metric_threshold_{n}": value * n / 20 for n in (2, 5, 10, 20, 50)}}}


def _tpp(value):
    return {"eval_type_id": "tpp", "eval_result_metrics": {"tpp_metrics": {
        f"tpp_threshold_{n}_total_metric": value * n / 20 for n in (2, 5, 10, 20, 50)}}}


def _competition(l0):
    return {"eval_type_id": "competition",
            "eval_result_metrics": {"competition": {"mean_competition": 0.5 - l0 / 1000, "share_over_tau": 0.125,
                                                    "stability_corr": 0.75}},
            "eval_result_details": [{"top_pairs": [{"latent_i": i, "latent_j": i + 7, "competition": 0.9 - i / 100}
                                                   for i in range(12)],
                                     "per_latent_competition": [((i * 37) % 100) / 100 for i in range(200)]}]}


def _history(penalty, l0, steps=6):
    rows = []
    for s in range(steps):
        row = {"step": s * 10, "tokens": s * 10 * 4096, "loss": 2.0 / (s + 1), "loss/mse": 1.5 / (s + 1),
               "l0": l0 * 1.0, "fvu": 0.5 / (s + 1), "dead_fraction": 0.01 * s, "lr": 3e-4,
               "tokens_per_s": 50000.0 + 1000 * s, "state_memory_bytes": 300 * 2**20 + s}
        if penalty == "momentum":
            row.update({"loss/momentum": 0.1 * s, "momentum/share_over_tau": 0.05 * s, "momentum/mean": 0.2 + 0.01 * s})
        if penalty == "temporal":
            row.update({"loss/temporal": 0.2, "temporal/tracked_pairs": 1000 * (s + 1),
                        "temporal/memory_bytes": 24000 * (s + 1), "temporal/mean_abs_dev": 0.1 / (s + 1)})
        rows.append(row)
    return rows


def make_fake_sweep(root: Path) -> Path:
    """3 methods x 3 L0 levels, written through featsep.rundir's writers; returns the sweep dir."""
    runs = []
    i = 0
    for method, (penalty, points) in METHODS.items():
        for l0, ce, ev, absorption, top1 in points:
            run = f"run_{i}"
            rd = RunDir(root / run)
            runs.append({"run": run, "label": f"{method} L0~{l0}", "method": "topk", "architecture": "topk",
                         "penalty": penalty, "params": {"k": l0}})
            rd.write_config({"run_config": {"model": {"name": "fake-lm", "hook": "blocks.3.hook_resid_post"},
                                            "sae": {"architecture": "topk", "d_sae": 512, "k": l0},
                                            "train": {"tokens": 20480, "batch_size": 4096}},
                             "penalties": [{"name": penalty, "weight": 0.1}] if penalty else []})
            evals = {"core": _core(l0, ce, ev), "absorption": _absorption(absorption),
                     "sparse_probing": _probing(top1), "scr": _scr(0.1 + i / 100),
                     "unlearning": {"eval_type_id": "unlearning",
                                    "eval_result_metrics": {"unlearning": {"unlearning_score": 0.01 * i}}}}
            if i % 2 == 1:
                evals["tpp"] = _tpp(0.02 * i)
            if penalty == "momentum":
                evals["competition"] = _competition(l0)
            if run == ABSENT_ABSORPTION:
                del evals["absorption"]
            if run == EVAL_RESULTS_ONLY:  # result files without their final_info sections
                for name in ("core", "absorption"):
                    write_eval_result(rd.eval_results_dir, name, evals[name])
            else:
                rd.write_training({"architecture": "topk"}, TrainingResults(
                    training_steps=50, final_loss=0.25 + i / 100, layer=3, dict_size=512, learning_rate=3e-4,
                    architecture="topk", training_tokens=20480,
                    wall_time_s=None if run == NO_WALL_TIME else 100.0 + i))
                for name, result in evals.items():
                    rd.write_eval(name, result, f"{name} evaluation results")
            if run != ABSENT_ABSORPTION:
                for row in _history(penalty, l0):
                    rd.append_metrics(row)
                if run == "run_2":
                    with open(rd.metrics_file, "a") as f:
                        f.write('{"step": 60, "loss": 0.1\n')  # killed mid-write
            i += 1
    write_sweep_manifest(root, {"name": "fake sweep", "runs": runs, "labels": {"run_0": "TopK k=16 (baseline)"}})
    return root


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = make_fake_sweep(tmp_path_factory.mktemp("sweep"))
    page = build_report(root, labels={"run_4": "momentum mid"})
    parser = PageParser()
    parser.feed(page.read_text())
    parser.close()
    return root, page, parser


def test_files_and_pngs(built):
    root, page, _ = built
    out = root / "report"
    assert page == out / "report.html" and (out / "summary.md").is_file()
    expected = {spec.name for spec in FIGURES}
    written = {p.stem for p in (out / "figures").glob("*.png")}
    assert written == expected  # every figure has inputs in the fake sweep
    for png in (out / "figures").glob("*.png"):
        w, h = _png_size(png.read_bytes())
        assert w > 400 and h > 300


def test_failed_build_keeps_the_previous_page_and_no_temp_files(built, monkeypatch, tmp_path):
    import featsep.report.build as build

    import shutil

    root = tmp_path / "sweep"  # a private copy: the shared fixture stays as built
    shutil.copytree(built[0], root, ignore=shutil.ignore_patterns("report"))
    page = build.build_report(root)
    before = page.read_bytes()

    # the page renders but cannot be encoded: the failure comes while writing report.html (a
    # plain open-and-write would already have truncated it)
    render_page = build.render_page
    monkeypatch.setattr(build, "render_page", lambda *a, **k: render_page(*a, **k) + "\udc80")
    with pytest.raises(UnicodeEncodeError):
        build.build_report(root)
    assert page.read_bytes() == before


def test_html_structure(built):
    _, _, parser = built
    assert [d.lower() for d in parser.doctype] == ["doctype html"]
    assert parser.tags["html"] == 1 and parser.tags["head"] == 1 and parser.tags["body"] == 1
    assert parser.stack == []  # everything closed, properly nested
    assert len(parser.imgs) == len(FIGURES)
    for img in parser.imgs:
        assert img["src"].startswith("data:image/png;base64,") and img.get("alt")
        _png_size(base64.b64decode(img["src"].split(",", 1)[1]))
    tables = parser.tables
    assert len(tables["runs"]) == 9
    assert all(len(row) == len(tables["runs"][0]) for row in tables["runs"])
    assert len(tables["all-core"]) == 13  # 3 + 4 + 4 + 2 core metrics in the fake files
    assert len(tables["configs"]) == 9
    # matched table: (CE, EV, absorption, full absorption, top-1, SCR, TPP, unlearning) x 3 L0s
    assert len(tables["matched"]) == 8 * 3
    momentum_details = [k for k in tables if k.startswith("detail-")]
    assert len(momentum_details) == 3 and all(len(tables[k]) == 10 for k in momentum_details)


def test_tables_hold_the_numbers(built):
    _, page, parser = built
    runs = {row[0]: row for row in parser.tables["runs"]}
    assert "TopK k=16 (baseline)" in runs and "momentum mid" in runs  # sweep.json labels, then the argument
    row = runs["momentum mid"]  # run_4: topk+momentum, L0 40
    assert row[1] == "topk+momentum" and row[2] == "40"
    assert "0.95" in row and "0.71" in row and "0.015" in row and "0.76" in row
    core = {r[0]: r[1:] for r in parser.tables["all-core"]}
    assert core["ce_loss_score"][0] == "0.9" and core["explained_variance_legacy"][1] == "0.68"
    scr = {r[0]: r[1:] for r in parser.tables["all-scr"]}
    assert scr["scr_metric_threshold_20"][3] == "0.13"  # run_3, separate layout
    tpp = {r[0]: r[1:] for r in parser.tables["all-tpp"]}
    assert tpp["tpp_threshold_20_total_metric"][0] == "–" and tpp["tpp_threshold_20_total_metric"][1] == "0.02"
    train = {r[0]: r[1:] for r in parser.tables["all-train"]}
    assert train["final_loss"][5] == "0.3" and train["final_l0"][0] == "16"
    cost = {r[0]: r[1:] for r in parser.tables["all-cost"]}
    assert cost["tokens_per_s"][0] == "52500"  # mean of 50000..55000
    summary = (page.parent / "summary.md").read_text()
    assert "| momentum mid | topk+momentum | 40 |" in summary and "figures/frontier.png" in summary


def test_matched_l0_interpolation_by_hand(built):
    root, _, parser = built
    records = collect(root).records
    grid = matched_grid(records)
    # shared L0 range: max of minima (topk 16, momentum 20, temporal 10) .. min of maxima (64, 80, 90)
    assert grid.all_overlap and grid.l0s == pytest.approx([20.0, math.sqrt(20 * 64), 64.0])
    mid = math.sqrt(20 * 64)
    # topk CE at L0 35.78: between (32, 0.94) and (64, 0.97), linear in log L0
    t = math.log(mid / 32) / math.log(64 / 32)
    assert interpolate(frontier(records, "topk", "core.ce_loss_score"), mid) == pytest.approx(0.94 + t * 0.03)
    # temporal CE at 20: between (10, 0.85) and (30, 0.92)
    t = math.log(20 / 10) / math.log(30 / 10)
    expected = 0.85 + t * 0.07
    assert interpolate(frontier(records, "topk+temporal", "core.ce_loss_score"), 20) == pytest.approx(expected)
    row = next(r for r in parser.tables["matched"] if r[0] == "CE loss score" and r[1] == "20")
    assert row[4] == f"{expected:.6g}" and row[3] == "0.93"  # momentum's own run at L0 20
    assert interpolate(frontier(records, "topk", "core.ce_loss_score"), 100) is None  # no extrapolation


def test_findings(built):
    root, _, _ = built
    findings = main_findings(collect(root).records)
    text = "\n".join(findings)
    assert "topk+momentum has the lowest mean absorption at every matched L0" in text
    assert "do not overlap" not in text


def test_findings_say_when_l0_ranges_do_not_overlap(built):
    root, _, _ = built
    records = [r for r in collect(root).records if r.method != "topk+temporal"]
    for r in records:
        if r.method == "topk":
            r.metrics["core.l0"] /= 10  # topk: 1.6-6.4, momentum: 20-80
    findings = main_findings(records)
    assert any("do not overlap for topk (1.6-6.4) and topk+momentum (20-80)" in f for f in findings)
    assert not any("has the" in f for f in findings)


def test_missing_sections_are_noted(built):
    root, page, parser = built
    text = " ".join(parser.text)
    assert "(run_8): no Feature absorption, TPP results" in text  # run_8 (even) has SCR but no TPP
    assert "(run_8): no training log (metrics.jsonl)" in text
    assert "metrics.jsonl: 1 unreadable line(s) skipped" in text
    rec7 = next(r for r in collect(root).records if r.run == EVAL_RESULTS_ONLY)
    assert rec7.metrics["core.l0"] == 30 and "absorption" in rec7.sections  # from eval_results/


def test_wall_time_is_the_training_field_and_missing_stays_missing(built):
    """cost.wall_time_s is the training section's wall_time_s, never estimated from the log: a
    run whose section lacks it (run_5) or that has no section (run_7) shows it as missing."""
    root, _, parser = built
    records = {r.run: r for r in collect(root).records}
    assert records["run_0"].metrics["cost.wall_time_s"] == 100.0 and records["run_4"].metrics["cost.wall_time_s"] == 104.0
    assert "cost.wall_time_s" not in records[NO_WALL_TIME].metrics and records[NO_WALL_TIME].history
    assert "cost.wall_time_s" not in records[EVAL_RESULTS_ONLY].metrics
    cost = {r[0]: r[1:] for r in parser.tables["all-cost"]}
    assert cost["wall_time_s"][0] == "100" and cost["wall_time_s"][5] == "–" and cost["wall_time_s"][7] == "–"
    assert cost["state_memory_bytes"][0] == str(300 * 2**20 + 5) and cost["state_memory_bytes"][8] == "–"  # no log


def test_absent_inputs_skip_figures_with_a_note(tmp_path):
    run = tmp_path / "lonely_run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 0, "tokens": 0, "loss": 1.0, "l0": 5}) + "\n")
    page = build_report(run, out_dir=tmp_path / "out", title="one run")
    html = page.read_text()
    assert "skipped: no run has core eval results" in html
    assert "Only one method" in html
    assert (tmp_path / "out" / "figures" / "training_curves.png").is_file()
    assert not (tmp_path / "out" / "figures" / "frontier.png").exists()
    with pytest.raises(FileNotFoundError):
        build_report(tmp_path / "nope")


def test_a_dir_without_runs_is_refused_and_nothing_is_written(tmp_path):
    """An empty report would read as a result: a dir holding no run is an error, and neither
    PATH/report nor out_dir appears."""
    empty = tmp_path / "empty"
    (empty / "notes").mkdir(parents=True)
    with pytest.raises(ValueError, match=f"^{empty} holds no run \\(no run dir with final_info.json or metrics.jsonl\\)"):
        build_report(empty, out_dir=tmp_path / "out")
    with pytest.raises(ValueError, match="holds no run"):
        build_report(empty)
    assert sorted(p.name for p in empty.rglob("*")) == ["notes"] and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- what a reviewer must see

TOO_FEW = ("too few letters: 3 have probe F1 > 0.6, 20 required; SAEBench would write no result, "
           "these means are over the qualifying letters only")
DATASETS = ["bbc-news", "ag_news"]


def make_trust_sweep(root: Path, absorption: bool = True) -> Path:
    """2 methods x L0 16/64 through featsep.rundir and eval_output: CE scores 0.003-0.005 apart,
    one run's absorption short of letters, one absorption NaN, an SAEBench explained variance > 1."""
    from featsep.evals.schema import eval_output

    runs = []
    # run -> (method, L0, CE, explained_variance_saebench, absorption or None, absorption status)
    spec = {"a16": ("A", 16, 0.900, 0.95, 0.10, TOO_FEW), "a64": ("A", 64, 0.950, 1.02, 0.08, "ok"),
            "b16": ("B", 16, 0.905, 0.96, 0.20, "ok"), "b64": ("B", 64, 0.953, 0.99, float("nan"), "ok")}
    for run, (method, l0, ce, ev_sb, absorption_value, status) in spec.items():
        rd = RunDir(root / run)
        rd.write_eval("core", eval_output("core", {}, {
            "sparsity": {"l0": float(l0)}, "model_performance_preservation": {"ce_loss_score": ce},
            "reconstruction_quality": {"explained_variance": ce - 0.2, "explained_variance_saebench": ev_sb}},
            [], {}, run, {}), "core evaluation results")
        if absorption:
            rd.write_eval("absorption", eval_output("absorption_first_letter", {}, {"mean": {
                "mean_absorption_fraction_score": absorption_value, "mean_full_absorption_score": 0.05}},
                [], {"status": status, "enough_letters": status == "ok"}, run, {}), "absorption evaluation results")
        rd.write_eval("sparse_probing", eval_output("sparse_probing", {"datasets": DATASETS}, {
            "llm": {"llm_test_accuracy": 0.9}, "sae": {"sae_top_1_test_accuracy": 0.7 + l0 / 1000}},
            [], {}, run, {}), "sparse probing evaluation results")
        runs.append({"run": run, "method": method})
    write_sweep_manifest(root, {"name": "trust", "runs": runs})
    return root


@pytest.fixture(scope="module")
def trust(tmp_path_factory):
    root = make_trust_sweep(tmp_path_factory.mktemp("trust"))
    page = build_report(root)
    parser = PageParser()
    parser.feed(page.read_text())
    parser.close()
    from html import unescape

    return root, unescape(page.read_text()), (page.parent / "summary.md").read_text(), parser


def test_absorption_status_travels_with_every_absorption_value(trust):
    _, html, summary, parser = trust
    for text in (html, summary):
        assert TOO_FEW in text
    runs = {row[0]: row for row in parser.tables["runs"]}
    assert "0.1 (too few letters)" in runs["A L0=16"]
    assert "0.08" in runs["A L0=64"] and "too few letters" not in " ".join(runs["A L0=64"])
    assert parser.tables["all-absorption"][0][1:] == ["0.1 (too few letters)", "0.08", "0.2", "–"]
    # matched values carry the status of the runs they are interpolated from: A's at L0 16 and 32
    # lean on a16, A's at 64 is a64's alone
    matched = {(row[0], row[1]): row for row in parser.tables["matched"]}
    assert matched[("mean absorption", "16")][2] == "0.1 (too few letters)"
    assert matched[("mean absorption", "32")][2].endswith("(too few letters)")
    assert matched[("mean absorption", "64")][2] == "0.08"
    assert any(f"Caveat on mean absorption: A L0=16: Feature absorption status: {TOO_FEW}." in f
               for f in main_findings(collect(trust[0]).records))
    assert "| 0.1 (too few letters) |" in summary


def test_no_winner_within_noise(trust):
    root, html, summary, parser = trust
    matched = {(row[0], row[1]): row for row in parser.tables["matched"]}
    assert matched[("CE loss score", "16")][-1] == "within noise (gap 0.005 < 0.01)"
    assert matched[("CE loss score", "64")][-1] == "within noise (gap 0.003 < 0.01)"
    assert matched[("mean absorption", "16")][-1] == "A"  # 0.1 vs 0.2: a real gap
    findings = main_findings(collect(root).records)
    ce = next(f for f in findings if f.startswith("CE loss score"))
    assert ce == ("CE loss score: no method is highest at matched L0; the best two are within noise at every "
                  "matched L0 (gap 0.003-0.005 < 0.01).")
    assert "within noise" in summary and "has the highest CE loss score" not in html


def test_verdict_names_a_winner_only_from_min_gap_up():
    from featsep.report.metrics import verdict

    assert verdict("core.ce_loss_score", {"A": 0.95, "B": 0.94}).best == "A"  # gap 0.01 = min_gap
    v = verdict("core.ce_loss_score", {"A": 0.95, "B": 0.9401, "C": 0.5})
    assert v.best is None and v.leader == "A" and v.text == "within noise (gap 0.0099 < 0.01)"
    assert verdict("absorption.mean_absorption_fraction_score", {"A": 0.2, "B": 0.1}).best == "B"  # lower is better
    assert verdict("cost.tokens_per_s", {"A": 1000.0, "B": 960.0}).best is None  # 4% < 5% of the best
    assert verdict("core.ce_loss_score", {"A": 0.9}) is None and verdict("core.l0", {"A": 1, "B": 2}) is None


def test_saebench_explained_variance_above_one_is_marked(trust):
    _, html, summary, parser = trust
    core = {row[0]: row[1:] for row in parser.tables["all-core"]}
    assert core["explained_variance_saebench"] == ["0.95", "1.02 (> 1: SAEBench convention)", "0.96", "0.99"]
    for text in (html, summary):
        assert "SAEBench 8042bb38's formula (SAELens issue #659), which can exceed 1" in text


def test_probing_datasets_are_named(trust):
    _, html, summary, _ = trust
    for text in (html, summary):
        assert text.count("Sparse probing datasets: bbc-news, ag_news.") >= 3  # runs, matched, all-metrics
    caption = html.split('id="fig-probing_vs_l0"', 1)[1].split("</figcaption>", 1)[0]
    assert "Sparse probing datasets: bbc-news, ag_news." in caption


def test_marker_legend(trust):
    from featsep.report.figures import FIGURES, Style

    root, html, summary, _ = trust
    legend = "Markers (colour = method, shape = run): A: circle = A L0=16, square = A L0=64; B: circle = B L0=16"
    for text in (html, summary):
        assert legend in text
    records = collect(root).records
    spec = next(s for s in FIGURES if s.name == "frontier")
    fig = spec.draw(records, Style.for_records(records))
    titles = {lg.get_title().get_text(): [t.get_text() for t in lg.get_texts()] for lg in fig.legends}
    assert titles["method"] == ["A", "B"] and titles["marker: run"] == ["A L0=16", "A L0=64", "B L0=16", "B L0=64"]


def test_missing_values_are_a_dash_in_every_cell(trust, built):
    """No table cell of either page reads NaN, nan or -1 (SAEBench's NaN); missing is '–'."""
    import re

    number = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
    for _, _, _, parser in (trust, (None, None, None, built[2])):
        for name, rows in parser.tables.items():
            for row in rows:
                for cell in row[1:]:
                    assert "nan" not in cell.lower(), (name, row)
                    assert all(float(t) != -1 for t in number.findall(cell)), (name, row)
    summary = trust[2]
    for line in summary.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")][1:]
            assert not any("nan" in c.lower() or c in ("-1", "-1.0") for c in cells), line


def test_per_run_figure_has_no_empty_absorption_panel(tmp_path):
    from featsep.report.figures import FIGURES, Style

    root = make_trust_sweep(tmp_path / "sweep", absorption=False)
    records = collect(root).records
    spec = next(s for s in FIGURES if s.name == "run_bars")
    fig = spec.draw(records, Style.for_records(records))
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["Reconstruction", "Sparsity", "Sparse probing"]
    html = build_report(root).read_text()
    caption = html.split('id="fig-run_bars"', 1)[1].split("</figcaption>", 1)[0]
    assert "Absorption panel omitted: no run has feature absorption results." in caption
    assert "no data" not in html


def _browser_check(report_html: Path, n_images: int, tmp_path: Path) -> Path:
    """Every <img> of the page decodes in a real browser (naturalWidth > 0) and no rendered text
    reads NaN or -1; returns a screenshot of it."""
    import re
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    probe = ("<script>window.addEventListener('load', () => { const bad = [...document.images]"
             ".filter(i => !(i.complete && i.naturalWidth > 0)).length;"
             " document.body.setAttribute('data-images', document.images.length + ':' + bad); });</script>")
    page = tmp_path / "probe.html"
    page.write_text(report_html.read_text().replace("</body>", probe + "</body>"))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000"]
    dom = subprocess.run(flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    found = re.search(r'data-images="(\d+):(\d+)"', dom)
    assert found is not None, "the probe script did not run"
    assert int(found.group(1)) == n_images > 0 and found.group(2) == "0"
    parser = PageParser()
    parser.feed(dom.replace(probe, ""))
    text = " ".join(parser.text)
    assert not re.search(r"\bnan\b", text, re.IGNORECASE) and not re.search(r"(?<![\w.-])-1(\.0+)?\b", text)
    shot = tmp_path / "report.png"
    subprocess.run(flags + ["--window-size=1400,3000", f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120, check=True)
    assert shot.read_bytes()[:8] == PNG_SIGNATURE
    return shot


@pytest.mark.slow
def test_page_renders_in_headless_chromium(trust, tmp_path):
    """The hand-made sweep's page, in a real browser; a screenshot is left in tmp_path."""
    _browser_check(trust[0] / "report" / "report.html", len(trust[3].imgs), tmp_path)


@pytest.mark.slow
def test_the_offline_seed_study_report_renders_in_headless_chromium(tmp_path):
    """The real 2-seed study's page (`featsep sweep examples/seeds-study-offline.toml`, which
    writes runs/seeds-study-offline), checked the same way; skipped until that study has run."""
    report = Path(__file__).resolve().parents[2] / "runs" / "seeds-study-offline" / "report" / "report.html"
    if not report.is_file():
        pytest.skip("run `featsep sweep examples/seeds-study-offline.toml` first (about 10 minutes on 2 cores)")
    parser = PageParser()
    parser.feed(report.read_text())
    _browser_check(report, len(parser.imgs), tmp_path)
