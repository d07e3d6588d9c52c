"""Released SAEs (SAELens, Gemma Scope, sparsify, dictionary_learning) load as featsep SAEs with
the same maths. Each fixture is written here in the library's own layout, and each loaded SAE is
compared with a dense reference of that library's formula; no peer library is imported.

Layouts followed (read from the libraries' sources, not copied):
- SAELens: sae_lens/saes/sae.py (SAEConfig fields, process_sae_in: x - b_dec * apply_b_dec_to_input),
  standard_sae.py / topk_sae.py (TopK: topk of hidden_pre, then ReLU) / jumprelu_sae.py
  (ReLU(pre) * (pre > threshold)); loading/pretrained_sae_loaders.py (scaling_factor tensor,
  defaults apply_b_dec_to_input=True); SAELens 5 wrote flat keys and activation_fn_kwargs {"k"}.
- Gemma Scope: SAELens's gemma_2 loader (params.npz with W_enc, W_dec, b_enc, b_dec, threshold;
  apply_b_dec_to_input False), path layer_L/width_W/average_l0_X.
- sparsify: sparsify/sparse_coder.py (load_from_disk: cfg.json with d_in + SparseCoderConfig
  fields, sae.safetensors with encoder.weight [n, d], encoder.bias, W_dec [n, d], b_dec; encode:
  x - b_dec, TopK of ReLU(encoder(x))), sparsify/config.py.
- dictionary_learning: dictionary_learning/dictionary.py (AutoEncoder: bias, encoder, decoder
  Linear; JumpReluAutoEncoder: W_enc, b_enc, W_dec, b_dec, threshold, apply_b_dec_to_input False),
  trainers/top_k.py (AutoEncoderTopK: k, threshold buffers, b_dec), BatchTopKSAE (threshold
  encode by default), trainers' `config` dicts ({"trainer": {...}} in config.json).
"""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import featsep
from featsep.sae.foreign import (EXPORT_FORMATS, export_files, featsep_hook, foreign_format, gemma_scope_metadata,
                                 resolve_sae_ref, saelens_hf_ref)
from featsep.sae.io import export_sae, fold_normalization
from tests.helpers import hf_cache_repo

D, N, K = 8, 32, 4


def rand(*shape, seed, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


X = rand(64, D, seed=100)


def rel_err(a, b):
    return float((a.detach() - b).abs().max() / b.abs().max().clamp_min(1e-12))


def check(sae, codes_ref, recon_ref, topk=False):
    codes = sae.encode(X)
    assert rel_err(codes, codes_ref) < 1e-5
    assert torch.equal(codes != 0, codes_ref != 0)  # identical active sets
    assert (codes_ref != 0).any() and (codes_ref == 0).any()  # the check is not vacuous
    if topk:
        assert int((codes != 0).sum(dim=-1).max()) <= K
    assert rel_err(sae.decode(codes), recon_ref) < 1e-5
    assert rel_err(sae(X), recon_ref) < 1e-5


def topk_ref(pre, k):
    values, indices = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values.relu())


def weights(seed, threshold=False):
    w = {"W_enc": rand(D, N, seed=seed), "b_enc": rand(N, seed=seed + 1, scale=0.3),
         "W_dec": rand(N, D, seed=seed + 2), "b_dec": rand(D, seed=seed + 3, scale=0.5)}
    if threshold:  # some negative: the formulas then reduce to a ReLU for those latents
        w["threshold"] = torch.rand(N, generator=torch.Generator().manual_seed(seed + 4)) * 1.5 - 0.2
    return w


# --- SAELens ----------------------------------------------------------------------------------
def saelens5_cfg(arch, **extra):
    cfg = {"architecture": arch, "d_in": D, "d_sae": N, "dtype": "float32", "device": "cpu",
           "model_name": "gpt2-small", "hook_name": "blocks.6.hook_resid_pre", "hook_layer": 6,
           "hook_head_index": None, "activation_fn_str": "relu", "activation_fn_kwargs": {},
           "apply_b_dec_to_input": True, "finetuning_scaling_factor": False,
           "sae_lens_training_version": "5.3.0", "prepend_bos": True, "dataset_path": "Skylion007/openwebtext",
           "dataset_trust_remote_code": True, "context_size": 128, "normalize_activations": "none",
           "neuronpedia_id": None, "model_from_pretrained_kwargs": {}}
    cfg.update(extra)
    return cfg


def saelens6_cfg(arch, **extra):
    cfg = {"d_in": D, "d_sae": N, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none", "architecture": arch,
           "metadata": {"model_name": "pythia-70m-deduped", "hook_name": "blocks.3.hook_resid_post",
                        "hook_head_index": None, "prepend_bos": True, "context_size": 1024,
                        "dataset_path": "monology/pile-uncopyrighted", "sae_lens_version": "6.5.1"}}
    cfg.update(extra)
    return cfg


def write_saelens(path, cfg, tensors):
    path.mkdir(parents=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "sae_weights.safetensors"))
    return path


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_saelens5_standard(tmp_path, apply_b_dec):
    w = weights(1)
    scale = torch.rand(N, generator=torch.Generator().manual_seed(9)) + 0.5
    cfg = saelens5_cfg("standard", apply_b_dec_to_input=apply_b_dec, finetuning_scaling_factor=True)
    path = write_saelens(tmp_path / "sae", cfg, {**w, "scaling_factor": scale})
    assert foreign_format(path) == "saelens"
    sae = featsep.load_sae(path)
    assert sae.architecture == "relu_l1"
    codes = ((X - w["b_dec"] * apply_b_dec) @ w["W_enc"] + w["b_enc"]).relu()
    check(sae, codes, (codes * scale) @ w["W_dec"] + w["b_dec"])
    # metadata: resid_pre of layer 6 is the output of layer 5
    assert (sae.cfg.hook_name, sae.cfg.hook_layer) == ("blocks.5.hook_resid_post", 5)
    assert (sae.cfg.model_name, sae.cfg.dataset_path, sae.cfg.context_size) == ("gpt2-small", "Skylion007/openwebtext", 128)


@pytest.mark.parametrize("layout", ["saelens5_kwargs", "saelens4_activation_fn", "saelens6"])
def test_saelens_topk(tmp_path, layout):
    w = weights(11)
    cfg = {"saelens5_kwargs": saelens5_cfg("topk", activation_fn_kwargs={"k": K}),
           "saelens4_activation_fn": saelens5_cfg("standard", activation_fn_str="topk", activation_fn_kwargs={"k": K}),
           "saelens6": saelens6_cfg("topk", k=K)}[layout]
    sae = featsep.load_sae(write_saelens(tmp_path / "sae", cfg, w))
    assert sae.architecture == "topk" and sae.cfg.k == K
    codes = topk_ref((X - w["b_dec"]) @ w["W_enc"] + w["b_enc"], K)
    check(sae, codes, codes @ w["W_dec"] + w["b_dec"], topk=True)
    if layout == "saelens6":
        assert (sae.cfg.hook_name, sae.cfg.model_name, sae.cfg.context_size) == (
            "blocks.3.hook_resid_post", "pythia-70m-deduped", 1024)


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_saelens6_jumprelu(tmp_path, apply_b_dec):
    """BatchTopK SAEs are saved by SAELens this way too (architecture jumprelu, per-latent threshold)."""
    w = weights(21, threshold=True)
    sae = featsep.load_sae(write_saelens(tmp_path / "sae", saelens6_cfg("jumprelu", apply_b_dec_to_input=apply_b_dec), w))
    assert sae.architecture == "jumprelu"
    pre = (X - w["b_dec"] * apply_b_dec) @ w["W_enc"] + w["b_enc"]
    codes = pre.relu() * (pre > w["threshold"])
    check(sae, codes, codes @ w["W_dec"] + w["b_dec"])


def test_saelens_refusals_are_one_clear_line(tmp_path):
    w = weights(31)
    cases = {
        "norm": (saelens5_cfg("standard", normalize_activations="constant_norm_rescale"), w, "normalize_activations.*constant_norm_rescale"),
        "expected": (saelens6_cfg("standard", normalize_activations="expected_average_only_in"), w, "scaling factor is not stored"),
        "gated": (saelens5_cfg("gated"), w, "gated SAEs have no featsep architecture"),
        "unknown": (saelens6_cfg("transcoder"), w, "unknown SAELens architecture 'transcoder'"),
        "missing": (saelens6_cfg("standard"), {k: v for k, v in w.items() if k != "b_enc"}, "lacks tensor 'b_enc'"),
        "shape": (saelens6_cfg("standard"), {**w, "W_dec": w["W_dec"][:, :-1]}, r"'W_dec' has shape \(32, 7\), expected \(32, 8\)"),
        "no_k": (saelens6_cfg("topk"), w, "without an integer k"),
        "no_threshold": (saelens6_cfg("jumprelu"), w, "lacks tensor 'threshold'"),
    }
    for name, (cfg, tensors, message) in cases.items():
        path = write_saelens(tmp_path / name, cfg, tensors)
        with pytest.raises(ValueError, match=message) as info:
            featsep.load_sae(path)
        assert "\n" not in str(info.value)


def test_featsep_dirs_still_take_the_featsep_path(tmp_path):
    sae = featsep.make_sae("topk", d_in=D, d_sae=N, k=K)
    path = featsep.save_sae(sae, tmp_path / "own")
    assert foreign_format(path) is None
    assert type(featsep.load_sae(path)) is type(sae)


# --- Gemma Scope ------------------------------------------------------------------------------
def write_gemma_scope(root, w):
    folder = root / "models--google--gemma-scope-2b-pt-res" / "snapshots" / "abc123" / "layer_12" / "width_16k" / "average_l0_82"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **{k: v.numpy() for k, v in w.items()})
    return folder


def test_gemma_scope_params_npz(tmp_path):
    w = weights(41, threshold=True)
    folder = write_gemma_scope(tmp_path, w)
    for path in (folder, folder / "params.npz"):
        assert foreign_format(path) == "gemma_scope"
        sae = featsep.load_sae(path)
        assert sae.architecture == "jumprelu"
        pre = X @ w["W_enc"] + w["b_enc"]  # Gemma Scope does not subtract b_dec first
        codes = pre.relu() * (pre > w["threshold"])
        check(sae, codes, codes @ w["W_dec"] + w["b_dec"])
        assert (sae.cfg.hook_name, sae.cfg.hook_layer, sae.cfg.model_name) == (
            "blocks.12.hook_resid_post", 12, "google/gemma-2-2b")


def test_gemma_scope_metadata_from_path(tmp_path):
    assert gemma_scope_metadata(tmp_path / "gemma-scope-9b-it-res/layer_20/width_131k/canonical/params.npz") == {
        "context_size": 1024, "model_name": "google/gemma-2-9b-it", "hook_name": "blocks.20.hook_resid_post", "hook_layer": 20}
    assert gemma_scope_metadata(tmp_path / "gemma-scope-2b-pt-mlp/layer_3/width_16k/average_l0_50/params.npz")["hook_name"] == "blocks.3.hook_mlp_out"
    # a renamed copy says nothing about its hook: left empty, evals ask for --set hook=...
    assert gemma_scope_metadata(tmp_path / "my_sae/params.npz") == {"context_size": 1024}


def test_gemma_scope_corrupt_files(tmp_path):
    w = weights(51, threshold=True)
    (tmp_path / "missing").mkdir()
    np.savez(tmp_path / "missing" / "params.npz", **{k: v.numpy() for k, v in w.items() if k != "threshold"})
    (tmp_path / "shape").mkdir()
    np.savez(tmp_path / "shape" / "params.npz", **{**{k: v.numpy() for k, v in w.items()}, "b_enc": np.zeros(N + 1, np.float32)})
    (tmp_path / "pickled").mkdir()
    np.savez(tmp_path / "pickled" / "params.npz", W_enc=np.array([{"a": 1}], dtype=object))
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "params.npz").write_bytes(b"\x00not a zip")
    for name, message in (("missing", "lacks tensor 'threshold'"), ("shape", r"'b_enc' has shape \(33,\)"),
                          ("pickled", "not a plain npz"), ("garbage", "corrupt")):
        with pytest.raises(ValueError, match=message) as info:
            featsep.load_sae(tmp_path / name)
        assert "\n" not in str(info.value)


# --- sparsify ---------------------------------------------------------------------------------
def write_sparsify(root, hookpoint, w, **cfg_extra):
    folder = root / hookpoint
    folder.mkdir(parents=True)
    cfg = {"activation": "topk", "expansion_factor": N // D, "normalize_decoder": True, "num_latents": 0,
           "k": K, "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": D, **cfg_extra}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in w.items()}, str(folder / "sae.safetensors"))
    return folder


def sparsify_weights(seed):
    return {"encoder.weight": rand(N, D, seed=seed), "encoder.bias": rand(N, seed=seed + 1, scale=0.3),
            "W_dec": rand(N, D, seed=seed + 2), "b_dec": rand(D, seed=seed + 3, scale=0.5)}


def test_sparsify_checkpoint(tmp_path):
    w = sparsify_weights(61)
    folder = write_sparsify(tmp_path / "checkpoints" / "run", "layers.6", w)
    assert foreign_format(folder) == "sparsify"
    sae = featsep.load_sae(folder)
    assert sae.architecture == "topk" and sae.cfg.k == K
    pre = ((X - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"]).relu()  # sparsify: TopK of ReLU
    values, indices = pre.topk(K, dim=-1)
    codes = torch.zeros_like(pre).scatter(-1, indices, values)
    check(sae, codes, codes @ w["W_dec"] + w["b_dec"], topk=True)
    assert (sae.cfg.hook_name, sae.cfg.hook_layer) == ("blocks.6.hook_resid_post", 6)


def test_sparsify_refusals(tmp_path):
    w = sparsify_weights(71)
    cases = {
        "transcoder": ({"transcode": True}, w, "transcode=true"),
        "skip": ({"skip_connection": True}, w, "skip_connection=true"),
        "groupmax": ({"activation": "groupmax"}, w, "activation 'groupmax'"),
        "missing": ({}, {k: v for k, v in w.items() if k != "W_dec"}, "lacks tensor 'W_dec'"),
        "shape": ({"num_latents": N * 2}, w, r"'encoder.weight' has shape \(32, 8\), expected \(64, 8\)"),
    }
    for name, (extra, tensors, message) in cases.items():
        folder = write_sparsify(tmp_path / name, "layers.1", tensors, **extra)
        with pytest.raises(ValueError, match=message) as info:
            featsep.load_sae(folder)
        assert "\n" not in str(info.value)


# --- dictionary_learning ----------------------------------------------------------------------
def write_dl(folder, dict_class, state, **trainer_extra):
    folder.mkdir(parents=True)
    trainer = {"trainer_class": dict_class + "Trainer", "dict_class": dict_class, "activation_dim": D,
               "dict_size": N, "lr": 1e-4, "steps": 100, "seed": 0, "device": "cuda", "layer": 3,
               "lm_name": "EleutherAI/pythia-70m-deduped", "wandb_name": dict_class,
               "submodule_name": "resid_post_layer_3", **trainer_extra}
    (folder / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {"d_submodule": D, "io": "out"}}))
    torch.save(state, folder / "ae.pt")
    return folder


def test_dictionary_learning_autoencoder(tmp_path):
    enc, b, dec, bias = rand(N, D, seed=81), rand(N, seed=82, scale=0.3), rand(D, N, seed=83), rand(D, seed=84)
    folder = write_dl(tmp_path / "relu", "AutoEncoder",
                      {"bias": bias, "encoder.weight": enc, "encoder.bias": b, "decoder.weight": dec})
    for path in (folder, folder / "ae.pt"):
        sae = featsep.load_sae(path)
        assert sae.architecture == "relu_l1"
        codes = ((X - bias) @ enc.T + b).relu()
        check(sae, codes, codes @ dec.T + bias)
        assert (sae.cfg.hook_name, sae.cfg.model_name) == ("blocks.3.hook_resid_post", "EleutherAI/pythia-70m-deduped")


def topk_state(seed, threshold):
    return {"k": torch.tensor(K, dtype=torch.int), "threshold": torch.tensor(threshold),
            "decoder.weight": rand(D, N, seed=seed), "encoder.weight": rand(N, D, seed=seed + 1),
            "encoder.bias": rand(N, seed=seed + 2, scale=0.3), "b_dec": rand(D, seed=seed + 3, scale=0.5)}


def test_dictionary_learning_topk(tmp_path):
    s = topk_state(91, 0.7)  # the threshold is unused by AutoEncoderTopK's default encode
    sae = featsep.load_sae(write_dl(tmp_path / "topk", "AutoEncoderTopK", s, k=K))
    assert sae.architecture == "topk" and sae.cfg.k == K
    post = ((X - s["b_dec"]) @ s["encoder.weight"].T + s["encoder.bias"]).relu()
    values, indices = post.topk(K, dim=-1)
    codes = torch.zeros_like(post).scatter(-1, indices, values)
    check(sae, codes, codes @ s["decoder.weight"].T + s["b_dec"], topk=True)


@pytest.mark.parametrize("threshold", [0.6, -1.0])  # -1.0: never set in training
def test_dictionary_learning_batchtopk(tmp_path, threshold):
    s = topk_state(101, threshold)
    sae = featsep.load_sae(write_dl(tmp_path / "btk", "BatchTopKSAE", s, k=K))
    assert sae.architecture == "batchtopk"
    post = ((X - s["b_dec"]) @ s["encoder.weight"].T + s["encoder.bias"]).relu()
    codes = post * (post > threshold)  # BatchTopKSAE.encode(use_threshold=True)
    check(sae, codes, codes @ s["decoder.weight"].T + s["b_dec"])


def test_dictionary_learning_jumprelu(tmp_path):
    w = weights(111, threshold=True)
    sae = featsep.load_sae(write_dl(tmp_path / "jr", "JumpReluAutoEncoder", w))
    assert sae.architecture == "jumprelu"
    pre = X @ w["W_enc"] + w["b_enc"]  # apply_b_dec_to_input = False
    codes = (pre * (pre > w["threshold"])).relu()
    check(sae, codes, codes @ w["W_dec"] + w["b_dec"])


class NotAStateDict:
    pass


def test_dictionary_learning_refusals(tmp_path):
    s = topk_state(121, 0.5)
    gated = {"decoder_bias": rand(D, seed=1), "encoder.weight": rand(N, D, seed=2), "r_mag": rand(N, seed=3),
             "gate_bias": rand(N, seed=4), "mag_bias": rand(N, seed=5), "decoder.weight": rand(D, N, seed=6)}
    cases = {
        "gated": ("GatedAutoEncoder", gated, "gated SAEs have no featsep architecture"),
        "unknown": ("CrossCoder", s, "unknown dict_class 'CrossCoder'"),
        "missing": ("AutoEncoderTopK", {k: v for k, v in s.items() if k != "b_dec"}, "lacks tensor 'b_dec'"),
        "shape": ("AutoEncoderTopK", {**s, "decoder.weight": rand(N, D, seed=7)}, r"'decoder.weight' has shape \(32, 8\), expected \(8, 32\)"),
        "pickled": ("AutoEncoder", {"bias": NotAStateDict()}, "weights_only=True"),
    }
    for name, (dict_class, state, message) in cases.items():
        folder = write_dl(tmp_path / name, dict_class, state)
        with pytest.raises(ValueError, match=message) as info:
            featsep.load_sae(folder)
        assert "\n" not in str(info.value)
    (tmp_path / "nocfg").mkdir()
    torch.save(s, tmp_path / "nocfg" / "ae.pt")
    with pytest.raises(ValueError, match="no config.json"):
        featsep.load_sae(tmp_path / "nocfg")


# --- hook names -------------------------------------------------------------------------------
def test_hook_names_become_featsep_hooks():
    assert featsep_hook("blocks.8.hook_resid_post") == ("blocks.8.hook_resid_post", 8)
    assert featsep_hook("blocks.8.hook_resid_pre") == ("blocks.7.hook_resid_post", 7)
    assert featsep_hook("blocks.0.hook_resid_pre") == ("blocks.0.hook_resid_pre", 0)  # the embeddings: kept
    assert featsep_hook("blocks.4.hook_mlp_out") == ("blocks.4.hook_mlp_out", 4)  # not a layer output: kept
    for hf in ("layers.5", "model.layers.5", "gpt_neox.layers.5", "transformer.h.5"):
        assert featsep_hook(hf) == ("blocks.5.hook_resid_post", 5)
    assert featsep_hook("layers.5.mlp") == ("layers.5.mlp", -1)
    assert featsep_hook(None) == ("", -1) and featsep_hook("") == ("", -1)


# --- export -----------------------------------------------------------------------------------
# Each export is read back twice: by a dense formula of the library's own encode applied to the
# raw files (so exporter and loader cannot agree on a wrong layout), and by featsep.load_sae.
def _trained_like(arch, seed):
    """An SAE of `arch` with non-trivial biases, thresholds and a normalisation factor."""
    sae = featsep.make_sae(arch, d_in=D, d_sae=N, seed=seed, **({} if arch in ("relu_l1", "jumprelu") else {"k": K}))
    with torch.no_grad():
        for i, p in enumerate((sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)):
            p.add_(rand(*p.shape, seed=seed * 10 + i, scale=0.3))
        if arch == "jumprelu":
            sae.log_threshold.copy_((torch.rand(N, generator=torch.Generator().manual_seed(seed)) * 0.8 + 0.05).log())
        if arch in ("batchtopk", "matryoshka"):
            sae.threshold.fill_(0.4)
    sae.cfg.normalization_factor = 0.5
    sae.cfg.hook_name, sae.cfg.hook_layer, sae.cfg.model_name = "blocks.3.hook_resid_post", 3, "EleutherAI/pythia-70m"
    return sae


def library_encode_decode(fmt, folder, x):
    """(codes, reconstruction) as the library computes them from its files (see the module docstring)."""
    from safetensors.torch import load_file

    if fmt == "saelens":
        cfg, t = json.loads((folder / "cfg.json").read_text()), load_file(folder / "sae_weights.safetensors")
        pre = (x - t["b_dec"] * cfg["apply_b_dec_to_input"]) @ t["W_enc"] + t["b_enc"]
        codes = {"standard": lambda: pre.relu(), "topk": lambda: topk_ref(pre, cfg["k"]),
                 "jumprelu": lambda: pre.relu() * (pre > t["threshold"])}[cfg["architecture"]]()
        return codes, codes @ t["W_dec"] + t["b_dec"]
    if fmt == "sparsify":
        cfg, t = json.loads((folder / "cfg.json").read_text()), load_file(folder / "sae.safetensors")
        post = ((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"]).relu()
        values, indices = post.topk(cfg["k"], dim=-1)
        codes = torch.zeros_like(post).scatter(-1, indices, values)
        return codes, codes @ t["W_dec"] + t["b_dec"]
    trainer = json.loads((folder / "config.json").read_text())["trainer"]
    s = torch.load(folder / "ae.pt", weights_only=True)
    if trainer["dict_class"] == "JumpReluAutoEncoder":
        pre = x @ s["W_enc"] + s["b_enc"]
        codes = (pre * (pre > s["threshold"])).relu()
        return codes, codes @ s["W_dec"] + s["b_dec"]
    b_dec = s["bias"] if trainer["dict_class"] == "AutoEncoder" else s["b_dec"]
    post = ((x - b_dec) @ s["encoder.weight"].T + s["encoder.bias"]).relu()
    if trainer["dict_class"] == "AutoEncoderTopK":
        values, indices = post.topk(int(s["k"]), dim=-1)
        codes = torch.zeros_like(post).scatter(-1, indices, values)
    elif trainer["dict_class"] == "BatchTopKSAE":
        codes = post * (post > s["threshold"])
    else:
        codes = post
    return codes, codes @ s["decoder.weight"].T + b_dec


EXPORTABLE = [(fmt, arch) for fmt in EXPORT_FORMATS for arch in ("relu_l1", "topk", "jumprelu", "batchtopk", "matryoshka")
              if fmt != "sparsify" or arch == "topk"]


@pytest.mark.parametrize("fmt,arch", EXPORTABLE)
def test_export_round_trip(tmp_path, fmt, arch):
    sae = _trained_like(arch, seed=200 + len(arch))
    src = featsep.save_sae(sae, tmp_path / "sae")
    export_sae(src, tmp_path / "out", fmt=fmt)
    assert foreign_format(tmp_path / "out") == fmt
    # the featsep maths on raw activations: normalise, encode; decode, undo the normalisation
    f = sae.cfg.normalization_factor
    codes_ref = sae.encode(X * f).detach()
    recon_ref = (sae.decode(codes_ref) / f).detach()
    lib_codes, lib_recon = library_encode_decode(fmt, tmp_path / "out", X)
    assert rel_err(lib_codes, codes_ref) < 1e-6 and rel_err(lib_recon, recon_ref) < 1e-6
    back = featsep.load_sae(tmp_path / "out")
    # SAELens saves the BatchTopK family as jumprelu; dictionary_learning has BatchTopKSAE for Matryoshka too
    as_loaded = {"saelens": {"batchtopk": "jumprelu", "matryoshka": "jumprelu"},
                 "dictionary_learning": {"matryoshka": "batchtopk"}}.get(fmt, {})
    assert back.architecture == as_loaded.get(arch, arch)
    assert rel_err(back.encode(X), codes_ref) < 1e-6 and rel_err(back(X), recon_ref) < 1e-6
    assert torch.equal(back.encode(X) != 0, codes_ref != 0) and (codes_ref != 0).any() and (codes_ref == 0).any()
    assert back.cfg.normalization_factor is None
    if fmt != "sparsify":  # sparsify's hookpoint is its folder's name (here "out")
        assert (back.cfg.hook_name, back.cfg.model_name) == ("blocks.3.hook_resid_post", "EleutherAI/pythia-70m")


def test_export_files_follow_each_library_layout():
    sae = fold_normalization(_trained_like("topk", seed=300))
    saelens = export_files(sae, "saelens")
    assert (saelens.cfg_name, saelens.weights_name) == ("cfg.json", "sae_weights.safetensors")
    assert set(saelens.cfg) == {"d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
                                "reshape_activations", "k", "rescale_acts_by_decoder_norm", "metadata", "architecture",
                                "normalization_factor"}
    assert saelens.cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_post" and saelens.cfg["k"] == K
    # SAELens treats a config without a 6.x version as pre-6 and would drop the metadata block
    assert int(saelens.cfg["metadata"]["sae_lens_version"].split(".")[0]) >= 6
    assert {k: tuple(v.shape) for k, v in saelens.tensors.items()} == {
        "W_enc": (D, N), "b_enc": (N,), "W_dec": (N, D), "b_dec": (D,)}
    sparsify = export_files(sae, "sparsify")
    assert {k: tuple(v.shape) for k, v in sparsify.tensors.items()} == {
        "encoder.weight": (N, D), "encoder.bias": (N,), "W_dec": (N, D), "b_dec": (D,)}
    assert (sparsify.cfg["d_in"], sparsify.cfg["num_latents"], sparsify.cfg["k"], sparsify.cfg["activation"]) == (D, N, K, "topk")
    dl = export_files(sae, "dictionary_learning", extra={"exported_from": "x"})
    assert dl.cfg["trainer"] | {} == {**dl.cfg["trainer"], "dict_class": "AutoEncoderTopK", "trainer_class": "TopKTrainer",
                                      "activation_dim": D, "dict_size": N, "k": K, "layer": 3,
                                      "submodule_name": "resid_post_layer_3", "lm_name": "EleutherAI/pythia-70m"}
    assert dl.cfg["featsep_extra"] == {"exported_from": "x"}
    assert dl.tensors["k"].dtype == torch.int32 and float(dl.tensors["threshold"]) == -1.0
    jumprelu = export_files(fold_normalization(_trained_like("batchtopk", seed=301)), "saelens")
    assert jumprelu.cfg["architecture"] == "jumprelu" and torch.equal(jumprelu.tensors["threshold"], torch.full((N,), 0.4))


@pytest.mark.parametrize("arch", ["relu_l1", "jumprelu", "batchtopk", "matryoshka"])
def test_sparsify_export_refuses_what_it_cannot_hold(tmp_path, arch):
    src = featsep.save_sae(_trained_like(arch, seed=400), tmp_path / "sae")
    with pytest.raises(ValueError, match=f"a {arch} SAE cannot be exported to sparsify: .*choose another --format") as info:
        export_sae(src, tmp_path / "out", fmt="sparsify")
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="unknown export format 'safetensors'; choose one of saelens, sparsify"):
        export_sae(src, tmp_path / "out", fmt="safetensors")
    with pytest.raises(ValueError, match="fold the normalization factor"):
        export_files(_trained_like(arch, seed=401), "saelens")


# --- hub references ---------------------------------------------------------------------------
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty HF cache the hub code reads, offline."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _gemma_scope_repo(tmp_path, hub_cache, w):
    files = tmp_path / "gemma-files"
    for width, l0 in (("16k", 82), ("16k", 820)):  # a neighbour whose name extends the wanted one
        folder = files / "layer_12" / f"width_{width}" / f"average_l0_{l0}"
        folder.mkdir(parents=True)
        np.savez(folder / "params.npz", **{k: (v + (l0 == 820)).numpy() for k, v in w.items()})
    return hf_cache_repo(hub_cache, "google/gemma-scope-2b-pt-res", files, COMMIT)


def test_hf_reference_loads_from_the_hub_cache(tmp_path, hub_cache):
    w = weights(501, threshold=True)
    snapshot = _gemma_scope_repo(tmp_path, hub_cache, w)
    pre = X @ w["W_enc"] + w["b_enc"]
    codes = pre.relu() * (pre > w["threshold"])
    for ref in ("hf://google/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82",
                "hf://google/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82/",
                "hf://google/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82/params.npz",
                f"hf://google/gemma-scope-2b-pt-res@{COMMIT}/layer_12/width_16k/average_l0_82",
                f"hf://google/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82@{COMMIT}"):
        folder = snapshot / "layer_12" / "width_16k" / "average_l0_82"
        assert resolve_sae_ref(ref) == (folder / "params.npz" if ref.endswith(".npz") else folder)
        sae = featsep.load_sae(ref)
        check(sae, codes, codes @ w["W_dec"] + w["b_dec"])
        # the metadata comes from the cache path, not from the blob the file links to
        assert (sae.cfg.hook_name, sae.cfg.model_name) == ("blocks.12.hook_resid_post", "google/gemma-2-2b")
    assert resolve_sae_ref(str(tmp_path)) == tmp_path and resolve_sae_ref(tmp_path) == tmp_path


def test_hf_reference_misses_and_mistakes_are_one_line(tmp_path, hub_cache):
    _gemma_scope_repo(tmp_path, hub_cache, weights(511, threshold=True))
    cases = {
        "hf://google/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_8":
            r"no 'layer_12/width_16k/average_l0_8' in the local HF cache; run once with network, or fetch it with "
            r"`hf download google/gemma-scope-2b-pt-res --include 'layer_12/width_16k/average_l0_8' --include "
            r"'layer_12/width_16k/average_l0_8/\*'`",
        "hf://google/gemma-scope-9b-pt-res/layer_1": r"is not in the local HF cache and the hub is offline \(HF_HUB_OFFLINE\); "
                                                     r"run once with network, or fetch it with `hf download google/gemma-scope-9b-pt-res",
        "hf://google/gemma-scope-2b-pt-res@v2/layer_12": "--revision v2`",
        "hf://google": "is not a hub SAE reference; write hf://ORG/REPO/PATH",
        "hf://a/b@r1/x@r2": "is not a hub SAE reference",
        "hf://google/gemma-scope-2b-pt-res/../../etc": r"cannot climb out of it \('..'\)",
        "hf://google/gemma-scope-2b-pt-res/layer_12": "holds neither",
    }
    for ref, message in cases.items():
        with pytest.raises((ValueError, FileNotFoundError), match=message) as info:
            featsep.load_sae(ref)
        assert "\n" not in str(info.value)


def test_corrupt_file_in_the_hub_cache_is_one_line(tmp_path, hub_cache):
    files = tmp_path / "files" / "blocks.3.hook_resid_post"
    files.mkdir(parents=True)
    (files / "cfg.json").write_text(json.dumps(saelens6_cfg("standard")))
    (files / "sae_weights.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}truncated")
    hf_cache_repo(hub_cache, "someone/saes", tmp_path / "files", COMMIT)
    with pytest.raises(ValueError, match="sae_weights.safetensors': is corrupt") as info:
        featsep.load_sae("hf://someone/saes/blocks.3.hook_resid_post")
    assert "\n" not in str(info.value)


SAELENS_YAML = """\
gemma-scope-2b-pt-res-canonical:
  repo_id: google/gemma-scope-2b-pt-res
  model: gemma-2-2b
  conversion_func: gemma_2
  saes:
  - id: layer_12/width_16k/canonical
    path: layer_12/width_16k/average_l0_82
    l0: 82
    neuronpedia: gemma-2-2b/12-gemmascope-res-16k
  - id: layer_12/width_16k/canonical_b
    path: layer_12/width_16k/average_l0_820
gpt2-small-res-jb:
  repo_id: jbloom/GPT2-Small-SAEs-Reformatted
  model: gpt2-small
  saes:
  - id: blocks.0.hook_resid_pre
    path: blocks.0.hook_resid_pre
"""


def test_saelens_reference_goes_through_the_release_list(tmp_path, hub_cache, monkeypatch):
    """A stand-in sae_lens package (only its pretrained_saes.yaml) on sys.path: the real lookup
    (find_spec, no import) reads it."""
    package = tmp_path / "site" / "sae_lens"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('featsep must not import sae_lens')\n")
    (package / "pretrained_saes.yaml").write_text(SAELENS_YAML)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    w = weights(521, threshold=True)
    _gemma_scope_repo(tmp_path, hub_cache, w)
    ref = "saelens:gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical"
    assert saelens_hf_ref(ref) == "hf://google/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82"
    pre = X @ w["W_enc"] + w["b_enc"]
    codes = pre.relu() * (pre > w["threshold"])
    check(featsep.load_sae(ref), codes, codes @ w["W_dec"] + w["b_dec"])
    for bad, message in (("saelens:gemma-scope-2b-pt-res/layer_12", "knows no release 'gemma-scope-2b-pt-res' "
                                                                    r"\(similar: gemma-scope-2b-pt-res-canonical\)"),
                         ("saelens:gpt2-small-res-jb/blocks.9.hook_resid_pre", "has no SAE 'blocks.9.hook_resid_pre' "
                                                                               r"\(1 ids, e.g. blocks.0.hook_resid_pre\)"),
                         ("saelens:gpt2-small-res-jb", "write saelens:RELEASE/SAE_ID")):
        with pytest.raises(ValueError, match=message) as info:
            featsep.load_sae(bad)
        assert "\n" not in str(info.value)


def test_saelens_reference_without_sae_lens_names_both_fixes(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sae_lens" else real(name, *a))
    with pytest.raises(ValueError, match=r"pip install sae-lens, or give the SAE as hf://ORG/REPO/PATH$"):
        featsep.load_sae("saelens:gpt2-small-res-jb/blocks.0.hook_resid_pre")


def test_hf_reference_asks_for_its_folder_only_and_uses_the_cache_when_unreachable(tmp_path, hub_cache, monkeypatch):
    import huggingface_hub

    import featsep.hub

    _gemma_scope_repo(tmp_path, hub_cache, weights(531, threshold=True))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(featsep.hub, "reachable", lambda timeout=3.0: False)  # no network, nobody said offline
    calls = []
    real = huggingface_hub.snapshot_download

    def spy(repo_id, **kwargs):
        calls.append((repo_id, kwargs["allow_patterns"], kwargs["local_files_only"], kwargs["cache_dir"]))
        return real(repo_id, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    path = resolve_sae_ref("hf://google/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82")
    assert path.name == "average_l0_82" and (path / "params.npz").is_file()
    assert calls == [("google/gemma-scope-2b-pt-res", ["layer_12/width_16k/average_l0_82", "layer_12/width_16k/average_l0_82/*"],
                      True, str(hub_cache))]
    with pytest.raises(ValueError, match="is not in the local HF cache and the hub is unreachable; run once with network"):
        resolve_sae_ref("hf://google/other/x")
    # a dictionary_learning ae.pt named alone brings its config.json
    with pytest.raises(ValueError):
        resolve_sae_ref("hf://google/gemma-scope-2b-pt-res/trainer_0/ae.pt")
    assert calls[-1][1] == ["trainer_0/ae.pt", "trainer_0/ae.pt/*", "trainer_0/config.json"]
