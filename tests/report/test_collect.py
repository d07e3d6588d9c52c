"""featsep.report.collect and findings on hand-made run dirs: cases the sweep test does not cover."""

from __future__ import annotations

from pathlib import Path

from featsep.report import collect, main_findings
from featsep.report.collect import RunRecord, flatten_eval_metrics
from featsep.rundir import EvalRecord, RunDir, TrainingResults, write_sweep_manifest


def _eval(type_id: str, metrics: dict) -> dict:
    return {"eval_type_id": type_id, "eval_result_metrics": metrics}


def test_sections_come_from_each_eval_s_own_file_never_from_key_names(tmp_path):
    """SCR and TPP are read from their own files (not the merged final_info section); a
    final_info key or a file whose name merely contains an eval's name is not that eval."""
    rd = RunDir(tmp_path / "a")
    rd.write_eval("scr", _eval("scr", {"scr_metrics": {"scr_metric_threshold_20": 0.25}}), "scr and tpp")
    rd.write_eval("tpp", _eval("tpp", {"tpp_metrics": {"tpp_threshold_20_total_metric": 0.5}}), "scr and tpp")
    rd.update_final_info("core evaluation results (old copy)", _eval("core", {"sparsity": {"l0": 99.0}}))
    rd.write_eval("core_something", _eval("core", {"sparsity": {"l0": 7.0}}), "core_something results")
    rd.append_metrics({"step": 1, "momentum/share_over_tau": 0.5})
    rec = collect(tmp_path).records[0]
    assert rec.metrics["scr.scr_metric_threshold_20"] == 0.25 and rec.metrics["tpp.tpp_threshold_20_total_metric"] == 0.5
    assert "core" not in rec.sections and "core.l0" not in rec.metrics and rec.l0 is None
    assert rec.metrics["core_something.l0"] == 7.0  # its own name, not core's
    assert rec.history == [{"step": 1, "momentum/share_over_tau": 0.5}]


def test_training_section_and_config_give_method_metrics_and_labels(tmp_path):
    rd = RunDir(tmp_path / "sweep" / "run_0")
    rd.write_training({"dict_class": "ReLU"}, TrainingResults(
        training_steps=10, final_loss=0.5, layer=3, dict_size=64, learning_rate=1e-3, architecture="relu_l1",
        training_tokens=640, l0=12.0, wall_time_s=2.5, penalty_stats={"temporal": {"calls": 10}}))
    rd.write_config({"run_config": {"sae": {"d_sae": 64}}, "penalties": [{"name": "temporal", "weight": 0.1}]})
    rec = collect(tmp_path / "sweep").records[0]
    assert rec.method == "relu_l1+temporal"  # the training section's architecture, the config's penalties
    assert rec.config == {"sae.d_sae": 64, "temporal.weight": 0.1, "penalties": "temporal"}
    assert rec.metrics == {
        "train.training_steps": 10, "train.final_loss": 0.5, "train.layer": 3, "train.dict_size": 64,
        "train.learning_rate": 1e-3, "train.training_tokens": 640, "train.l0": 12.0, "cost.wall_time_s": 2.5}
    assert "cost.tokens_per_s" not in rec.metrics  # no log: missing, not estimated

    write_sweep_manifest(tmp_path / "sweep", {"labels": {"run_0": "from sweep"}})
    assert collect(tmp_path / "sweep").records[0].label == "from sweep"
    assert collect(tmp_path / "sweep", labels={"run_0": "given"}).records[0].label == "given"


def test_flatten_keeps_colliding_leaves_apart():
    record = EvalRecord.model_validate(_eval("x", {"a": {"x": 1, "y": float("nan")}, "b": {"x": 2}}))
    assert flatten_eval_metrics(record) == {"a.x": 1.0, "b.x": 2.0}  # NaN dropped, colliding leaf names qualified


def _rec(run, method, l0, ce):
    return RunRecord(run=run, label=run, method=method, path=Path(run), metrics={"core.l0": l0, "core.ce_loss_score": ce})


def test_findings_report_a_winner_that_changes_with_l0():
    records = [_rec("a1", "A", 10, 0.80), _rec("a2", "A", 100, 0.99), _rec("b1", "B", 10, 0.85), _rec("b2", "B", 100, 0.95)]
    text = "\n".join(main_findings(records))
    assert "differs with sparsity" in text and "L0 10: B (0.85)" in text and "L0 100: A (0.99)" in text


def test_malformed_files_never_crash_the_report(tmp_path):
    from featsep.report import build_report

    rd = RunDir(tmp_path / "run_x")
    rd.path.mkdir()
    rd.final_info_file.write_text("[1, 2")  # truncated JSON
    rd.metrics_file.write_text('[1, 2]\n"text"\n{"step": 0, "loss": "nan?", "l0": 3}\n')
    rd.eval_results_dir.mkdir()
    rd.eval_result_path("core").write_text('{"eval_type_id": "core", "eval_result_metrics": ["not", "a", "dict"]}')
    rd.config_file.write_text('{"run_config": "not a dict"}')
    page = build_report(tmp_path)
    html = page.read_text()
    assert "final_info.json: unreadable" in html and "skipped: no run has" in html
    rec = collect(tmp_path).records[0]
    assert rec.l0 == 3 and rec.history == [{"step": 0, "loss": "nan?", "l0": 3}]
    assert "train.final_loss" not in rec.metrics  # a string is not a number
    assert any(n.startswith("core results: unreadable") for n in rec.notes)
    assert any(n.startswith("config.json: unreadable") for n in rec.notes)
    assert "metrics.jsonl: 2 unreadable line(s) skipped" in rec.notes


def test_a_nan_written_as_minus_one_is_missing_never_the_lowest_absorption(tmp_path):
    """SAEBench writes NaN as -1. A method whose absorption came out NaN was once named
    "lowest mean absorption" for it; the sentinel is now missing, whoever wrote the file."""
    from featsep.evals.schema import eval_output

    def run(name, method, l0, absorption, saebench_style=False):
        rd = RunDir(tmp_path / "sweep" / name)
        rd.write_eval("core", _eval("core", {"sparsity": {"l0": l0}, "model_performance_preservation": {"ce_loss_score": 0.8}}),
                      "core evaluation results")
        metrics = {"mean": {"mean_absorption_fraction_score": absorption, "mean_full_absorption_score": 0.3}}
        result = _eval("absorption_first_letter", {"mean": {"mean_absorption_fraction_score": -1,
                                                             "mean_full_absorption_score": 0.3}}) \
            if saebench_style else eval_output("absorption_first_letter", {}, metrics, [], {}, name, {})
        rd.write_eval("absorption", result, "absorption evaluation results")
        return name, method

    runs = [run("run_0", "A", 32, 0.2), run("run_1", "B", 32, float("nan")), run("run_2", "C", 32, 0.0, saebench_style=True)]
    write_sweep_manifest(tmp_path / "sweep", {"runs": [{"run": r, "method": m} for r, m in runs]})
    written = RunDir(tmp_path / "sweep" / "run_1").read_eval("absorption")
    assert written.eval_result_metrics["mean"]["mean_absorption_fraction_score"] == -1  # SAEBench's layout kept
    assert written.eval_result_unstructured["missing_metrics"] == ["mean.mean_absorption_fraction_score"]
    records = collect(tmp_path / "sweep").records
    by_method = {r.method: r.metrics for r in records}
    assert by_method["A"]["absorption.mean_absorption_fraction_score"] == 0.2
    for method in ("B", "C"):  # featsep's list, and SAEBench's bare -1
        assert "absorption.mean_absorption_fraction_score" not in by_method[method]
        assert by_method[method]["absorption.mean_full_absorption_score"] == 0.3
    text = "\n".join(main_findings(records))
    assert "B has the lowest" not in text and "C has the lowest" not in text and "-1" not in text


def test_an_eval_caveat_reaches_the_findings(tmp_path):
    """Sparse probing's LLM top-k caveat (one model dimension decides SAEBench's baseline) is
    stated once, with the runs it concerns, wherever the report compares."""
    caveat = "bbc-news: model dim 443 holds 0.97 of the class-mean difference; SAEBench's LLM top-k reads it alone"
    for run in ("run_0", "run_1"):
        rd = RunDir(tmp_path / "sweep" / run)
        rd.write_eval("core", _eval("core", {"sparsity": {"l0": 8.0}}), "core evaluation results")
        rd.write_eval("sparse_probing", {**_eval("sparse_probing", {"llm": {"llm_top_1_test_accuracy": 0.5}}),
                                         "eval_result_unstructured": {"caveat": caveat}}, "sparse probing evaluation results")
    records = collect(tmp_path / "sweep").records
    assert [r.caveats for r in records] == [{"sparse_probing": caveat}] * 2
    findings = [f for f in main_findings(records) if f.startswith("Caveat on sparse probing")]
    assert findings == [f"Caveat on sparse probing: {caveat} ({records[0].label}, {records[1].label})."]
