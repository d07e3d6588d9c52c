"""featsep.rundir: every writer/reader pair round-trips, the files keep their names and keys,
and no other module spells the layout's file names."""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path

import pytest

import featsep
from featsep.rundir import (
    EvalRecord,
    RunDir,
    TrainingResults,
    eval_result_path,
    eval_section,
    read_eval_result,
    read_sweep_manifest,
    run_dirs,
    training_results_key,
    write_eval_result,
    write_sweep_manifest,
)


def _result(name: str = "core") -> dict:
    return {"eval_type_id": name, "eval_config": {"seed": 1}, "eval_id": "id-1", "datetime_epoch_millis": 5,
            "eval_result_metrics": {"sparsity": {"l0": 4.0}}, "eval_result_details": [{"latent": 0, "x": 1.5}],
            "eval_result_unstructured": {"wall_time_s": 2.0}, "sae_bench_commit_hash": "abc",
            "sae_lens_id": "sae_0", "sae_lens_release_id": "featsep", "sae_lens_version": None,
            "sae_cfg_dict": {"d_sae": 8}}


def test_layout_names(tmp_path):
    rd = RunDir(tmp_path)
    names = [p.relative_to(tmp_path).as_posix() for p in (
        rd.config_file, rd.metrics_file, rd.final_info_file, rd.checkpoint_dir, rd.sae_dir, rd.eval_results_dir,
        rd.tensorboard_dir, rd.checkpoint_path(42), rd.eval_result_path("core"))]
    assert names == ["config.json", "metrics.jsonl", "final_info.json", "checkpoints", "sae", "eval_results",
                     "tensorboard", "checkpoints/step_000000042.pt", "eval_results/core_eval_results.json"]
    assert training_results_key(12) == "training results for layer 12"
    assert run_dirs(tmp_path, ["a"]) == [tmp_path] and run_dirs(tmp_path, ["a", "b"]) == [tmp_path / "a", tmp_path / "b"]
    assert run_dirs(None, ["a", "b"]) == [None, None]
    with pytest.raises(ValueError, match="directory name"):
        run_dirs(tmp_path, ["a/b", "c"])


def test_config_round_trip(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.read_config() is None
    config = {"featsep_version": "0.1.0", "run_config": {"sae": {"k": 4}}, "sae": {"d_sae": 8},
              "penalties": [{"name": "temporal", "weight": 0.1}], "train": {"lr": 0.01}}
    rd.write_config(config)
    assert rd.read_config().model_dump() == config
    assert json.loads(rd.config_file.read_text()) == config
    rd.config_file.write_text('{"penalties": "none"}')
    with pytest.raises(ValueError, match="ConfigRecord"):
        rd.read_config()


def test_metrics_round_trip_truncate_and_cut_lines(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.read_metrics() == [] and not rd.holds_training()
    rows = [{"step": s, "tokens": 4 * s, "loss": 1.0 / s, "loss/mse": 0.5} for s in (1, 2, 3)]
    for row in rows:
        rd.append_metrics(row)
    assert rd.read_metrics() == rows and rd.holds_training()
    assert rd.metrics_file.read_text() == "".join(json.dumps(r) + "\n" for r in rows)  # one JSON line a row
    with open(rd.metrics_file, "a") as f:
        f.write('{"step": 4, "lo')  # a kill mid-line
    log = rd.read_metrics_log()
    assert log.rows == rows and log.skipped == 1
    rd.truncate_metrics(2)
    assert rd.read_metrics() == rows[:2] and rd.read_metrics_log().skipped == 0


def test_final_info_update_merge_and_malformed(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.read_final_info() == {}
    rd.update_final_info("a", {"x": 1})
    info = rd.update_final_info("b", [2], merge=lambda old, new: (old or []) + new)
    info = rd.update_final_info("b", [3], merge=lambda old, new: (old or []) + new)
    assert info == rd.read_final_info() == {"a": {"x": 1}, "b": [2, 3]}
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    rd.final_info_file.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a JSON object"):
        rd.read_final_info()
    assert not rd.has_training()


def test_training_section_round_trip_and_file_layout(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.read_training() is None and not rd.has_training()
    results = TrainingResults(training_steps=7, final_loss=0.5, layer=3, dict_size=16, learning_rate=0.01,
                              sparsity_penalty=0.05, architecture="relu_l1", training_tokens=224, l0=2.0, fvu=0.25,
                              dead_fraction=0.0, final_loss_terms={"mse": 0.4}, wall_time_s=1.5)
    rd.write_training({"dict_size": 16}, results)
    section = rd.read_training()
    assert section.config == {"dict_size": 16} and section.final_info == results and rd.has_training()
    block = rd.read_final_info()["training results for layer 3"]["final_info"]
    assert list(block) == ["training_steps", "final_loss", "layer", "dict_size", "learning_rate", "sparsity_penalty",
                           "architecture", "training_tokens", "l0", "fvu", "dead_fraction", "final_loss_terms",
                           "wall_time_s"]  # the reference runs' keys in their order; no penalty_stats without penalties
    with_stats = results.model_copy(update={"penalty_stats": {"momentum": {"hist": [1, 2]}}, "layer": 4})
    rd.write_training({}, with_stats)
    info = rd.read_final_info()
    assert info["training results for layer 4"]["final_info"]["penalty_stats"] == {"momentum": {"hist": [1, 2]}}


def test_eval_result_file_and_section_round_trip(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.eval_names() == [] and not rd.has_eval("core")
    path = rd.write_eval("core", _result(), "core evaluation results")
    assert path == tmp_path / "eval_results" / "core_eval_results.json"
    assert json.loads(path.read_text()) == _result()  # the SAEBench dict, unchanged
    assert rd.read_eval("core") == read_eval_result(path) == EvalRecord.model_validate(_result())
    assert rd.read_eval("core").model_dump() == _result()
    section = rd.read_final_info()["core evaluation results"]
    assert section == eval_section(_result(), path)
    assert "eval_result_details" not in section and "sae_cfg_dict" not in section
    assert section["results_file"] == str(path) and section["eval_result_metrics"] == {"sparsity": {"l0": 4.0}}
    assert rd.eval_names() == ["core"] and rd.has_eval("core")

    tpp = rd.write_eval("tpp", _result("tpp"), "scr and tpp")
    assert tpp == eval_result_path(rd.eval_results_dir, "tpp") and rd.has_eval("tpp")
    assert rd.read_final_info()["scr and tpp"]["results_file"] == str(tpp)
    converted = rd.write_eval("absorption", _result("absorption"), "absorption evaluation results",
                              section=lambda result, path: {"type": result["eval_type_id"], "file": str(path)})
    assert rd.read_final_info()["absorption evaluation results"] == {"type": "absorption", "file": str(converted)}
    assert rd.read_eval("absorption").model_dump() == _result("absorption")  # the file stays SAEBench's
    assert write_eval_result(tmp_path / "bare", "absorption", _result()) == tmp_path / "bare" / "absorption_eval_results.json"
    with pytest.raises(ValueError, match="does not exist"):
        rd.read_eval("sparse_probing")


def test_sweep_manifest_round_trip(tmp_path):
    assert read_sweep_manifest(tmp_path) is None
    manifest = {"name": "s", "runs": [{"run": "run_0", "label": "a"}], "labels": {"run_0": "a"}}
    write_sweep_manifest(tmp_path, manifest)
    assert read_sweep_manifest(tmp_path) == manifest and (tmp_path / "sweep.json").is_file()
    (tmp_path / "sweep.json").write_text("[]")
    with pytest.raises(ValueError, match="not a JSON object"):
        read_sweep_manifest(tmp_path)


def test_checkpoint_steps_list_only_complete_files(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.checkpoint_steps() == {} and not rd.has_checkpoints()
    rd.checkpoint_dir.mkdir()
    for name in ("step_000000005.pt", ".step_000000010.pt.abc.tmp", "other.pt"):
        (rd.checkpoint_dir / name).write_bytes(b"")
    assert rd.checkpoint_steps() == {5: rd.checkpoint_path(5)} and rd.has_checkpoints()


def test_has_eval_asks_for_that_eval_s_own_file(tmp_path):
    """The pipeline used to glob *core*.json, so any file with "core" in its name counted."""
    from featsep.pipeline import missing_evals

    rd = RunDir(tmp_path)
    rd.eval_results_dir.mkdir()
    (rd.eval_results_dir / "core_something.json").write_text("{}")
    write_eval_result(rd.eval_results_dir, "core_extra", _result())
    assert missing_evals(tmp_path, ["core"]) == ("core",)
    write_eval_result(rd.eval_results_dir, "core", _result())
    assert missing_evals(tmp_path, ["core", "absorption"]) == ("absorption",)


def test_is_trained_needs_the_sae_and_the_training_section(tmp_path):
    from featsep.pipeline import is_trained

    rd = RunDir(tmp_path)
    featsep.save_sae(featsep.make_sae("relu_l1", d_in=4, d_sae=8), rd.sae_dir)
    assert not is_trained(tmp_path)
    rd.write_training({}, TrainingResults(training_steps=1, layer=0, dict_size=8, learning_rate=0.1,
                                          architecture="relu_l1", training_tokens=4))
    assert is_trained(tmp_path)
    rd.final_info_file.write_text("{")
    assert not is_trained(tmp_path)  # a corrupted final_info counts as unfinished


def test_training_writes_its_wall_time_as_the_sum_of_logged_windows(tmp_path):
    import torch

    from featsep.train.artifacts import logged_wall_time_s

    assert logged_wall_time_s([{"tokens": 64, "tokens_per_s": 32.0}, {"tokens": 128, "tokens_per_s": 64.0},
                               {"tokens": 160, "tokens_per_s": 16.0}]) == 2.0 + 1.0 + 2.0
    assert logged_wall_time_s([]) is None and logged_wall_time_s([{"tokens": 4}]) is None
    batches = [torch.randn(16, 4, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    started = time.perf_counter()
    featsep.train([featsep.make_sae("relu_l1", d_in=4, d_sae=8)], batches, out_dir=tmp_path, log_every=2,
                  progress=False)
    elapsed = time.perf_counter() - started
    rd = RunDir(tmp_path)
    wall = rd.read_training().final_info.wall_time_s
    assert wall == logged_wall_time_s(rd.read_metrics()) and 0 < wall < elapsed


FORBIDDEN = ("final_info.json", "eval_results", "metrics.jsonl")


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def test_only_rundir_spells_the_layout():
    """Every string in featsep/ outside rundir.py (docstrings aside: they may describe the layout)
    is free of the run dir's file names, so no other module builds those paths."""
    root = Path(featsep.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "rundir.py":
            continue
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                offenders += [f"{path.relative_to(root)}:{node.lineno}: {s}" for s in FORBIDDEN if s in node.value]
    assert offenders == []
    assert all(s in (root / "rundir.py").read_text() for s in FORBIDDEN)  # the check looks for the right thing
