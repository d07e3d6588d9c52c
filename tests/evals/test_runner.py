"""featsep.evals.runner: evaluate() on run and sweep directories, its errors, and the run-eval command."""

from __future__ import annotations

import json

import pytest

from featsep.evals import available_evals, evaluate
from featsep.sae import make_sae, save_sae
from tests.evals.helpers import D, HOOK


def test_core_end_to_end_on_a_run_dir_writes_saebench_json_and_final_info(letters_lm, letters_corpus, tmp_path):
    run = tmp_path / "run"
    save_sae(make_sae("topk", d_in=D, d_sae=64, k=4, hook_name=HOOK, model_name="tiny"), run / "sae")
    settings = {"core": {"dataset": letters_corpus, "context_size": 16, "batch_size_prompts": 4,
                         "n_eval_reconstruction_batches": 2, "n_eval_sparsity_variance_batches": 2}}
    out = evaluate(str(run), evals=["core"], model=letters_lm, settings=settings, cache_dir=tmp_path / "cache", verbose=False)
    result = json.loads((run / "eval_results" / "core_eval_results.json").read_text())
    for key in ("eval_type_id", "eval_config", "eval_id", "datetime_epoch_millis", "eval_result_metrics",
                "eval_result_details", "eval_result_unstructured", "sae_bench_commit_hash", "sae_lens_id",
                "sae_lens_release_id", "sae_lens_version", "sae_cfg_dict"):
        assert key in result
    metrics = result["eval_result_metrics"]
    assert metrics["sparsity"]["l0"] <= 4
    assert metrics["token_stats"]["total_tokens_eval_reconstruction"] == 2 * 4 * 16
    assert len(result["eval_result_details"]) == 64
    assert "explained_variance_saebench" in result["eval_result_unstructured"]["metric_conventions"]
    info = json.loads((run / "final_info.json").read_text())
    section = info["core evaluation results"]  # the reference runs' core layout
    rq, file_rq = section["metrics"].pop("reconstruction_quality"), metrics.pop("reconstruction_quality")
    assert section["metrics"] == metrics
    assert rq["explained_variance"] == rq["explained_variance_legacy"] == file_rq["explained_variance_legacy"]
    assert rq["explained_variance_conventional"] == file_rq["explained_variance"]
    metrics["reconstruction_quality"] = file_rq
    # a second call reads the model-side work from the disk cache and agrees
    again = evaluate(str(run), evals=["core"], model=letters_lm, settings=settings, cache_dir=tmp_path / "cache", verbose=False)
    assert again["core"]["eval_result_metrics"] == out["core"]["eval_result_metrics"]
    assert any((tmp_path / "cache").glob("core_reference-*.pt"))


def test_bad_input_gives_one_clear_error(letters_lm, tmp_path):
    wrong_width = make_sae("topk", d_in=D + 1, d_sae=16, k=2, hook_name=HOOK)
    with pytest.raises(ValueError, match="d_in=33 does not match"):
        evaluate(wrong_width, evals=["core"], model=letters_lm, cache_dir=None)
    deep = make_sae("topk", d_in=D, d_sae=16, k=2, hook_name="blocks.9.hook_resid_post")
    with pytest.raises(ValueError, match="out of range"):
        evaluate(deep, evals=["core"], model=letters_lm, cache_dir=None)
    sae = make_sae("topk", d_in=D, d_sae=16, k=2, hook_name=HOOK)
    with pytest.raises(ValueError, match="unknown eval 'cor'"):
        evaluate(sae, evals=["cor"], model=letters_lm)
    with pytest.raises(ValueError, match="unknown setting 'n_batches'"):
        evaluate(sae, evals=["core"], model=letters_lm, settings={"n_batches": 3})
    with pytest.raises(ValueError, match="neither an SAE directory"):
        evaluate(str(tmp_path), evals=["core"], model=letters_lm)
    assert {"core", "sparse_probing", "absorption"} <= set(available_evals())


def test_sweep_dir_expands_to_its_run_dirs(tmp_path):
    from featsep.evals.runner import resolve_targets

    for name in ("b", "a"):
        save_sae(make_sae("topk", d_in=D, d_sae=16, k=2, hook_name=HOOK), tmp_path / "sweep" / name / "sae")
    (tmp_path / "sweep" / "report").mkdir()
    targets = resolve_targets(str(tmp_path / "sweep"))
    assert [t.name for t in targets] == ["a", "b"] and all(t.run_dir is not None for t in targets)


def test_run_eval_cli_parses_set_overrides(letters_lm, letters_corpus, tmp_path, capsys):
    from featsep.evals import run_eval_cli

    run = tmp_path / "run"
    save_sae(make_sae("topk", d_in=D, d_sae=32, k=4, hook_name=HOOK), run / "sae")
    overrides = [f"core.dataset={json.dumps(letters_corpus)}", "core.context_size=16", "core.batch_size_prompts=2",
                 "core.n_eval_reconstruction_batches=1", "core.n_eval_sparsity_variance_batches=1",
                 "seed=3", f"cache_dir={json.dumps(str(tmp_path / 'c'))}"]
    out = run_eval_cli(str(run), ["core"], overrides, model=letters_lm)
    assert out["core"]["eval_config"]["seed"] == 3 and out["core"]["eval_config"]["context_size"] == 16
    assert "model_performance_preservation: ce_loss_score=" in capsys.readouterr().out
    assert (run / "eval_results" / "core_eval_results.json").exists()


def _tree_bytes(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


CORE_TINY = {"context_size": 16, "batch_size_prompts": 2, "n_eval_reconstruction_batches": 1,
             "n_eval_sparsity_variance_batches": 1}


def test_out_dir_leaves_a_run_dir_byte_identical(letters_lm, letters_corpus, tmp_path):
    run = tmp_path / "run"
    save_sae(make_sae("topk", d_in=D, d_sae=32, k=4, hook_name=HOOK), run / "sae")
    settings = {"core": {"dataset": letters_corpus, **CORE_TINY}}
    kw = dict(model=letters_lm, settings=settings, cache_dir=tmp_path / "cache", verbose=False)
    evaluate(str(run), evals=["core"], **kw)  # the run dir now has eval_results/ and final_info.json
    before = _tree_bytes(run)
    assert "final_info.json" in before and "eval_results/core_eval_results.json" in before
    out = evaluate(str(run), evals=["core"], out_dir=tmp_path / "out", **{**kw, "settings": {"core": {**settings["core"], "seed": 7}}})
    assert _tree_bytes(run) == before
    written = json.loads((tmp_path / "out" / "core_eval_results.json").read_text())
    assert written["eval_config"]["seed"] == 7 and written == json.loads(json.dumps(out["core"]))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["core_eval_results.json"]


def test_out_dir_on_a_sweep_dir_writes_per_run_folders_only(letters_lm, letters_corpus, tmp_path):
    sweep = tmp_path / "sweep"
    for name in ("a", "b"):
        save_sae(make_sae("topk", d_in=D, d_sae=32, k=4, hook_name=HOOK), sweep / name / "sae")
    settings = {"core": {"dataset": letters_corpus, **CORE_TINY}}
    kw = dict(model=letters_lm, settings=settings, cache_dir=tmp_path / "cache", verbose=False)
    evaluate(str(sweep), evals=["core"], **kw)
    before = _tree_bytes(sweep)
    assert "a/final_info.json" in before and "b/eval_results/core_eval_results.json" in before
    out = evaluate(str(sweep), evals=["core"], out_dir=tmp_path / "out", **kw)
    assert _tree_bytes(sweep) == before
    for name, result in zip("ab", out):
        written = json.loads((tmp_path / "out" / name / "core_eval_results.json").read_text())
        assert written["sae_lens_id"] == name and written == json.loads(json.dumps(result["core"]))
    # a sweep of one run still gets its run's folder
    one = tmp_path / "one"
    save_sae(make_sae("topk", d_in=D, d_sae=32, k=4, hook_name=HOOK), one / "c" / "sae")
    evaluate(str(one), evals=["core"], out_dir=tmp_path / "out1", **kw)
    assert (tmp_path / "out1" / "c" / "core_eval_results.json").is_file() and not (one / "c" / "eval_results").exists()


def test_out_dir_inside_an_evaluated_dir_is_refused_before_any_eval(tmp_path):
    from featsep.evals.runner import check_out_dir

    sweep = tmp_path / "sweep"
    for name in ("a", "b"):
        save_sae(make_sae("topk", d_in=D, d_sae=16, k=2, hook_name=HOOK), sweep / name / "sae")
    for out, target in [(sweep / "a", sweep / "a"), (sweep / "a" / "x", sweep / "a"), (sweep, str(sweep)),
                        (sweep, [str(sweep / "a"), str(sweep / "b")])]:
        with pytest.raises(ValueError, match="would put results inside"):
            check_out_dir(out, target if isinstance(target, list) else str(target))
    with pytest.raises(ValueError, match="is the SAE dir being evaluated"):
        check_out_dir(sweep / "a" / "sae", str(sweep / "a"))
    assert not (sweep / "a" / "x").exists()
    assert check_out_dir(tmp_path / "elsewhere", str(sweep)).is_dir()
    assert check_out_dir(tmp_path, str(sweep / "a")) == tmp_path  # out/core_eval_results.json, beside the run


def test_out_dir_refuses_two_targets_of_one_name(letters_lm, tmp_path):
    for parent in ("p", "q"):
        save_sae(make_sae("topk", d_in=D, d_sae=16, k=2, hook_name=HOOK), tmp_path / parent / "run" / "sae")
    with pytest.raises(ValueError, match="two SAEs are named 'run'"):
        evaluate([str(tmp_path / "p" / "run"), str(tmp_path / "q" / "run")], evals=["core"], model=letters_lm,
                 out_dir=tmp_path / "out", cache_dir=None, verbose=False)


def test_foreign_sae_dirs_and_hub_references_are_targets(tmp_path, monkeypatch):
    """Gemma Scope and dictionary_learning layouts have no cfg.json; a hub reference resolves first;
    the SAE's own model name (read by the format's loader) decides whether SAEBench's datasets apply."""
    import numpy as np
    import torch

    from featsep.evals.runner import resolve_refs, resolve_targets
    from featsep.evals.settings import is_hub_model
    from featsep.sae.io import export_sae
    from tests.helpers import hf_cache_repo

    g = torch.Generator().manual_seed(0)
    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_12" / "width_16k" / "average_l0_82"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", W_enc=torch.randn(D, 16, generator=g).numpy(), W_dec=torch.randn(16, D, generator=g).numpy(),
             b_enc=np.zeros(16, np.float32), b_dec=np.zeros(D, np.float32), threshold=np.full(16, 0.1, np.float32))
    export_sae(save_sae(make_sae("topk", d_in=D, d_sae=16, k=2, hook_name=HOOK), tmp_path / "sae"), tmp_path / "dl",
               fmt="dictionary_learning")
    targets = resolve_targets([str(folder), str(folder / "params.npz"), str(tmp_path / "dl"), str(tmp_path / "dl" / "ae.pt")])
    assert [t.sae.architecture for t in targets] == ["jumprelu", "jumprelu", "topk", "topk"]
    assert [t.name for t in targets] == ["average_l0_82", "average_l0_82", "dl", "dl"]
    assert targets[0].sae.cfg.hook_name == "blocks.12.hook_resid_post" and targets[2].sae.cfg.hook_name == HOOK
    assert is_hub_model(None, str(folder)) and not is_hub_model(None, str(tmp_path / "dl"))

    hf_cache_repo(tmp_path / "hf", "someone/saes", tmp_path / "dl", "cd" * 20)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = tmp_path / "hf" / "models--someone--saes" / "snapshots" / ("cd" * 20)
    assert resolve_refs(["hf://someone/saes", str(folder)]) == [snapshot, str(folder)]
    assert resolve_targets(resolve_refs("hf://someone/saes/ae.pt"))[0].sae.architecture == "topk"


def test_shares_of_a_sweep_dir_split_its_runs_and_each_equals_the_whole_call(letters_lm, letters_corpus, tmp_path):
    """share=(rank, N), what each torchrun rank passes: disjoint shares that cover every run,
    each run's result the one a single call gives it."""
    sweep = tmp_path / "sweep"
    for i in range(3):
        save_sae(make_sae("topk", d_in=D, d_sae=32, k=2 + i, hook_name=HOOK, model_name="tiny", seed=i),
                 sweep / f"run_{i}" / "sae")
    settings = {"core": {"dataset": letters_corpus, "context_size": 16, "batch_size_prompts": 2,
                         "n_eval_reconstruction_batches": 1, "n_eval_sparsity_variance_batches": 1}}
    kw = dict(evals=["core"], model=letters_lm, settings=settings, cache_dir=tmp_path / "cache", verbose=False)
    whole = evaluate(str(sweep), out_dir=tmp_path / "whole", **kw)
    parts = [evaluate(str(sweep), out_dir=tmp_path / "parts", share=(rank, 2), **kw) for rank in range(2)]
    assert [len(p) for p in parts] == [2, 1]
    assert evaluate(str(sweep / "run_0"), out_dir=tmp_path / "none", share=(1, 2), **kw) == []
    metrics = lambda r: r["core"]["eval_result_metrics"]  # noqa: E731
    assert [metrics(r) for r in parts[0] + parts[1]] == [metrics(whole[i]) for i in (0, 2, 1)]
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["run_0", "run_1", "run_2"]


def _small_settings(corpus) -> dict:
    return {"core": {"dataset": corpus, "context_size": 16, "batch_size_prompts": 4,
                     "n_eval_reconstruction_batches": 1, "n_eval_sparsity_variance_batches": 1},
            "competition": {"dataset": corpus, "n_tokens": 256, "batch_size": 64, "context_size": 16}}


def test_a_released_sae_becomes_a_baseline_run_dir(letters_lm, letters_corpus, tmp_path):
    """A SAELens dir (no model recorded): its identity, core and the competition analysis land in a
    run dir through rundir; its weights are checked on every load; re-running keeps its results."""
    from featsep.evals.runner import evaluate_baseline
    from featsep.io import file_sha256
    from featsep.rundir import RunDir
    from featsep.sae.io import export_sae

    sae = make_sae("topk", d_in=D, d_sae=32, k=4, hook_name=HOOK)
    export_sae(save_sae(sae, tmp_path / "sae"), tmp_path / "released", fmt="saelens")
    run = tmp_path / "baseline"
    evaluate_baseline(str(tmp_path / "released"), run, ["core"], model=letters_lm,
                      settings=_small_settings(letters_corpus), cache_dir=None, verbose=False)
    record = RunDir(run).read_config().baseline
    assert (record.format, record.source, record.model_name, record.hook_name) == (
        "saelens", str(tmp_path / "released"), letters_lm.name, HOOK)
    assert record.sha256 == file_sha256(tmp_path / "released" / "sae_weights.safetensors")
    assert (record.architecture, record.d_in, record.d_sae) == ("topk", D, 32)
    assert RunDir(run).eval_names() == ["competition", "core"]
    info = RunDir(run).read_final_info()
    assert "core evaluation results" in info and "competition evaluation results" in info
    assert RunDir(run).read_training() is None and not RunDir(run).metrics_file.exists()
    before = RunDir(run).eval_result_path("core").read_bytes()
    evaluate_baseline(str(tmp_path / "released"), run, ["core"], model=letters_lm, cache_dir=None, verbose=False)
    assert RunDir(run).eval_result_path("core").read_bytes() == before  # nothing left to run
    # the run dir is an eval target like a trained run; changed weights are refused, not evaluated
    (tmp_path / "released" / "sae_weights.safetensors").write_bytes(
        (tmp_path / "sae" / "sae_weights.safetensors").read_bytes() + b" ")
    with pytest.raises(ValueError, match="changed since"):
        evaluate(str(run), evals=["core"], model=letters_lm, cache_dir=None, verbose=False)


def test_a_baseline_without_model_or_hook_asks_for_them(tmp_path):
    from featsep.evals.runner import evaluate_baseline
    from featsep.sae.io import export_sae

    export_sae(save_sae(make_sae("topk", d_in=D, d_sae=16, k=2), tmp_path / "sae"), tmp_path / "released",
               fmt="saelens")
    with pytest.raises(ValueError, match=r"records no model; pass --model NAME"):
        evaluate_baseline(str(tmp_path / "released"), tmp_path / "b", ["core"])
    with pytest.raises(ValueError, match=r"records no hook; pass --hook blocks.L.hook_resid_post"):
        evaluate_baseline(str(tmp_path / "released"), tmp_path / "b", ["core"], model="tiny")
    assert not (tmp_path / "b").exists()
