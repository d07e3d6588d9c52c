"""featsep.report.collect and findings on hand-made run dirs: layouts the sweep test does not cover."""

from __future__ import annotations

import json
from pathlib import Path

from featsep.report import collect, main_findings
from featsep.report.collect import RunRecord, flatten_eval_metrics


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def test_combined_scr_tpp_blob_and_nested_penalty_stats(tmp_path):
    run = tmp_path / "a"
    _write(run / "final_info.json", {"scr and tpp evaluations results": {"eval_result_metrics": {
        "scr_metrics": {"scr_metric_threshold_20": 0.25}, "tpp_metrics": {"tpp_threshold_20_total_metric": 0.5}}}})
    _write(run / "metrics.jsonl", json.dumps({"step": 1, "momentum": {"share_over_tau": 0.5, "mean": 2.0}}) + "\n")
    rec = collect(tmp_path).records[0]
    assert rec.metrics["scr.scr_metric_threshold_20"] == 0.25 and rec.metrics["tpp.tpp_threshold_20_total_metric"] == 0.5
    assert rec.history[0]["momentum/share_over_tau"] == 0.5  # nested stats flattened with a prefix


def test_eval_results_files_fill_missing_sections_and_labels_precedence(tmp_path):
    run = tmp_path / "sweep" / "run_0"
    _write(run / "final_info.json", {"core evaluation results": {"eval_result_metrics": {"sparsity": {"l0": 12.0}}}})
    _write(run / "eval_results" / "x_eval_results.json",
           {"eval_type_id": "unlearning", "eval_result_metrics": {"unlearning": {"unlearning_score": 0.125}}})
    _write(run / "eval_results" / "y.json",  # a duplicate core file must not override final_info
           {"eval_type_id": "core", "eval_result_metrics": {"sparsity": {"l0": 99.0}}})
    _write(run / "config.json", {"run_config": {"sae": {"architecture": "relu", "d_sae": 64},
                                                "penalties": [{"name": "temporal", "weight": 0.1}]}})
    _write(tmp_path / "sweep" / "sweep.json", {"labels": {"run_0": "from sweep"}})
    rec = collect(tmp_path / "sweep").records[0]
    assert rec.metrics["unlearning.unlearning_score"] == 0.125 and rec.l0 == 12.0
    assert rec.method == "relu+temporal" and rec.label == "from sweep"
    assert collect(tmp_path / "sweep", labels={"run_0": "given"}).records[0].label == "given"


def test_flatten_keeps_colliding_leaves_apart():
    flat = flatten_eval_metrics({"eval_result_metrics": {"a": {"x": 1, "y": float("nan")}, "b": {"x": 2}}})
    assert flat == {"a.x": 1.0, "b.x": 2.0}  # NaN dropped, colliding leaf names qualified


def _rec(run, method, l0, ce):
    return RunRecord(run=run, label=run, method=method, path=Path(run), metrics={"core.l0": l0, "core.ce_loss_score": ce})


def test_findings_report_a_winner_that_changes_with_l0():
    records = [_rec("a1", "A", 10, 0.80), _rec("a2", "A", 100, 0.99), _rec("b1", "B", 10, 0.85), _rec("b2", "B", 100, 0.95)]
    text = "\n".join(main_findings(records))
    assert "differs with sparsity" in text and "L0 10: B (0.85)" in text and "L0 100: A (0.99)" in text


def test_malformed_files_never_crash_the_report(tmp_path):
    from featsep.report import build_report

    run = tmp_path / "run_x"
    _write(run / "final_info.json", "[1, 2")  # truncated JSON
    _write(run / "metrics.jsonl", '[1, 2]\n"text"\n{"step": 0, "loss": "nan?", "l0": 3}\n')
    _write(run / "eval_results" / "bad.json", {"eval_type_id": "core", "eval_result_metrics": ["not", "a", "dict"]})
    _write(run / "config.json", {"run_config": "not a dict"})
    page = build_report(tmp_path)
    html = page.read_text()
    assert "final_info.json: unreadable" in html and "skipped: no run has" in html
    assert collect(tmp_path).records[0].l0 == 3
