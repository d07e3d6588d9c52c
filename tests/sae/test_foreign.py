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
from featsep.sae.foreign import featsep_hook, foreign_format, gemma_scope_metadata

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
