"""examples/reproduce-*-gemma2.toml hold the reference runs' recipes exactly: every training
config field of ../shared/reference/*.final_info.json maps onto a featsep field of equal value;
and a hub model's evals default to SAEBench's datasets while offline models keep theirs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from featsep.config import RunConfig, SweepConfig, load_config
from featsep.evals.settings import SAEBENCH_DEFAULTS, resolve_settings

ROOT = Path(__file__).resolve().parents[1]
# beside the checkout (CI), or beside the folder of git worktrees
REFERENCE = next((p / "shared" / "reference" for p in ROOT.parents[:2] if (p / "shared" / "reference").is_dir()),
                 ROOT.parent / "shared" / "reference")
EXAMPLES = ROOT / "examples"
D_IN = 2304  # gemma-2-2b's d_model (cfg.activation_dim)
BATCH = 2048  # methods.md: SAE batch 2048

pytestmark = pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared/reference is beside the checkout in CI")


def reference(name: str) -> dict:
    return json.loads((REFERENCE / f"{name}.final_info.json").read_text())


def training(name: str) -> tuple[dict, dict]:
    section = reference(name)["training results for layer 12"]
    return section["config"], section["final_info"]


def check_common(cfg, ref: dict, info: dict) -> None:
    """Fields every reference run shares: model, hook, raw activations, steps, seed, evals."""
    assert cfg.model.name == ref["lm_name"]
    assert cfg.model.hook == f"blocks.{ref['layer']}.hook_resid_post"
    assert ref["submodule_name"] == f"resid_post_layer_{ref['layer']}"
    assert cfg.data.normalize is False  # sae_cfg_dict.normalize_activations == "none"
    assert cfg.train.tokens // cfg.train.batch_size == info["training_steps"]
    assert cfg.train.tokens % cfg.train.batch_size == 0 and cfg.train.batch_size == BATCH
    assert cfg.train.lr_decay_fraction == 0
    assert cfg.train.seed == ref.get("seed", 42)


def check_eval_configs(cfg, name: str) -> None:
    """Each eval setting equals the reference section's eval_config value it is named after."""
    ref = reference(name)
    core = ref["core evaluation results"]["eval_cfg"]
    settings = cfg.eval.settings
    assert cfg.data.dataset == core["dataset"] == settings["core"]["dataset"]
    assert cfg.data.context_length == core["context_size"]
    assert cfg.model.dtype == core["llm_dtype"]
    for key in ("context_size", "batch_size_prompts", "n_eval_reconstruction_batches",
                "n_eval_sparsity_variance_batches", "exclude_special_tokens_from_reconstruction"):
        assert settings["core"][key] == core[key], key
    renamed = {"random_seed": "seed", "dataset_names": "datasets", "probe_train_batch_size": "probe_batch_size",
               "dataset_size": "sparsity_rows", "seq_len": "sparsity_context"}
    sections = {"absorption": "absorption evaluation results", "sparse_probing": "sparse probing evaluation results",
                "scr": "scr evaluations results", "unlearning": "unlearning evaluation results"}
    for eval_name, section in sections.items():
        if section not in ref:
            continue
        ours = settings[eval_name]
        for key, value in ref[section]["eval_config"].items():
            field = renamed.get(key, key)
            if key == "dataset_names" and eval_name == "unlearning":
                assert ours["forget_questions"] + ours["retain_questions"] == value
            elif field in ours:
                assert ours[field] == value, (eval_name, key)
        if eval_name == "unlearning":
            assert ref[section]["eval_config"]["model_name"] == cfg.model.name + "-it"  # run with --model
        else:
            assert ref[section]["eval_config"]["llm_batch_size"] == cfg.model.batch_size


def test_momentum_recipe():
    cfg = load_config(EXAMPLES / "reproduce-momentum-gemma2.toml", model=SweepConfig)
    ref, info = training("seed-momentum-run5")
    check_common(cfg, ref, info)
    check_eval_configs(cfg, "seed-momentum-run5")
    assert cfg.train.lr is None and cfg.train.lr_warmup_steps == ref["warmup_steps"]
    runs = {m.name: m.combinations()[0][1] for m in cfg.methods}
    relu = [p for p in runs.values() if p.sae.architecture == "relu_l1"]
    assert len(relu) == 6
    from featsep.sae import make_sae

    for point in relu:
        assert point.sae.d_sae == ref["dict_size"] == info["dict_size"]
        assert point.sae.l1_coefficient == ref["l1_penalty"] == info["sparsity_penalty"]
        assert point.sae.l1_warmup_steps == 0 and point.sae.resample_every == 0  # resample_steps None
        sae = make_sae(point.sae.architecture, d_in=8, **point.sae.params())
        assert point.lr is None and cfg.train.lr is None
        assert sae.default_lr(cfg.train.optimizer) == ref["lr"] == info["learning_rate"]
    # run_5 (the reference file itself): beta 0.95, tau 0.4, l2 0.3 (the plot script's label)
    final = runs["momentum beta=0.95 tau=0.4 l2=0.3"].penalties[0]
    assert (final.name, final.mode, final.beta, final.tau, final.weight) == ("momentum", "reference", 0.95, 0.4, 0.3)
    plot = (REFERENCE / "seed-momentum-plot.py").read_text()
    for name, point in runs.items():
        if point.penalties:
            p = point.penalties[0]
            label = f"β={p.beta}, τ={p.tau}" + (f", λ={p.weight}" if name.endswith("l2=0.3") else "")
            assert label in plot, label
    topk = runs["topk baseline n=16384"].sae
    assert (topk.d_sae, topk.k, topk.aux_k, topk.aux_coefficient, topk.dead_tokens_threshold) == (
        16384, 320, D_IN // 2, 1 / 32, 10_000_000)
    assert runs["topk baseline n=16384"].lr == 2e-4 / (topk.d_sae / 16384) ** 0.5  # TopKTrainer's rule


def test_temporal_recipe():
    cfg = load_config(EXAMPLES / "reproduce-temporal-gemma2.toml", model=RunConfig)
    ref, info = training("seed-temporal-run1")
    check_common(cfg, ref, info)
    check_eval_configs(cfg, "seed-temporal-run1")
    check_eval_configs(cfg, "seed-temporal-baseline")
    assert ref["trainer_class"] == "TrainerTopK" and cfg.sae.architecture == "topk"
    assert cfg.sae.d_sae == ref["dict_size"] == info["dict_size"] and cfg.sae.k == ref["k"]
    assert cfg.train.tokens // cfg.train.batch_size == ref["steps"]
    assert cfg.train.lr == ref["lr"] and cfg.train.lr_warmup_steps == 0
    assert ref["activation_dim"] == D_IN and cfg.sae.aux_k == ref["activation_dim"] // 2
    assert (cfg.sae.aux_coefficient, cfg.sae.dead_tokens_threshold) == (1 / 32, 10_000_000)
    (penalty,) = cfg.penalties
    assert (penalty.name, penalty.mode, penalty.weight) == ("temporal", "reference", ref["ortho_weight"])
    assert (penalty.window_size, penalty.alpha_base) == (1000, 0.1)
    assert cfg.eval.settings["scr"] == {**cfg.eval.settings["tpp"]}  # SAEBench runs both from one config


def test_temporal_baseline_recipe():
    cfg = load_config(EXAMPLES / "reproduce-temporal-baseline-gemma2.toml", model=RunConfig)
    ref, info = training("seed-temporal-baseline")
    check_common(cfg, ref, info)
    assert cfg.sae.architecture == "relu_l1" and ref["trainer_class"] == "CustomTrainer"
    assert cfg.sae.d_sae == ref["dict_size"] == info["dict_size"]
    assert cfg.sae.l1_coefficient == ref["l1_penalty"] == info["sparsity_penalty"] and cfg.sae.l1_warmup_steps == 0
    assert cfg.train.lr == ref["lr"] == info["learning_rate"] and cfg.train.lr_warmup_steps == ref["warmup_steps"]
    assert ref["resample_steps"] is None and cfg.sae.resample_every == 0


DATASET_FIELDS = {"core": ["dataset"], "sparse_probing": ["datasets"], "scr": ["datasets"], "tpp": ["datasets"],
                  "unlearning": ["forget_questions", "retain_questions", "retain_corpus"]}


def test_hub_model_gets_saebench_datasets_offline_keeps_its_own():
    evals = list(DATASET_FIELDS)
    hub, _ = resolve_settings(evals, {}, model="google/gemma-2-2b")
    offline, _ = resolve_settings(evals, {}, model="gemma-3-270m")
    plain, _ = resolve_settings(evals, {})
    reference_probing = reference("seed-momentum-run5")["sparse probing evaluation results"]["eval_config"]
    reference_scr = reference("seed-temporal-run1")["scr evaluations results"]["eval_config"]
    reference_unlearning = reference("seed-temporal-run1")["unlearning evaluation results"]["eval_config"]
    assert hub["sparse_probing"].datasets == reference_probing["dataset_names"]
    assert hub["scr"].datasets == hub["tpp"].datasets == reference_scr["dataset_names"]
    assert hub["unlearning"].forget_questions + hub["unlearning"].retain_questions == reference_unlearning["dataset_names"]
    assert hub["core"].dataset == reference("seed-momentum-run5")["core evaluation results"]["eval_cfg"]["dataset"]
    from featsep.evals.sparse_probing import SAEBENCH_DATASETS
    from featsep.evals.unlearning.settings import SAEBENCH_RETAIN_SUBJECTS

    assert SAEBENCH_DEFAULTS["sparse_probing"]["datasets"] == SAEBENCH_DATASETS
    assert SAEBENCH_DEFAULTS["unlearning"]["retain_questions"] == SAEBENCH_RETAIN_SUBJECTS
    for name, fields in DATASET_FIELDS.items():
        for field in fields:
            assert getattr(hub[name], field) == SAEBENCH_DEFAULTS[name][field]
            assert getattr(offline[name], field) == getattr(plain[name], field) != getattr(hub[name], field)
    # a dataset the user names is kept on the hub model too
    named, _ = resolve_settings(["sparse_probing"], {"sparse_probing": {"datasets": ["bbc-news"]}},
                                model="google/gemma-2-2b")
    assert named["sparse_probing"].datasets == ["bbc-news"]


def test_hub_model_read_from_the_sae(tmp_path):
    """With no model given, the SAE's model_name decides (as `evaluate` loads that model)."""
    from featsep.sae import make_sae, save_sae

    for model_name, hub in (("google/gemma-2-2b", True), ("gemma-3-270m", False)):
        sae = make_sae("topk", d_in=8, d_sae=16, k=2, model_name=model_name)
        save_sae(sae, tmp_path / model_name.replace("/", "_"))
        for target in (sae, str(tmp_path / model_name.replace("/", "_"))):
            settings, _ = resolve_settings(["sparse_probing"], {}, sae_or_path=target)
            assert (settings["sparse_probing"].datasets == SAEBENCH_DEFAULTS["sparse_probing"]["datasets"]) is hub


def test_gemma2_study_lists_gemma_scope_at_every_released_l0_without_fetching(monkeypatch, tmp_path):
    """The study's Gemma Scope baselines: layer 12, width 16k, the five average_l0 folders SAELens's
    release list names for gemma-scope-2b-pt-res; reading the config touches no hub and no cache."""
    import featsep.sae.foreign

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(featsep.sae.foreign, "_hf_download", lambda *a, **k: pytest.fail("fetched while validating"))
    cfg = load_config(EXAMPLES / "separation-study-gemma2.toml", model=SweepConfig)
    (baseline,) = cfg.baselines
    prefix = "hf://google/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_"
    assert baseline.refs == [prefix + str(l0) for l0 in (22, 41, 82, 176, 445)]
    assert cfg.model.hook == "blocks.12.hook_resid_post"
    assert not (tmp_path / "empty-cache").exists()
