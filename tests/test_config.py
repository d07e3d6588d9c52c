"""`--set` overrides on nested config dicts, lists of tables included."""

import pytest

from featsep.config import ConfigError, apply_overrides


def test_overrides_reach_sections_and_list_entries():
    data = {"train": {"lr": 1e-3}, "penalties": [{"name": "temporal", "mode": "reference"}, {"name": "momentum"}]}
    apply_overrides(data, ["train.lr=3e-4", "penalties.0.mode=specified", "penalties.1.tau=0.5",
                           "eval.evals=[\"core\"]"])
    assert data == {"train": {"lr": 3e-4}, "eval": {"evals": ["core"]},
                    "penalties": [{"name": "temporal", "mode": "specified"}, {"name": "momentum", "tau": 0.5}]}


@pytest.mark.parametrize("override, message", [
    ("penalties.2.mode=x", r"'penalties' is a list of 2 entries; pick one by its index 0..1"),
    ("penalties.mode=x", r"'penalties' is a list of 2 entries"),
    ("train.lr.x=1", r"'train.lr' is a value, not a section"),
    ("tags.0.x=1", r"'tags.0' is a value, not a section"),
])
def test_bad_overrides_name_the_cause(override, message):
    data = {"train": {"lr": 1e-3}, "penalties": [{"name": "a"}, {"name": "b"}], "tags": ["x"]}
    with pytest.raises(ConfigError, match=message):
        apply_overrides(data, [override])


# --- the typed run configuration ---------------------------------------------------------------
from typer.testing import CliRunner  # noqa: E402

from featsep.config import RunConfig, SweepConfig, validate  # noqa: E402


@pytest.mark.parametrize("data, where, valid", [
    ({"penalties": [{"name": "momentum", "betaa": 0.9}]}, "penalties.0.betaa", "beta, mode, name, normalize, tau, weight"),
    ({"sae": {"architecture": "topk", "kk": 8}}, "sae.kk", "aux_coefficient, aux_k"),
    ({"sae": {"architecture": "jumprelu", "k": 8}}, "sae.k", "bandwidth"),
    ({"train": {"lrr": 1e-3}}, "train.lrr", "lr, lr_decay_fraction"),
    ({"data": {"shuffle_bufer": 3}}, "data.shuffle_bufer", "shuffle_buffer"),
    ({"sae": {"hook_name": "blocks.1"}}, "sae.hook_name", "architecture"),  # filled from [model]
])
def test_misspelt_key_names_the_field_and_the_valid_ones(data, where, valid):
    with pytest.raises(ConfigError) as e:
        validate(RunConfig, data)
    assert f"{where}: unknown field" in str(e.value) and valid in str(e.value)


@pytest.mark.parametrize("data, message", [
    ({"sae": {"architecture": "topkk"}}, "unknown SAE architecture; choose one of: batchtopk, jumprelu"),
    ({"penalties": [{"weight": 1}]}, "unknown Penalty name; choose one of: momentum, orthogonality, temporal"),
    ({"sae": {"k": 64, "d_sae": 32}}, "k=64 exceeds d_sae=32"),  # the architecture's own cross-field check
    ({"penalties": [{"name": "momentum", "beta": 1.5}]}, "penalties.0.beta: Input should be less than 1"),
    ({"eval": {"evals": ["cor"]}}, "unknown eval 'cor'"),
    ({"eval": {"evals": ["core"], "settings": {"core": {"sed": 1}}}}, r"core.sed: unknown field \(check the spelling; valid here: .*seed"),
    ({"eval": {"evals": [], "settings": {"absorption": {"sed": 1}}}}, "absorption.sed: unknown field"),
    ({"eval": {"evals": ["sparse_probing"], "settings": {"sparse_probing": {"datasets": ["bbc-newz"]}}}},
     "sparse_probing.datasets: unknown probing dataset 'bbc-newz': registered probing sets are bbc-news"),
    ({"eval": {"evals": ["scr"], "settings": {"scr": {"datasets": ["bbc-newz"]}}}}, "scr.datasets: .*unknown"),
])
def test_bad_values_are_refused_when_the_file_is_read(data, message):
    with pytest.raises(ConfigError, match=message):
        validate(RunConfig, data)


def test_one_local_probing_file_is_a_list(tmp_path):
    table = tmp_path / "labelled.jsonl"
    table.write_text('{"text": "a", "label": "x"}\n')
    cfg = validate(RunConfig, {"eval": {"evals": ["sparse_probing"], "settings": {"sparse_probing": {"datasets": str(table)}}}})
    from featsep.evals.settings import resolve_settings

    settings, _ = resolve_settings(cfg.eval.evals, cfg.eval.settings)
    assert settings["sparse_probing"].datasets == [str(table)]


def test_sections_are_typed_with_defaults_defined_once():
    from featsep.data.config import DataConfig
    from featsep.data.stream import ActivationStream

    cfg = validate(RunConfig, {"sae": {"architecture": "batchtopk", "k": 8}, "penalties": [{"name": "temporal"}]})
    assert cfg.sae.architecture == "batchtopk" and cfg.sae.k == 8 and cfg.sae.d_sae == 4096
    assert cfg.sae.params()["threshold_lr"] == 0.01  # the architecture's own default
    assert cfg.penalties[0].window_size == 1000 and "d_sae" not in cfg.penalties[0].params()
    assert RunConfig().sae.architecture == "topk"
    # the stream's library defaults are the [data] section's
    import inspect

    defaults = inspect.signature(ActivationStream.from_lm).parameters
    for name in ("shuffle_buffer", "context_length", "seed", "normalize", "norm_estimate_batches"):
        assert defaults[name].default == getattr(DataConfig(), name), name


def test_every_sweep_grid_point_is_checked_when_the_file_is_read():
    base = {"name": "m", "sae": {"architecture": "topk", "d_sae": 8}}
    ok = validate(SweepConfig, {"methods": [{**base, "grid": {"sae.k": [1, 2]}}]})  # k 32 > 8 alone: fine
    assert [p.sae.k for _, p in ok.methods[0].combinations()] == [1, 2]
    with pytest.raises(ConfigError, match=r"grid point \{'sae.k': 9\}: sae: k=9 exceeds d_sae=8"):
        validate(SweepConfig, {"methods": [{**base, "grid": {"sae.k": [1, 9]}}]})
    with pytest.raises(ConfigError, match="sae.kk: unknown field"):
        validate(SweepConfig, {"methods": [{**base, "grid": {"sae.kk": [1]}}]})


def test_train_keywords_are_checked_against_the_train_section():
    import torch

    from featsep import make_sae, train

    sae = make_sae("topk", d_in=4, d_sae=8, k=2)
    with pytest.raises(TypeError, match="unknown setting.*checkpont_every.*valid: .*checkpoint_every"):
        train([sae], [torch.randn(8, 4)], steps=1, checkpont_every=5)


def test_eval_settings_fail_before_any_model_loads_or_trains(tmp_path, monkeypatch):
    """A misspelt eval setting used to surface after training had finished."""
    from featsep.cli import app
    import featsep.lm.loading as loading

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was validated")

    monkeypatch.setattr(loading, "load_lm", no_model)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", "examples/offline-default.toml", "--set", f"out_dir={out}",
        "--set", 'eval.evals=["core"]', "--set", "eval.settings.core.n_eval_reconstruction_batchs=2",
    ])
    assert result.exit_code == 2, result.output
    assert "core.n_eval_reconstruction_batchs: unknown field" in result.output
    assert not out.exists()


def test_settings_of_evals_not_selected_are_checked_but_kept():
    """A config that drops its evals (`--set eval.evals=[]`), or a rerun that only asks for the
    evals still missing, keeps its other sections: checked, not refused."""
    from featsep.evals.settings import resolve_settings

    cfg = validate(RunConfig, {"eval": {"evals": [], "settings": {"core": {"seed": 3}, "absorption": {"seed": 4}}}})
    settings, runner = resolve_settings(["absorption"], cfg.eval.settings)
    assert list(settings) == ["absorption"] and settings["absorption"].seed == 4 and runner == {}


def test_train_device_none_or_a_torch_device():
    import torch

    from featsep import make_sae, train
    from featsep.train.config import TrainConfig

    assert TrainConfig(device=None).device == "auto" and TrainConfig(device=torch.device("cpu")).device == "cpu"
    for device in (None, torch.device("cpu")):
        sae = make_sae("topk", d_in=4, d_sae=8, k=2)
        train([sae], [torch.randn(8, 4)], steps=1, device=device, lr_decay_fraction=0, progress=False)


@pytest.mark.parametrize("dataset, message", [
    ("bbc-newz", "unknown dataset 'bbc-newz': registered text corpora are bbc-news"),
    ("./missing.jsonl", r"no such file or directory: './missing.jsonl'; check the path \(data.dataset\)"),
])
def test_data_dataset_is_checked_when_read_unless_a_cache_is_used(dataset, message):
    with pytest.raises(ConfigError, match=message):
        validate(RunConfig, {"data": {"dataset": dataset}})
    assert validate(RunConfig, {"data": {"dataset": dataset, "cache": "cache/x"}}).data.cache == "cache/x"
    assert validate(RunConfig, {"data": {"dataset": "owner/name"}}).data.dataset == "owner/name"  # a hub set


def test_an_eval_can_run_on_another_model():
    """SAEBench runs unlearning on the instruct model: [eval.models] says so in the run config."""
    cfg = validate(RunConfig, {"model": {"name": "gemma-3-270m"}, "eval": {
        "evals": ["core", "unlearning", "absorption"], "models": {"unlearning": "smollm2-135m-instruct"}}})
    assert cfg.eval.by_model(cfg.eval.evals, cfg.model.name) == {
        "gemma-3-270m": ["core", "absorption"], "smollm2-135m-instruct": ["unlearning"]}
    with pytest.raises(ConfigError, match="eval.models names 'unlearnin', which is not an eval"):
        validate(RunConfig, {"eval": {"models": {"unlearnin": "x"}}})
