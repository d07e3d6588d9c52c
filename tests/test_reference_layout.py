"""final_info.json in the reference runs' layout: key by key against their files, and read by the
momentum study's plot script, unchanged, over run_0 ... run_5 (run_0 a real featsep training and
eval run end to end; run_1 ... run_5 written through the same writers from run_0's results).

The reference material lives in shared/reference beside the checkout (never copied here)."""

from __future__ import annotations

import ast
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from featsep.config import SweepConfig, validate
from featsep.evals.registry import get_eval
from featsep.evals.schema import eval_output
from featsep.sweep import run_sweep
from featsep.rundir import RunDir, training_results_key
from tests.evals.helpers import LETTERS_VOCAB, TOPIC_WORDS, WORDS
from tests.helpers import tiny_llama, word_tokenizer


def _reference_dir():
    """shared/reference beside the checkout (../shared), or beside a folder above it (worktrees)."""
    for parent in Path(__file__).resolve().parents[1:]:
        if (parent / "shared" / "reference").is_dir():
            return parent / "shared" / "reference"
    return None


REFERENCE = _reference_dir()
pytestmark = pytest.mark.skipif(REFERENCE is None, reason="../shared/reference (the reference runs' files) is absent")
REFERENCE_FILES = ("seed-momentum-run5", "seed-temporal-baseline", "seed-temporal-run1")
PLOT_SCRIPT = "seed-momentum-plot.py"
EVALS = ("core", "absorption", "sparse_probing")


def _reference(name: str) -> dict:
    return json.loads((REFERENCE / f"{name}.final_info.json").read_text())


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """Six real featsep runs (ReLU + L1 with and without the momentum penalty, TopK) on a tiny
    Llama whose vocabulary has first-letter words and two topics, trained on one activation
    pass and evaluated by `featsep sweep`'s code: run_0 ... run_5, as the momentum study."""
    tmp = tmp_path_factory.mktemp("reference-layout")
    model_dir = tmp / "model"
    tiny_llama(vocab_size=4 + len(LETTERS_VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
               initializer_range=0.5).save_pretrained(model_dir)
    word_tokenizer(LETTERS_VOCAB).save_pretrained(model_dir)
    rng = random.Random(0)
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30)))}) + "\n"
                              for _ in range(200)))
    topics = tmp / "topics.jsonl"
    topics.write_text("".join(json.dumps({"text": " ".join(rng.choice(TOPIC_WORDS[c]) for _ in range(30)), "label": c})
                              + "\n" for c in "xy" for _ in range(40)))
    root = tmp / "study"
    cfg = validate(SweepConfig, {
        "name": "reference-layout", "out_dir": str(root),
        "model": {"name": str(model_dir), "hook": "blocks.0.hook_resid_post", "batch_size": 4, "device": "cpu"},
        "data": {"dataset": str(corpus), "context_length": 16, "shuffle_buffer": 8, "norm_estimate_batches": 2},
        "train": {"tokens": 1024, "batch_size": 128, "checkpoint_every": 8, "log_every": 4, "lr": 1e-3},
        "eval": {"evals": list(EVALS), "settings": {
            "core": {"dataset": str(corpus), "context_size": 16, "batch_size_prompts": 4,
                     "n_eval_reconstruction_batches": 2, "n_eval_sparsity_variance_batches": 2},
            "absorption": {"max_words": 120, "n_icl_examples": 3, "probe_epochs": 5, "k_sparse_probe_num_epochs": 5,
                           "max_k_value": 3, "min_probe_f1": -1.0, "min_letters": 1},
            "sparse_probing": {"datasets": [str(topics)], "probe_train_set_size": 25, "probe_test_set_size": 10,
                               "k_values": [1, 2], "context_length": 32},
        }},
        "methods": [  # six real runs, as the momentum study had: run_0 ... run_5 on one activation pass
            {"name": "relu_l1+momentum", "sae": {"architecture": "relu_l1", "d_sae": 64, "l1_warmup_steps": 2},
             "penalties": [{"name": "momentum"}], "grid": {"sae.l1_coefficient": [0.04, 0.08]}},
            {"name": "relu_l1", "sae": {"architecture": "relu_l1", "d_sae": 64, "l1_warmup_steps": 2},
             "grid": {"sae.l1_coefficient": [0.04, 0.08]}},
            {"name": "topk", "sae": {"architecture": "topk", "d_sae": 64}, "grid": {"sae.k": [4, 8]}},
        ],
    })
    run_sweep(cfg, evaluate=True)
    return root


def _keys(node, path: str = "") -> set[str]:
    """Every key path of a JSON value (list items share the path "[]")."""
    if isinstance(node, dict):
        return {p for k, v in node.items() for p in {f"{path}.{k}"} | _keys(v, f"{path}.{k}")}
    if isinstance(node, list):
        return {p for item in node for p in _keys(item, f"{path}[]")}
    return set()


# settings are featsep's own (its evals' settings and SAE config differ from SAEBench's): their
# blocks are compared as blocks, not key by key
SETTINGS_BLOCKS = (".eval_config.", ".eval_cfg.", ".sae_cfg_dict.", ".config.")


def _layout_keys(section: dict) -> set[str]:
    return {p for p in _keys(section) if not any(b in p + "." and not p.endswith(b[:-1]) for b in SETTINGS_BLOCKS)}


@pytest.mark.parametrize("reference_name", REFERENCE_FILES)
def test_sections_have_every_key_of_the_reference_runs(study, reference_name):
    """Each section the real run wrote holds every key path of the same section in the reference
    runs' files (metrics, per-letter and per-dataset details, SAEBench's bookkeeping)."""
    ours = RunDir(study / "run_0").read_final_info()
    reference = _reference(reference_name)
    layer_key = training_results_key(0)
    assert layer_key in ours
    for key, section in reference.items():
        mine = ours[layer_key] if key.startswith("training results for layer") else ours.get(key)
        if mine is None:
            assert key not in [get_eval(e).final_info_key for e in EVALS], key
            continue
        missing = _layout_keys(section) - _keys(mine)
        assert not missing, f"{reference_name} [{key!r}]: featsep lacks {sorted(missing)}"


def test_training_config_has_the_reference_trainer_keys(study):
    config = RunDir(study / "run_0").read_training().config
    momentum_run = _reference("seed-momentum-run5")["training results for layer 12"]["config"]
    assert set(momentum_run) <= set(config), set(momentum_run) - set(config)
    assert config["l1_penalty"] == 0.04 and config["resample_steps"] is None and config["layer"] == 0


def test_core_keeps_every_explained_variance_and_the_reference_key_holds_the_legacy_one(study):
    rd = RunDir(study / "run_0")
    file_rq = rd.read_eval("core").eval_result_metrics["reconstruction_quality"]
    rq = rd.read_final_info()["core evaluation results"]["metrics"]["reconstruction_quality"]
    assert rq["explained_variance"] == rq["explained_variance_legacy"] == file_rq["explained_variance_legacy"]
    assert rq["explained_variance_conventional"] == file_rq["explained_variance"]
    assert rq["explained_variance_saebench"] == file_rq["explained_variance_saebench"]
    assert file_rq["explained_variance"] != file_rq["explained_variance_legacy"]  # two quantities, both kept


def test_absorption_and_probing_sections_use_the_reference_names(study):
    rd = RunDir(study / "run_0")
    info = rd.read_final_info()
    absorption, result = info["absorption evaluation results"], rd.read_eval("absorption")
    mean = result.eval_result_metrics["mean"]
    assert absorption["eval_result_metrics"]["mean"]["mean_absorption_score"] == mean["mean_full_absorption_score"]
    assert len(absorption["eval_result_details"]) == len(result.eval_result_details) > 0
    for ours, theirs in zip(absorption["eval_result_details"], result.eval_result_details):
        assert ours["absorption_rate"] == theirs["full_absorption_rate"]
        assert ours["num_absorption"] == theirs["num_full_absorption"]
        assert ours["absorption_rate"] == ours["num_absorption"] / ours["num_probe_true_positives"]
    probing = info["sparse probing evaluation results"]
    assert [d["dataset_name"] for d in probing["eval_result_details"]] == [
        d["dataset_name"] + "_results" for d in rd.read_eval("sparse_probing").eval_result_details]
    assert probing["sae_cfg_dict"] == rd.read_eval("sparse_probing").sae_cfg_dict


def test_scr_tpp_and_unlearning_sections_match_the_reference_layout(tmp_path):
    """Written through the registry's converters from results in featsep's schema; SCR's fields
    stay on top of the shared SCR/TPP section whichever eval ran last."""
    baseline = _reference("seed-temporal-baseline")
    scr_ref = baseline["scr and tpp evaluations results"]
    cfg = {"model_name": "tiny", "hook_name": "blocks.0.hook_resid_post"}
    scr = eval_output("scr", cfg, scr_ref["eval_result_metrics"], scr_ref["eval_result_details"], {}, "sae", {"d_sae": 8})
    tpp = eval_output("tpp", cfg, {"tpp_metrics": {"tpp_threshold_2_total_metric": 0.2}},
                      [{"dataset_name": "x_tpp_results", "tpp_threshold_2_total_metric": 0.2}], {}, "sae", {"d_sae": 8})
    unlearning_ref = baseline["unlearning evaluation results"]
    unlearning = eval_output("unlearning", cfg, unlearning_ref["eval_result_metrics"], [], {}, "sae", {"d_sae": 8})
    for order in (("scr", "tpp"), ("tpp", "scr")):
        rd = RunDir(tmp_path / "-".join(order))
        for name in (*order, "unlearning"):
            spec = get_eval(name)
            result = {"scr": scr, "tpp": tpp, "unlearning": unlearning}[name]
            rd.write_eval(name, result, spec.final_info_key, merge=spec.merge_section, section=spec.final_info_section)
        info = rd.read_final_info()
        section = info["scr and tpp evaluations results"]
        assert section["eval_type_id"] == "scr" and section["eval_result_details"] == scr_ref["eval_result_details"]
        assert section["eval_result_metrics"] == {**scr_ref["eval_result_metrics"], "tpp_metrics": tpp["eval_result_metrics"]["tpp_metrics"]}
        for key, mine in (("scr and tpp evaluations results", section),
                          ("unlearning evaluation results", info["unlearning evaluation results"])):
            missing = _layout_keys(baseline[key]) - _keys(mine)
            assert not missing, f"[{key!r}]: featsep lacks {sorted(missing)}"


# The plot script has no `import json` (its load_results raises NameError, which its bare
# `except: continue` swallows, so run as it stands it draws four empty charts whatever the files
# hold). It runs unchanged with `json` supplied as a global; each saved figure's bars are read back.
PLOT_RUNNER = """
import json, runpy, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
figures, savefig = {}, plt.savefig
def recording_savefig(fname, *args, **kwargs):
    savefig(fname, *args, **kwargs)
    ax = plt.gca()
    figures[fname] = {"labels": [t.get_text() for t in ax.get_xticklabels()],
                      "bars": [[p.get_height() for p in c.patches] for c in ax.containers]}
plt.savefig = recording_savefig
runpy.run_path(sys.argv[1], init_globals={"json": json} if sys.argv[2] == "with-json" else None, run_name="__main__")
print("FIGURES=" + json.dumps(figures))
"""


def _plot(study: Path, mode: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", PLOT_RUNNER, str(REFERENCE / PLOT_SCRIPT), mode], cwd=study,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    line = next(l for l in proc.stdout.splitlines() if l.startswith("FIGURES="))
    return json.loads(line[len("FIGURES="):])


def test_the_reference_plot_script_reads_six_featsep_runs(study):
    tree = ast.parse((REFERENCE / PLOT_SCRIPT).read_text())
    labels = next(ast.literal_eval(n.value) for n in tree.body
                  if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "labels")
    saved = [n.args[0].value for n in ast.walk(tree) if isinstance(n, ast.Call)
             and getattr(n.func, "attr", None) == "savefig"]
    assert list(labels) == [f"run_{i}" for i in range(6)] and len(saved) == 4
    figures = _plot(study, "with-json")
    assert sorted(figures) == sorted(saved)
    infos = [RunDir(study / run).read_final_info() for run in labels]
    core = [i["core evaluation results"]["metrics"] for i in infos]
    expected = {
        "absorption_comparison.png": [[i["absorption evaluation results"]["eval_result_metrics"]["mean"]
                                       ["mean_absorption_score"] for i in infos]],
        "reconstruction_quality.png": [[m["reconstruction_quality"]["explained_variance"] for m in core],
                                       [m["reconstruction_quality"]["mse"] for m in core]],
        "sparsity_metrics.png": [[m["sparsity"]["l0"] for m in core], [m["sparsity"]["l1"] for m in core]],
        "sparse_probing_accuracy.png": [[i["sparse probing evaluation results"]["eval_result_metrics"]["sae"]
                                         ["sae_test_accuracy"] for i in infos]],
    }
    for name, bars in expected.items():
        assert (study / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert figures[name]["labels"] == list(labels.values()), name  # one bar group per run, all six
        assert len(figures[name]["bars"]) == len(bars), name
        for drawn, values in zip(figures[name]["bars"], bars):
            assert drawn == pytest.approx(values), name
    # as the script stands (no `import json`) it reads no run at all: every chart is empty
    plain = _plot(study, "plain")
    assert sorted(plain) == sorted(saved)
    assert all(f["bars"] and all(bars == [] for bars in f["bars"]) for f in plain.values())
