"""The `featsep` command on the tiny checkpoint: cache from a config, train, resume, datasets."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from featsep.cli import app
from tests.helpers import tiny_run_config

HOOK = "blocks.1.hook_resid_post"


def _config(tmp_path, model_dir, corpus, **data) -> str:
    return tiny_run_config(tmp_path, model_dir, corpus, cache=data.get("cache"))


def test_cache_writes_what_the_config_trains_on(tmp_path, tiny_llama_dir, checkpoint_corpus):
    """`featsep cache CONFIG` fills the config's own data.cache (harvesting the text it names),
    and `featsep train CONFIG` then reads that cache."""
    cache = tmp_path / "cache"
    config = _config(tmp_path, tiny_llama_dir, checkpoint_corpus, cache=cache)
    done = CliRunner().invoke(app, ["cache", config, "--tokens", "600"])
    assert done.exit_code == 0, done.output
    manifest = json.loads((cache / "manifest.json").read_text())
    assert (manifest["model"], manifest["hook"], manifest["dataset"], manifest["context_length"], manifest["tokens"]) == (
        str(tiny_llama_dir), HOOK, str(checkpoint_corpus), 16, 600)
    done = CliRunner().invoke(app, ["train", config])
    assert done.exit_code == 0, done.output
    saved = json.loads((tmp_path / "run" / "sae" / "cfg.json").read_text())
    assert saved["dataset_path"] == str(cache) and saved["hook_name"] == HOOK


def test_cache_shortcuts_and_missing_out(tmp_path, tiny_llama_dir, checkpoint_corpus):
    no_out = CliRunner().invoke(app, ["cache", "--model", str(tiny_llama_dir), "--hook", HOOK,
                                      "--dataset", str(checkpoint_corpus)])
    assert no_out.exit_code == 2 and "no output directory: pass --out DIR" in no_out.output
    bad = CliRunner().invoke(app, ["cache", "--out", str(tmp_path / "c"), "--set", "data.context_lenght=16"])
    assert bad.exit_code == 2 and "data.context_lenght: unknown field" in bad.output
    assert not (tmp_path / "c").exists()


def test_resume_a_finished_run_and_a_dir_that_is_not_a_run(tmp_path, tiny_llama_dir, checkpoint_corpus):
    config = _config(tmp_path, tiny_llama_dir, checkpoint_corpus)
    assert CliRunner().invoke(app, ["train", config]).exit_code == 0
    again = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "run")])
    assert again.exit_code == 0 and "already trained" in again.output
    stray = CliRunner().invoke(app, ["train", "--resume", str(tmp_path)])
    assert stray.exit_code == 2 and "has no config.json" in stray.output


def test_a_run_killed_before_its_first_checkpoint_is_continued_with_resume(tmp_path, tiny_llama_dir,
                                                                           checkpoint_corpus):
    """config.json and metrics.jsonl rows but no checkpoint (the kill came early): plain train
    points at --resume in CLI words, and --resume trains from step 0 to the same weights."""
    import shutil

    from featsep.rundir import RunDir
    from featsep.sae import load_sae

    config = _config(tmp_path, tiny_llama_dir, checkpoint_corpus)
    assert CliRunner().invoke(app, ["train", config]).exit_code == 0
    run = RunDir(tmp_path / "run")
    reference = load_sae(run.sae_dir)
    shutil.rmtree(run.checkpoint_dir), shutil.rmtree(run.sae_dir), run.final_info_file.unlink()
    assert run.config_file.is_file() and run.read_metrics()

    plain = CliRunner().invoke(app, ["train", config])
    assert plain.exit_code == 2 and f"`featsep train --resume {run.path}`" in plain.output
    assert "resume=True" not in plain.output
    resumed = CliRunner().invoke(app, ["train", "--resume", str(run.path)])
    assert resumed.exit_code == 0, resumed.output
    assert f"no checkpoint in {run.path} yet: starting from step 0\n" in resumed.output
    again = load_sae(run.sae_dir)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(reference, name), getattr(again, name)), name


def test_datasets_command_lists_the_registry():
    from featsep.data import datasets

    result = CliRunner().invoke(app, ["datasets"])
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert len(lines) == len(datasets()) and lines[0].startswith("bbc-news")
    assert any(line.startswith("bbc-news-byline") and "offline" in line for line in lines)


def _one_error_line(done) -> str:
    assert done.exit_code == 2 and "Traceback" not in done.output, done.output
    assert len(done.output.strip().splitlines()) == 1 and done.output.startswith("error: "), done.output
    return done.output.strip()[len("error: "):]


def test_export_formats_at_the_command_line(tmp_path):
    import featsep

    sae = featsep.make_sae("topk", d_in=8, d_sae=16, k=2, seed=3)
    sae.cfg.normalization_factor = 2.0
    src = featsep.save_sae(sae, tmp_path / "sae")
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    for fmt, weights in (("sparsify", "sae.safetensors"), ("dictionary_learning", "ae.pt")):
        done = CliRunner().invoke(app, ["export", str(src), str(tmp_path / fmt), "--format", fmt])
        assert done.exit_code == 0 and f"({fmt} format; normalization factor 2.0 folded" in done.output, done.output
        assert (tmp_path / fmt / weights).is_file()
        assert torch.allclose(featsep.load_sae(tmp_path / fmt)(x), sae(x * 2.0) / 2.0, rtol=0, atol=1e-5)
    relu = featsep.save_sae(featsep.make_sae("relu_l1", d_in=8, d_sae=16), tmp_path / "relu")
    assert _one_error_line(CliRunner().invoke(app, ["export", str(relu), str(tmp_path / "r"), "--format", "sparsify"])) == (
        "a relu_l1 SAE cannot be exported to sparsify: sparsify encodes a per-token TopK only (sparsify holds topk); "
        "choose another --format")
    assert _one_error_line(CliRunner().invoke(app, ["export", str(relu), str(tmp_path / "r"), "--format", "npz"])) == (
        "unknown export format 'npz'; choose one of saelens, sparsify, dictionary_learning")
    assert not (tmp_path / "r").exists()


def test_eval_of_a_hub_reference_from_the_hf_cache(tmp_path, tiny_llama_dir, checkpoint_corpus, monkeypatch):
    import featsep
    from featsep.sae.io import export_sae
    from tests.helpers import hf_cache_repo

    sae = featsep.make_sae("topk", d_in=32, d_sae=64, k=4, hook_name=HOOK, hook_layer=1)
    export_sae(featsep.save_sae(sae, tmp_path / "sae"), tmp_path / "repo" / "tiny" / HOOK)
    hf_cache_repo(tmp_path / "hf", "someone/tiny-saes", tmp_path / "repo", "ab" * 20)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = [f"core.dataset={json.dumps(str(checkpoint_corpus))}", "core.context_size=16", "core.batch_size_prompts=2",
                "core.n_eval_reconstruction_batches=1", "core.n_eval_sparsity_variance_batches=1",
                f"cache_dir={json.dumps(str(tmp_path / 'cache'))}"]
    args = ["eval", f"hf://someone/tiny-saes/tiny/{HOOK}", "--evals", "core", "--model", str(tiny_llama_dir),
            "--out-dir", str(tmp_path / "results")]
    for s in settings:
        args += ["--set", s]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    result = json.loads((tmp_path / "results" / "core_eval_results.json").read_text())
    assert result["sae_lens_id"] == HOOK and result["eval_result_metrics"]["sparsity"]["l0"] <= 4
    missing = CliRunner().invoke(app, ["eval", "hf://someone/tiny-saes/tiny/blocks.0.hook_resid_post", "--evals", "core",
                                       "--model", str(tiny_llama_dir)])
    assert _one_error_line(missing).startswith(
        "hf://someone/tiny-saes/tiny/blocks.0.hook_resid_post: no 'tiny/blocks.0.hook_resid_post' in the local HF cache; "
        "run once with network, or fetch it with `hf download someone/tiny-saes")
    assert _one_error_line(CliRunner().invoke(app, ["eval", "hf://someone", "--evals", "core"])).startswith(
        "'hf://someone' is not a hub SAE reference")
    ref = f"hf://someone/tiny-saes/tiny/{HOOK}"
    done = CliRunner().invoke(app, ["export", ref, str(tmp_path / "dl"), "--format", "dictionary_learning"])
    assert done.exit_code == 0, done.output
    assert json.loads((tmp_path / "dl" / "config.json").read_text())["featsep_extra"] == {"exported_from": ref}
    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(featsep.load_sae(tmp_path / "dl")(x), sae(x), rtol=0, atol=1e-5)


def test_eval_of_a_released_sae_into_a_baseline_run_dir(tmp_path, tiny_llama_dir, checkpoint_corpus):
    """featsep eval PATH --baseline-dir: identity, core and competition in a run dir `featsep report`
    reads; an SAE without a recorded model or hook is asked for them, one line, exit 2."""
    import featsep
    from featsep.io import file_sha256
    from featsep.sae.io import export_sae

    export_sae(featsep.save_sae(featsep.make_sae("topk", d_in=32, d_sae=64, k=4), tmp_path / "sae"),
               tmp_path / "released", fmt="saelens")  # records neither model nor hook
    base = ["eval", str(tmp_path / "released"), "--evals", "core", "--baseline-dir", str(tmp_path / "b")]
    assert _one_error_line(CliRunner().invoke(app, base)) == (
        f"SAE {tmp_path / 'released'} records no model; pass --model NAME (the language model it was trained on)")
    assert _one_error_line(CliRunner().invoke(app, base + ["--model", str(tiny_llama_dir)])) == (
        f"SAE {tmp_path / 'released'} records no hook; pass --hook blocks.L.hook_resid_post (where it reads the "
        "residual stream)")
    assert not (tmp_path / "b").exists()
    settings = [f"core.dataset={json.dumps(str(checkpoint_corpus))}", "core.context_size=16",
                "core.batch_size_prompts=2", "core.n_eval_reconstruction_batches=1",
                "core.n_eval_sparsity_variance_batches=1", f"competition.dataset={json.dumps(str(checkpoint_corpus))}",
                "competition.n_tokens=256", "competition.batch_size=64", "competition.context_size=16",
                f"cache_dir={json.dumps(str(tmp_path / 'cache'))}"]
    args = base + ["--model", str(tiny_llama_dir), "--hook", HOOK]
    for s in settings:
        args += ["--set", s]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    config = json.loads((tmp_path / "b" / "config.json").read_text())["baseline"]
    assert config["source"] == str(tmp_path / "released") and config["format"] == "saelens"
    assert config["sha256"] == file_sha256(tmp_path / "released" / "sae_weights.safetensors")
    assert (config["model_name"], config["hook_name"]) == (str(tiny_llama_dir), HOOK)
    assert sorted(p.name for p in (tmp_path / "b" / "eval_results").iterdir()) == [
        "competition_eval_results.json", "core_eval_results.json"]
    done = CliRunner().invoke(app, ["report", str(tmp_path / "b")])
    assert done.exit_code == 0, done.output
    summary = (tmp_path / "b" / "report" / "summary.md").read_text()
    assert f"baseline: {tmp_path / 'released'}" in summary and "(baseline)" in summary
    both = CliRunner().invoke(app, args + ["--out-dir", str(tmp_path / "o")])
    assert _one_error_line(both) == "give either --out-dir or --baseline-dir: a baseline run dir holds its own results"
