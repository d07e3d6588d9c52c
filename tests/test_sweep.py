"""Sweeps and the config-to-run pipeline, end to end on a tiny local model directory."""

from __future__ import annotations

import json
import re

import pytest
import torch

from featsep.config import ConfigError, RunConfig, SweepConfig, load_config, validate
from featsep.sweep import expand_sweep, run_sweep
from featsep.pipeline import is_trained, resume_from_dir, run_from_config


def _shared(model_dir, corpus, out_dir) -> dict:
    return {
        "out_dir": str(out_dir),
        "model": {"name": str(model_dir), "hook": "blocks.1.hook_resid_post", "batch_size": 4},
        "data": {"dataset": str(corpus), "context_length": 16, "shuffle_buffer": 8, "norm_estimate_batches": 2},
        "train": {"tokens": 1024, "batch_size": 128, "checkpoint_every": 4, "log_every": 2, "lr": 1e-3},
    }


def _sweep_cfg(model_dir, corpus, out_dir) -> SweepConfig:
    data = _shared(model_dir, corpus, out_dir)
    data["methods"] = [
        {"name": "topk", "sae": {"architecture": "topk", "d_sae": 64}, "grid": {"sae.k": [2, 4]}},
        {
            "name": "topk+momentum",
            "sae": {"architecture": "topk", "d_sae": 64, "k": 4},
            "penalties": [{"name": "momentum"}],
            "grid": {"penalties.0.weight": [0.1]},
        },
        {"name": "relu_l1", "sae": {"architecture": "relu_l1", "d_sae": 64, "l1_warmup_steps": 2}, "lr": 3e-3},
    ]
    return validate(SweepConfig, data)


def test_expand_sweep_grid_order_labels_and_overrides(tiny_llama_dir, checkpoint_corpus, tmp_path):
    specs = expand_sweep(_sweep_cfg(tiny_llama_dir, checkpoint_corpus, tmp_path))
    assert [s.name for s in specs] == ["run_0", "run_1", "run_2", "run_3"]
    assert [s.sae.k for s in specs[:3]] == [2, 4, 4]
    assert specs[0].label == "topk (k=2)" and specs[3].label == "relu_l1"
    assert specs[2].penalties[0].name == "momentum"
    assert specs[2].penalties[0].weight == 0.1
    assert [s.method for s in specs] == ["topk", "topk", "topk+momentum", "relu_l1"]
    assert [s.lr for s in specs] == [None, None, None, 3e-3]


def test_a_grid_over_the_methods_lr():
    cfg = validate(SweepConfig, {"methods": [{"name": "m", "sae": {"architecture": "topk", "d_sae": 8, "k": 2},
                                              "lr": 1e-3, "grid": {"lr": [2e-3, 4e-3]}}]})
    specs = expand_sweep(cfg)
    assert [s.lr for s in specs] == [2e-3, 4e-3]
    assert [s.label for s in specs] == ["m (lr=0.002)", "m (lr=0.004)"]


def test_expand_sweep_product_of_two_keys():
    cfg = validate(SweepConfig, {"methods": [{
        "name": "m", "sae": {"architecture": "topk", "d_sae": 8},
        "grid": {"sae.k": [1, 2, 3], "sae.d_sae": [8, 16]},
    }]})
    specs = expand_sweep(cfg)
    assert [(s.sae.k, s.sae.d_sae) for s in specs] == [
        (1, 8), (1, 16), (2, 8), (2, 16), (3, 8), (3, 16)
    ]


@pytest.mark.parametrize(
    "method, message",
    [
        ({"name": "m", "sae": {"architecture": "topk"}, "grid": {"train.lr": [1]}}, "must be 'lr' or start with"),
        ({"name": "m", "sae": {"architecture": "topk"}, "grid": {"lr": [1e-3, -1]}}, "lr"),
        ({"name": "m", "sae": {"architecture": "topk"}, "grid": {"sae.k": []}}, "non-empty list"),
        ({"name": "m", "sae": {"architecture": "topk"}, "grid": {"penalties.0.weight": [1]}}, "'penalties' is an empty list"),
    ],
)
def test_expand_sweep_errors(method, message):
    with pytest.raises(ConfigError, match=message):
        expand_sweep(validate(SweepConfig, {"methods": [method]}))


def test_duplicate_method_names_are_rejected():
    m = {"name": "same", "sae": {"architecture": "topk"}}
    with pytest.raises(ConfigError, match="unique"):
        expand_sweep(validate(SweepConfig, {"methods": [m, m]}))


def test_sweep_trains_every_run_once_and_skips_finished_runs(tiny_llama_dir, checkpoint_corpus, tmp_path, capsys):
    out = tmp_path / "study"
    cfg = _sweep_cfg(tiny_llama_dir, checkpoint_corpus, out)
    run_sweep(cfg, evaluate=False)
    manifest = json.loads((out / "sweep.json").read_text())
    assert [r["run"] for r in manifest["runs"]] == ["run_0", "run_1", "run_2", "run_3"]
    assert manifest["runs"][2]["penalty"] == "momentum"
    for i in range(4):
        run = out / f"run_{i}"
        assert is_trained(run)
        lines = (run / "metrics.jsonl").read_text().splitlines()
        assert json.loads(lines[-1])["step"] == 8  # 1024 tokens / 128 per batch
    # the method's lr for relu_l1, [train] lr for the others
    lrs = [json.loads((out / f"run_{i}" / "metrics.jsonl").read_text().splitlines()[0])["lr"] for i in range(4)]
    assert lrs == [1e-3, 1e-3, 1e-3, 3e-3]
    momentum_log = json.loads((out / "run_2" / "metrics.jsonl").read_text().splitlines()[-1])
    assert any(k.startswith("loss/momentum") for k in momentum_log)
    sae_cfg = json.loads((out / "run_0" / "sae" / "cfg.json").read_text())
    assert sae_cfg["hook_name"] == "blocks.1.hook_resid_post" and sae_cfg["d_in"] == 32
    assert sae_cfg["normalization_factor"] > 0

    weights = (out / "run_1" / "sae" / "sae_weights.safetensors").read_bytes()
    capsys.readouterr()
    run_sweep(cfg, evaluate=False)
    assert "4 of 4 runs already trained" in capsys.readouterr().out
    assert (out / "run_1" / "sae" / "sae_weights.safetensors").read_bytes() == weights

    # a different study in the same dir is refused rather than mixed in
    other = cfg.model_copy(deep=True)
    other.methods[0].grid = {"sae.k": [3]}
    with pytest.raises(ConfigError, match="different sweep"):
        run_sweep(other, evaluate=False)


def test_train_pipeline_resume_equals_uninterrupted(tiny_llama_dir, checkpoint_corpus, tmp_path):
    from featsep.sae import load_sae

    base = _shared(tiny_llama_dir, checkpoint_corpus, tmp_path / "full")
    base["sae"] = {"architecture": "topk", "d_sae": 64, "k": 4}
    full = run_from_config(validate(RunConfig, base))

    # "kill" a second run after its step-4 checkpoint by training only half the tokens, then
    # resume with the full budget through the saved config (as `featsep train --resume` does)
    half = json.loads(json.dumps(base))
    half["out_dir"] = str(tmp_path / "killed")
    half["train"]["tokens"] = 512
    half["train"]["lr_decay_fraction"] = 0.0
    base_nodecay = json.loads(json.dumps(base))
    base_nodecay["train"]["lr_decay_fraction"] = 0.0
    base_nodecay["out_dir"] = str(tmp_path / "full_nodecay")
    full_nodecay = run_from_config(validate(RunConfig, base_nodecay))
    killed = run_from_config(validate(RunConfig, half))
    for f in ("sae", "final_info.json"):  # what a kill before the end leaves missing
        target = killed / f
        if target.is_dir():
            import shutil

            shutil.rmtree(target)
        else:
            target.unlink()
    resume_from_dir(killed, overrides=["train.tokens=1024"])
    a, b = load_sae(full_nodecay / "sae"), load_sae(killed / "sae")
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert is_trained(full)


def test_sweep_killed_before_its_first_checkpoint_starts_again(tiny_llama_dir, checkpoint_corpus, tmp_path, capsys):
    """Rerunning the sweep continues runs that hold metrics but no checkpoint (they used to be
    refused as 'already holds a training run') from step 0, to the same weights."""
    import shutil

    from featsep.rundir import RunDir
    from featsep.sae import load_sae

    data = _shared(tiny_llama_dir, checkpoint_corpus, tmp_path / "study")
    data["methods"] = [{"name": "topk", "sae": {"architecture": "topk", "d_sae": 64}, "grid": {"sae.k": [2, 4]}}]
    cfg = validate(SweepConfig, data)
    run_sweep(cfg, evaluate=False)
    runs = [RunDir(tmp_path / "study" / f"run_{i}") for i in range(2)]
    reference = [load_sae(r.sae_dir) for r in runs]
    for r in runs:
        shutil.rmtree(r.checkpoint_dir), shutil.rmtree(r.sae_dir), r.final_info_file.unlink()
        assert r.read_metrics()
    capsys.readouterr()
    run_sweep(cfg, evaluate=False)
    assert f"no checkpoint in {tmp_path / 'study'} yet: starting from step 0" in capsys.readouterr().out
    for r, ref in zip(runs, reference):
        again = load_sae(r.sae_dir)
        assert all(torch.equal(getattr(ref, n), getattr(again, n)) for n in ("W_enc", "W_dec", "b_enc", "b_dec"))


def test_resume_from_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resume_from_dir(tmp_path)


def test_example_configs_validate():
    from pathlib import Path

    examples = Path(__file__).resolve().parent.parent / "examples"
    files = sorted(examples.glob("*.toml"))
    assert files
    for f in files:
        model = SweepConfig if "methods" in f.read_text() else RunConfig
        cfg = load_config(f, model=model)
        if model is SweepConfig:
            assert expand_sweep(cfg)


def test_resume_changes_allow_list_and_first_forbidden_change(tmp_path):
    from featsep.pipeline import resume_changes

    saved = {"sae": {"architecture": "topk", "k": 4}, "penalties": [], "train": {"log_every": 10, "lr": 1e-3},
             "eval": {"evals": ["core"]}}
    safe = {**saved, "train": {"log_every": 5, "lr": 1e-3}, "eval": {"evals": ["core", "absorption"]}}
    assert resume_changes(tmp_path, saved, safe) == [
        "train.log_every 10 -> 5", 'eval.evals ["core"] -> ["core", "absorption"]']
    assert resume_changes(tmp_path, saved, saved) == []
    added = {**saved, "penalties": [{"name": "momentum", "weight": 0.1}]}
    with pytest.raises(ConfigError, match=rf'^{tmp_path} was trained with penalties = \[\], not \["momentum"\],'):
        resume_changes(tmp_path, saved, added)
    with pytest.raises(ConfigError, match=r"penalties.0.weight = 0.1, not 0.2"):
        resume_changes(tmp_path, added, {**saved, "penalties": [{"name": "momentum", "weight": 0.2}]})
    with pytest.raises(ConfigError, match=r"train.lr = 0.001, not \(unset\)"):
        resume_changes(tmp_path, saved, {**saved, "train": {"log_every": 10}})


def _seeded_cfg(out_dir=None, seeds=(1, 2), model_dir=None, corpus=None) -> SweepConfig:
    data = _shared(model_dir, corpus, out_dir) if model_dir is not None else {}
    data["seeds"] = list(seeds)
    data["methods"] = [
        {"name": "topk", "sae": {"architecture": "topk", "d_sae": 64}, "grid": {"sae.k": [2, 4]}},
        {"name": "relu_l1", "sae": {"architecture": "relu_l1", "d_sae": 64, "l1_warmup_steps": 2}, "lr": 3e-3},
    ]
    return validate(SweepConfig, data)


def test_expand_sweep_with_seeds_names_labels_and_manifest():
    from featsep.sweep import sweep_manifest

    cfg = _seeded_cfg(seeds=(7, 3))
    specs = expand_sweep(cfg)
    assert [s.name for s in specs] == [f"run_{i}" for i in range(6)]
    assert [(s.method, s.params, s.seed) for s in specs] == [
        ("topk", {"sae.k": 2}, 7), ("topk", {"sae.k": 2}, 3), ("topk", {"sae.k": 4}, 7),
        ("topk", {"sae.k": 4}, 3), ("relu_l1", {}, 7), ("relu_l1", {}, 3),
    ]
    assert [s.label for s in specs] == [
        "topk (k=2, seed=7)", "topk (k=2, seed=3)", "topk (k=4, seed=7)", "topk (k=4, seed=3)",
        "relu_l1 (seed=7)", "relu_l1 (seed=3)",
    ]
    runs = sweep_manifest(cfg, specs)["runs"]
    assert [(r["run"], r["seed"], r["point"]) for r in runs] == [
        ("run_0", 7, "topk (k=2)"), ("run_1", 3, "topk (k=2)"), ("run_2", 7, "topk (k=4)"),
        ("run_3", 3, "topk (k=4)"), ("run_4", 7, "relu_l1"), ("run_5", 3, "relu_l1"),
    ]
    assert runs[0]["params"] == {"sae.k": 2}


def test_expand_sweep_without_seeds_is_unchanged():
    from featsep.sweep import sweep_manifest

    cfg = _seeded_cfg()
    plain = validate(SweepConfig, {"methods": [m.model_dump() for m in cfg.methods]})
    specs = expand_sweep(plain)
    assert [(s.name, s.label, s.seed) for s in specs] == [
        ("run_0", "topk (k=2)", None), ("run_1", "topk (k=4)", None), ("run_2", "relu_l1", None)]
    assert all("seed" not in r and "point" not in r for r in sweep_manifest(plain, specs)["runs"])


@pytest.mark.parametrize("seeds, message", [([], "at least 1 item"), ([1, 1], "repeat a seed")])
def test_bad_seeds_are_refused(seeds, message):
    with pytest.raises(ConfigError, match=message):
        validate(SweepConfig, {"seeds": seeds, "methods": [{"name": "m", "sae": {"architecture": "topk"}}]})


def test_two_seed_sweep_shares_one_activation_pass_and_seeds_differ(tiny_llama_dir, checkpoint_corpus, tmp_path,
                                                                     monkeypatch):
    import featsep.data
    from featsep.sae import load_sae

    passes = []
    real = featsep.data.stream_from_config
    monkeypatch.setattr(featsep.data, "stream_from_config", lambda *a, **k: passes.append(1) or real(*a, **k))
    out = tmp_path / "study"
    data = _shared(tiny_llama_dir, checkpoint_corpus, out)
    data["seeds"] = [1, 2]
    data["methods"] = [{"name": "topk", "sae": {"architecture": "topk", "d_sae": 64, "k": 4}}]
    cfg = validate(SweepConfig, data)
    run_sweep(cfg, evaluate=False)
    assert len(passes) == 1  # both seeds trained on one stream
    manifest = json.loads((out / "sweep.json").read_text())
    assert [(r["run"], r["label"], r["seed"], r["point"]) for r in manifest["runs"]] == [
        ("run_0", "topk (seed=1)", 1, "topk"), ("run_1", "topk (seed=2)", 2, "topk")]
    a, b = load_sae(out / "run_0" / "sae"), load_sae(out / "run_1" / "sae")
    assert (a.cfg.seed, b.cfg.seed) == (1, 2)
    assert not torch.equal(a.W_dec, b.W_dec)
    # same seed, same data: run_1 trained alone equals run_1 trained beside run_0 (the seed, not
    # the company, decides the SAE)
    alone = data | {"out_dir": str(tmp_path / "alone"), "seeds": [2]}
    run_sweep(validate(SweepConfig, alone), evaluate=False)
    c = load_sae(tmp_path / "alone" / "run_0" / "sae")
    assert all(torch.equal(getattr(b, n), getattr(c, n)) for n in ("W_enc", "W_dec", "b_enc", "b_dec"))
    assert len(passes) == 2

    # a rerun skips both; other seeds in the same dir are refused, not mixed in
    run_sweep(cfg, evaluate=False)
    with pytest.raises(ConfigError, match="different sweep"):
        run_sweep(validate(SweepConfig, data | {"seeds": [3, 4]}), evaluate=False)


def test_evaluate_runs_sends_each_eval_to_its_model(tmp_path, monkeypatch):
    import featsep.evals as evals_pkg
    from featsep.pipeline import evaluate_runs

    calls = []
    monkeypatch.setattr(evals_pkg, "evaluate", lambda dirs, evals, model, **kw: calls.append((evals, model, kw["dtype"])))
    cfg = validate(RunConfig, {"model": {"name": "gemma-3-270m", "dtype": "float32"}, "eval": {
        "evals": ["core", "unlearning"], "models": {"unlearning": "smollm2-135m-instruct"}}})
    evaluate_runs([tmp_path / "run"], cfg.eval, cfg.model)
    assert calls == [(["core"], "gemma-3-270m", "float32"), (["unlearning"], "smollm2-135m-instruct", "auto")]


# --- baselines: released SAEs beside the trained methods -------------------------------------------
HOOK = "blocks.1.hook_resid_post"


def _saelens_jumprelu(path, d_in=32, hook=HOOK):
    """A SAELens 6 JumpReLU dir in that library's layout (cfg.json with metadata + safetensors)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(5)
    path.mkdir(parents=True)
    (path / "cfg.json").write_text(json.dumps({
        "d_in": d_in, "d_sae": 48, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": False,
        "normalize_activations": "none", "reshape_activations": "none", "architecture": "jumprelu",
        "metadata": {"model_name": "tiny", "hook_name": hook, "hook_head_index": None, "prepend_bos": True,
                     "context_size": 16, "dataset_path": "local", "sae_lens_version": "6.5.1"}}))
    save_file({"W_enc": torch.randn(d_in, 48, generator=g) * 0.3, "b_enc": torch.zeros(48),
               "W_dec": torch.randn(48, d_in, generator=g) * 0.3, "b_dec": torch.zeros(d_in),
               "threshold": torch.full((48,), 0.05)}, str(path / "sae_weights.safetensors"))
    return path


def _sparsify(path, k):
    from featsep.sae import make_sae, save_sae
    from featsep.sae.io import export_sae

    sae = make_sae("topk", d_in=32, d_sae=64, k=k, hook_name=HOOK, seed=k)
    export_sae(save_sae(sae, path.with_name(path.name + "-featsep")), path, fmt="sparsify")
    return path


def _baseline_cfg(model_dir, corpus, out_dir, baselines) -> dict:
    data = _shared(model_dir, corpus, out_dir)
    data["methods"] = [{"name": "topk", "sae": {"architecture": "topk", "d_sae": 64, "k": 4}}]
    data["baselines"] = baselines
    data["eval"] = {"evals": ["core", "competition"], "settings": {
        "core": {"dataset": str(corpus), "context_size": 16, "batch_size_prompts": 2,
                 "n_eval_reconstruction_batches": 1, "n_eval_sparsity_variance_batches": 1},
        "competition": {"dataset": str(corpus), "n_tokens": 256, "batch_size": 64, "context_size": 16}}}
    return data


def test_a_sweep_evaluates_and_reports_foreign_baselines(tiny_llama_dir, checkpoint_corpus, tmp_path):
    from featsep.report import build_report
    from featsep.report.collect import collect
    from featsep.rundir import RunDir

    jr = _saelens_jumprelu(tmp_path / "released" / "saelens-jr")
    # sparsify keeps each SAE in a folder named by its hookpoint
    sp2, sp8 = _sparsify(tmp_path / "released" / "k2" / HOOK, 2), _sparsify(tmp_path / "released" / "k8" / HOOK, 8)
    cfg = validate(SweepConfig, _baseline_cfg(tiny_llama_dir, checkpoint_corpus, tmp_path / "study", [
        {"name": "saelens-jr", "sae": str(jr)}, {"name": "sparsify", "saes": [str(sp2), str(sp8)]}]))
    out = run_sweep(cfg)

    manifest = json.loads((out / "sweep.json").read_text())
    assert [r["run"] for r in manifest["runs"]] == ["run_0"]
    assert manifest["baselines"] == [
        {"run": "baseline_0", "label": "saelens-jr", "method": "saelens-jr", "baseline": True, "source": str(jr)},
        {"run": "baseline_1", "label": "sparsify (k2)", "method": "sparsify", "baseline": True, "source": str(sp2)},
        {"run": "baseline_2", "label": "sparsify (k8)", "method": "sparsify", "baseline": True, "source": str(sp8)}]
    for name, fmt in (("baseline_0", "saelens"), ("baseline_1", "sparsify"), ("baseline_2", "sparsify")):
        run = RunDir(out / name)
        assert run.read_config().baseline.format == fmt and run.read_config().baseline.hook_name == HOOK
        assert run.eval_names() == ["competition", "core"] and run.read_training() is None
    assert RunDir(out / "run_0").eval_names() == ["competition", "core"]

    records = {r.run: r for r in collect(out).records}
    assert records["baseline_1"].method == records["baseline_2"].method == "sparsify (baseline)"
    assert records["baseline_0"].baseline["source"] == str(jr) and records["run_0"].baseline is None
    assert records["baseline_2"].metrics["core.l0"] == pytest.approx(8.0)
    for rec in records.values():  # training numbers of a baseline are missing, not zero
        assert any(k.startswith("train.") for k in rec.metrics) == (rec.baseline is None)
    page = build_report(out)
    summary = (page.parent / "summary.md").read_text()
    assert f"baseline: {sp8}" in summary and "trained here" in summary
    assert "sparsify (baseline)" in summary and "not trained here" in summary
    assert "topk vs sparsify (baseline) at matched L0 4: ahead on" in summary
    assert (page.parent / "figures" / "frontier.png").is_file()
    # run again: baselines and the trained run are kept, nothing is evaluated twice
    before = (out / "baseline_0" / "eval_results" / "core_eval_results.json").read_bytes()
    run_sweep(cfg)
    assert (out / "baseline_0" / "eval_results" / "core_eval_results.json").read_bytes() == before


@pytest.mark.parametrize("baseline, message", [
    ({"name": "b", "sea": "x"}, "sea"),
    ({"name": "b"}, "give sae = \"PATH_OR_REF\" or saes = [...], exactly one"),
    ({"name": "b", "sae": "/"}, "'/' holds no SAE featsep can load"),
    ({"name": "topk", "sae": "hf://google/gemma-scope-2b-pt-res/layer_1/width_16k/average_l0_82"}, "already a method's"),
    ({"name": "gs", "sae": "hf://google/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82"},
     "reads blocks.12.hook_resid_post (its layer folder says so) but the sweep's model.hook is blocks.1.hook_resid_post"),
])
def test_baseline_config_errors_are_one_line_when_the_file_is_read(baseline, message, monkeypatch, tmp_path,
                                                                  tiny_llama_dir, checkpoint_corpus):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # validation never fetches
    data = _baseline_cfg(tiny_llama_dir, checkpoint_corpus, tmp_path / "out", [baseline])
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        validate(SweepConfig, data)
    assert len(str(e.value).splitlines()) <= 2  # validate's "invalid config:" header, then the one error
    if baseline.get("sea"):
        assert "name, sae, saes" in str(e.value)


def test_baseline_that_does_not_fit_the_model_is_refused_before_the_model_loads(tiny_llama_dir, checkpoint_corpus,
                                                                                tmp_path, monkeypatch):
    import featsep.pipeline

    monkeypatch.setattr(featsep.pipeline, "train_specs", lambda *a, **k: pytest.fail("the model was loaded"))
    wide = _saelens_jumprelu(tmp_path / "wide", d_in=16)
    other = _saelens_jumprelu(tmp_path / "other", hook="blocks.0.hook_resid_post")
    for path, message in ((wide, "has d_in=16 but"), (other, "reads blocks.0.hook_resid_post, not the sweep's"),
                          (tmp_path / "not-yet", f"SAE {tmp_path / 'not-yet'} does not exist")):
        cfg = validate(SweepConfig, _baseline_cfg(tiny_llama_dir, checkpoint_corpus, tmp_path / "out" / path.name,
                                                  [{"name": "b", "sae": str(path)}]))
        with pytest.raises((ConfigError, FileNotFoundError), match=re.escape(message)):
            run_sweep(cfg)
