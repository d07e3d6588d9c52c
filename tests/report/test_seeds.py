"""A seeded sweep's report: a grid point's seeds read as mean ± spread, and no winner within noise."""

from __future__ import annotations

import math
from html import unescape

import pytest

pytest.importorskip("matplotlib")

from featsep.report import build_report, collect, main_findings  # noqa: E402
from featsep.report.metrics import verdict  # noqa: E402
from featsep.report.seeds import group_seeds, sample_std  # noqa: E402
from featsep.rundir import RunDir, write_sweep_manifest  # noqa: E402
from tests.report.pages import PageParser  # noqa: E402

# point -> (method, L0, CE score of seed 1, of seed 2)
POINTS = {"A (k=16)": ("A", 16, 0.90, 0.94), "A (k=64)": ("A", 64, 0.95, 0.952),
          "B (k=16)": ("B", 16, 0.935, 0.945), "B (k=64)": ("B", 64, 0.90, 0.902)}


def make_seeded_sweep(root, seeds=(1, 2)):
    """2 methods x 2 L0s x `seeds`, as a seeded `featsep sweep` names and records them."""
    from featsep.evals.schema import eval_output

    runs = []
    for point, (method, l0, *ces) in POINTS.items():
        for seed, ce in zip(seeds, ces):
            run = f"run_{len(runs)}"
            RunDir(root / run).write_eval("core", eval_output("core", {}, {
                "sparsity": {"l0": float(l0)}, "model_performance_preservation": {"ce_loss_score": ce}},
                [], {}, run, {}), "core evaluation results")
            runs.append({"run": run, "method": method, "label": point[:-1] + f", seed={seed})", "seed": seed,
                         "point": point, "params": {"sae.k": l0}})
    write_sweep_manifest(root, {"name": "seeded", "runs": runs})
    return root


def test_group_seeds_means_and_sample_std(tmp_path):
    records = collect(make_seeded_sweep(tmp_path)).records
    assert [(r.run, r.seed, r.point) for r in records[:2]] == [("run_0", 1, "A (k=16)"), ("run_1", 2, "A (k=16)")]
    points = group_seeds(records)
    assert [(p.label, p.method, p.run, p.seeds) for p in points] == [
        ("A (k=16)", "A", "run_0+run_1", [1, 2]), ("A (k=64)", "A", "run_2+run_3", [1, 2]),
        ("B (k=16)", "B", "run_4+run_5", [1, 2]), ("B (k=64)", "B", "run_6+run_7", [1, 2])]
    a16 = points[0]
    assert a16.metrics["core.ce_loss_score"] == pytest.approx(0.92)
    assert a16.spreads["core.ce_loss_score"] == pytest.approx(math.sqrt(2 * 0.02 ** 2))  # sample std, n - 1
    assert a16.l0 == 16 and a16.spreads["core.l0"] == 0
    assert sample_std([1.0, 2.0, 3.0]) == pytest.approx(1.0)


def test_one_seed_per_point_keeps_each_run(tmp_path):
    records = collect(make_seeded_sweep(tmp_path, seeds=(5,))).records
    assert group_seeds(records) == records and not any(r.spreads for r in records)


def test_verdict_needs_a_lead_beyond_spread_and_min_gap():
    values = {"A": 0.92, "B": 0.94}
    assert verdict("core.ce_loss_score", values).best == "B"  # gap 0.02 >= min gap 0.01
    noisy = verdict("core.ce_loss_score", values, {"A": 0.0283, "B": 0.007})
    assert noisy.best is None and noisy.leader == "B"
    assert noisy.text == "within noise (gap 0.02 < spread 0.0283)"
    assert verdict("core.ce_loss_score", values, {"A": 0.005, "B": 0.007}).best == "B"
    # a spread below the min gap still leaves the min gap in charge
    tight = verdict("core.ce_loss_score", {"A": 0.92, "B": 0.925}, {"A": 0.001})
    assert tight.best is None and tight.text == "within noise (gap 0.005 < 0.01)"


def test_report_shows_mean_spread_and_noise_rule(tmp_path):
    page = build_report(make_seeded_sweep(tmp_path))
    html = unescape(page.read_text())
    summary = (page.parent / "summary.md").read_text()
    parser = PageParser()
    parser.feed(page.read_text())
    parser.close()
    runs = {row[0]: row for row in parser.tables["runs"]}
    assert set(runs) == set(POINTS)
    assert runs["A (k=16)"][2] == "16 ± 0 (2 seeds)"
    assert runs["A (k=16)"][3] == "0.92 ± 0.028 (2 seeds)"
    assert runs["B (k=64)"][3] == "0.901 ± 0.0014 (2 seeds)"
    matched = {(row[0], row[1]): row for row in parser.tables["matched"]}
    # L0 16: B leads by 0.02, above the min gap but not A's spread 0.0283; L0 64: A by 0.05
    assert matched[("CE loss score", "16")][2:] == ["0.92 ± 0.028 (2 seeds)", "0.94 ± 0.0071 (2 seeds)",
                                                     "within noise (gap 0.02 < spread 0.0283)"]
    assert matched[("CE loss score", "64")][2:] == ["0.951 ± 0.0014 (2 seeds)", "0.901 ± 0.0014 (2 seeds)", "A"]
    for text in (html, summary):
        assert "sample standard deviation over seeds" in text
    assert "| 0.92 ± 0.028 (2 seeds) |" in summary
    # every run is still listed with its own directory
    assert [row[1] for row in parser.tables["configs"]] == [f"run_{i}" for i in range(8)]
    findings = " ".join(main_findings(group_seeds(collect(tmp_path).records)))
    assert "L0 16: within noise (gap 0.02 < spread 0.0283)" in findings and "L0 64: A (0.951)" in findings
    assert (page.parent / "figures" / "frontier.png").is_file()
