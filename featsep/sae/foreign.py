"""Load SAEs released by other libraries, so a new method can be judged against SAEs already in
circulation: SAELens directories, Gemma Scope params.npz, sparsify checkpoints and
dictionary_learning ae.pt files.

Each format lands on the featsep architecture whose encode/decode maths is the same, with the
weights rewritten only where that is exactly equivalent:
- featsep subtracts b_dec before encoding; formats that do not (Gemma Scope, SAELens with
  apply_b_dec_to_input=False, dictionary_learning's JumpReluAutoEncoder) get
  b_enc' = b_enc + b_dec @ W_enc, since (x - b_dec) W_enc + b_enc' = x W_enc + b_enc;
- JumpReLU thresholds below 0 become 0: for theta < 0 both ReLU(z) 1[z > theta] and
  ReLU(z 1[z > theta]) are ReLU(z), which is featsep's z 1[z > 0];
- SAELens's finetuning scaling factor s (decode(f) = (f * s) W_dec + b_dec) folds into W_dec rows.
What featsep cannot reproduce exactly (per-token normalisation, gated SAEs, transcoders, skip
connections) is refused with one ValueError line rather than loaded approximately. Weights are
loaded as float32; pickled files are read with weights_only=True, npz with allow_pickle=False.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from pydantic import ValidationError
from torch import Tensor

from featsep.sae.base import SAE, get_architecture
from featsep.settings import one_line

SAELENS_CFG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
SPARSIFY_CFG, SPARSIFY_WEIGHTS = "cfg.json", "sae.safetensors"
DL_CFG, DL_WEIGHTS = "config.json", "ae.pt"
GEMMA_SCOPE_WEIGHTS = "params.npz"

FORMATS = ("saelens", "gemma_scope", "sparsify", "dictionary_learning")

GATED_REFUSAL = ("gated SAEs have no featsep architecture (their gate and magnitude paths differ); "
                 "featsep does not load them")


def foreign_format(path: str | Path) -> Optional[str]:
    """Which foreign layout `path` holds (one of FORMATS), or None: featsep's own SAE dirs, and
    SAELens-layout dirs whose cfg.json is unreadable, are left to featsep's own loader."""
    path = Path(path)
    if path.is_file():
        return {GEMMA_SCOPE_WEIGHTS: "gemma_scope", DL_WEIGHTS: "dictionary_learning"}.get(path.name)
    if not path.is_dir():
        return None
    if (path / GEMMA_SCOPE_WEIGHTS).is_file():
        return "gemma_scope"
    if (path / DL_WEIGHTS).is_file():
        return "dictionary_learning"
    if (path / SPARSIFY_CFG).is_file() and (path / SPARSIFY_WEIGHTS).is_file():
        return "sparsify"
    if (path / SAELENS_CFG).is_file() and (path / SAELENS_WEIGHTS).is_file():
        try:
            cfg = json.loads((path / SAELENS_CFG).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        if isinstance(cfg, dict) and "featsep_architecture" not in cfg:
            return "saelens"
    return None


def load_foreign(path: str | Path, fmt: str, device: Optional[str] = None) -> SAE:
    """Load `path` (a dir, or for Gemma Scope / dictionary_learning the weights file) in layout
    `fmt` as the featsep SAE with the same maths, on `device` (default CPU)."""
    loaders: dict[str, Callable[[Path], SAE]] = {
        "saelens": _load_saelens, "gemma_scope": _load_gemma_scope,
        "sparsify": _load_sparsify, "dictionary_learning": _load_dictionary_learning,
    }
    if fmt not in loaders:
        raise ValueError(f"unknown SAE format {fmt!r}; known: {', '.join(FORMATS)}")
    sae = loaders[fmt](Path(path))
    if device is not None and device != "cpu":
        sae.to(device)
        sae.cfg.device = device
    return sae


# --- hook names -------------------------------------------------------------------------------
_TL_HOOK = re.compile(r"^blocks\.(\d+)\.(hook_resid_post|hook_resid_pre)$")
_TL_LAYER = re.compile(r"^blocks\.(\d+)\.")
_HF_LAYER = re.compile(r"^(?:model\.|gpt_neox\.|transformer\.|model\.language_model\.)?(?:layers|h)\.(\d+)$")


def featsep_hook(name: Optional[str]) -> tuple[str, int]:
    """(hook_name, layer) in featsep's `blocks.L.hook_resid_post` form where the name means a
    decoder layer's output: TransformerLens/SAELens `blocks.L.hook_resid_post`,
    `blocks.L.hook_resid_pre` (= layer L-1's output, L >= 1), and HF module paths such as
    sparsify's `layers.L`. Other names are kept as written (evals then say they cannot serve
    them); no name gives ("", -1), which evals answer by asking for --set hook=..."""
    if not name:
        return "", -1
    tl = _TL_HOOK.match(name)
    if tl:
        layer = int(tl.group(1))
        if tl.group(2) == "hook_resid_post":
            return name, layer
        if layer >= 1:
            return f"blocks.{layer - 1}.hook_resid_post", layer - 1
        return name, layer
    hf = _HF_LAYER.match(name)
    if hf:
        return f"blocks.{hf.group(1)}.hook_resid_post", int(hf.group(1))
    layer = _TL_LAYER.match(name)
    return name, int(layer.group(1)) if layer else -1


# --- shared building --------------------------------------------------------------------------
def _fail(source: Path, message: str) -> ValueError:
    return ValueError(f"{str(source)!r}: {message}")


def _cfg_and_safetensors(cfg_file: Path, weights_file: Path) -> tuple[Any, dict]:
    """A JSON config and a safetensors file (SAELens's and sparsify's pair), each corrupt one
    refused in one line."""
    from safetensors.torch import load_file

    try:
        cfg = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _fail(cfg_file, f"is corrupt ({e})") from None
    try:
        tensors = load_file(weights_file)
    except Exception as e:  # safetensors raises its own error types
        raise _fail(weights_file, f"is corrupt ({e})") from None
    return cfg, tensors


def _tensor(tensors: dict[str, Any], name: str, shape: tuple[int, ...], source: Path) -> Tensor:
    """tensors[name] as float32 of exactly `shape`, or one clear error line."""
    if name not in tensors:
        raise _fail(source, f"lacks tensor {name!r} (has {sorted(tensors)}); the file is incomplete")
    t = torch.as_tensor(tensors[name])
    if tuple(t.shape) != shape:
        raise _fail(source, f"tensor {name!r} has shape {tuple(t.shape)}, expected {shape}")
    return t.detach().to(torch.float32)


def _fold_b_dec(W_enc: Tensor, b_enc: Tensor, b_dec: Tensor) -> Tensor:
    """b_enc + b_dec @ W_enc (in float64): the encoder bias that makes featsep's
    (x - b_dec) W_enc + b_enc' equal the format's x W_enc + b_enc."""
    return (b_enc.double() + b_dec.double() @ W_enc.double()).float()


def _build(name: str, weights: dict[str, Tensor], meta: dict[str, Any], source: Path, **params: Any) -> SAE:
    """The featsep architecture `name` with `weights` (W_enc [d, n], b_enc, W_dec [n, d], b_dec,
    threshold where the architecture has one) and metadata fields (None values skipped)."""
    d_in, d_sae = weights["W_enc"].shape
    cls = get_architecture(name)
    fields = {k: v for k, v in meta.items() if v is not None and k in cls.config_class.model_fields}
    try:
        cfg = cls.config_class(d_in=d_in, d_sae=d_sae, **fields, **params)
    except ValidationError as e:  # e.g. k > d_sae
        raise _fail(source, f"its config does not fit a featsep {name} SAE ({one_line(e, cls.config_class)})") from None
    sae = cls(cfg)
    sae.load_saved_tensors(weights)
    return sae.eval()


def _check_sizes(source: Path, d_in: Any, d_sae: Any) -> tuple[int, int]:
    if not (isinstance(d_in, int) and isinstance(d_sae, int)) or d_in <= 0 or d_sae <= 0:
        raise _fail(source, f"config gives d_in={d_in!r}, d_sae={d_sae!r}; both must be positive integers")
    return d_in, d_sae


# --- SAELens ----------------------------------------------------------------------------------
_NORMALIZE_REFUSALS = {
    "expected_average_only_in": "its activation norm scaling factor is not stored in the files; fold it "
                                "into the weights (SAELens fold_activation_norm_scaling_factor) and save again",
    "constant_norm_rescale": "it rescales every token to norm sqrt(d_in), which featsep's constant factor cannot express",
    "layer_norm": "it layer-normalises every token, which featsep's constant factor cannot express",
}


def _load_saelens(path: Path) -> SAE:
    """SAELens 5 (flat keys) and 6 (metadata nested under "metadata"/"meta") cfg.json +
    sae_weights.safetensors; architectures standard, topk, jumprelu (BatchTopK is saved as it)."""
    cfg_file, weights_file = path / SAELENS_CFG, path / SAELENS_WEIGHTS
    cfg, tensors = _cfg_and_safetensors(cfg_file, weights_file)
    meta = {**cfg, **(cfg.get("metadata") or cfg.get("meta") or {})}  # SAELens 6 nests these
    arch = cfg.get("architecture", "standard")  # SAELens before 4 wrote no architecture: standard
    act_fn = cfg.get("activation_fn_str", cfg.get("activation_fn", "relu"))
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if arch == "standard" and act_fn == "topk":  # SAELens 4 wrote TopK SAEs this way
        arch = "topk"
    if arch == "gated":
        raise _fail(cfg_file, GATED_REFUSAL)
    if arch not in ("standard", "topk", "jumprelu"):
        raise _fail(cfg_file, f"unknown SAELens architecture {arch!r}; featsep loads standard, topk and jumprelu "
                              "(SAELens saves BatchTopK SAEs for inference as jumprelu)")
    if act_fn not in ("relu", "topk"):
        raise _fail(cfg_file, f"activation {act_fn!r} is not a ReLU/TopK; featsep cannot reproduce it")
    norm = cfg.get("normalize_activations", "none")
    if norm not in (None, False, "none"):
        reason = _NORMALIZE_REFUSALS.get(norm, "featsep knows no such mode")
        raise _fail(cfg_file, f"normalize_activations={norm!r} is not supported: {reason}")
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise _fail(cfg_file, "rescale_acts_by_decoder_norm=true is not supported: featsep's TopK does not "
                              "scale activations by decoder norms")

    d_in, d_sae = _check_sizes(cfg_file, cfg.get("d_in"), cfg.get("d_sae"))
    W_enc = _tensor(tensors, "W_enc", (d_in, d_sae), weights_file)
    b_enc = _tensor(tensors, "b_enc", (d_sae,), weights_file)
    W_dec = _tensor(tensors, "W_dec", (d_sae, d_in), weights_file)
    b_dec = _tensor(tensors, "b_dec", (d_in,), weights_file)
    # the finetuning scaling factor multiplies codes before W_dec: fold it into W_dec's rows
    scale_name = next((n for n in ("finetuning_scaling_factor", "scaling_factor") if n in tensors), None)
    if scale_name is not None:
        W_dec = W_dec * _tensor(tensors, scale_name, (d_sae,), weights_file)[:, None]
    elif cfg.get("finetuning_scaling_factor") is True:
        raise _fail(weights_file, "finetuning_scaling_factor is true but the file has no scaling_factor tensor")
    if not cfg.get("apply_b_dec_to_input", True):  # SAELens's default for configs without the key
        b_enc = _fold_b_dec(W_enc, b_enc, b_dec)
    weights = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}

    hook, layer = featsep_hook(meta.get("hook_name"))
    info = {"hook_name": hook, "hook_layer": layer, "model_name": meta.get("model_name"),
            "dataset_path": meta.get("dataset_path"), "context_size": meta.get("context_size"),
            "prepend_bos": meta.get("prepend_bos")}
    if arch == "standard":
        return _build("relu_l1", weights, info, weights_file)
    if arch == "topk":
        k = cfg.get("k", kwargs.get("k"))
        if not isinstance(k, int) or isinstance(k, bool):
            raise _fail(cfg_file, f"topk SAE without an integer k (k={k!r}; SAELens 6 writes 'k', "
                                  "SAELens 5 activation_fn_kwargs.k)")
        return _build("topk", weights, info, weights_file, k=k)
    threshold = _tensor(tensors, "threshold", (d_sae,), weights_file)
    return _build("jumprelu", {**weights, "threshold": threshold.clamp_min(0)}, info, weights_file)


# --- Gemma Scope ------------------------------------------------------------------------------
_GEMMA_RELEASE = re.compile(r"gemma-scope-(\d+b)-(pt|it)-(res|mlp|att)(?![a-z])")
_GEMMA_SAE = re.compile(r"(?:^|/)layer_(\d+)/width_[^/]+/[^/]+(?:/|$)")
_GEMMA_HOOKS = {"res": "blocks.{}.hook_resid_post", "mlp": "blocks.{}.hook_mlp_out", "att": "blocks.{}.attn.hook_z"}


def gemma_scope_metadata(path: Path) -> dict[str, Any]:
    """Model and hook from a Gemma Scope path such as
    .../gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82/params.npz (the HF cache keeps the
    release in its folder name, models--google--gemma-scope-2b-pt-res). Missing parts stay empty."""
    text = path.resolve().as_posix()
    release = None
    for release in _GEMMA_RELEASE.finditer(text):
        pass  # the last mention is the closest to the file
    sae = _GEMMA_SAE.search(text)
    info: dict[str, Any] = {"context_size": 1024}  # Gemma Scope's training sequence length
    if release:
        size, variant, site = release.groups()
        info["model_name"] = f"google/gemma-2-{size}" + ("-it" if variant == "it" else "")
        if sae:
            layer = int(sae.group(1))
            info.update(hook_name=_GEMMA_HOOKS[site].format(layer), hook_layer=layer)
    return info


def _load_gemma_scope(path: Path) -> SAE:
    """params.npz: W_enc [d, n], W_dec [n, d], b_enc, b_dec, threshold; JumpReLU on
    x W_enc + b_enc (no b_dec subtraction, so b_dec is folded into b_enc)."""
    import numpy as np

    file = path if path.is_file() else path / GEMMA_SCOPE_WEIGHTS
    try:
        with np.load(file, allow_pickle=False) as data:
            # SAELens's loader maps lower-case w_ names to W_
            arrays = {("W_" + k[2:] if k.startswith("w_") else k): np.array(data[k]) for k in data.files}
    except ValueError as e:
        raise _fail(file, f"is not a plain npz of arrays ({e})") from None
    except Exception as e:  # zipfile / OS errors
        raise _fail(file, f"is corrupt ({e})") from None
    if "W_enc" not in arrays or np.ndim(arrays["W_enc"]) != 2:
        raise _fail(file, f"lacks a 2-D tensor 'W_enc' (has {sorted(arrays)}); the file is incomplete")
    d_in, d_sae = arrays["W_enc"].shape
    W_enc = _tensor(arrays, "W_enc", (d_in, d_sae), file)
    b_enc = _tensor(arrays, "b_enc", (d_sae,), file)
    W_dec = _tensor(arrays, "W_dec", (d_sae, d_in), file)
    b_dec = _tensor(arrays, "b_dec", (d_in,), file)
    threshold = _tensor(arrays, "threshold", (d_sae,), file)
    weights = {"W_enc": W_enc, "b_enc": _fold_b_dec(W_enc, b_enc, b_dec), "W_dec": W_dec, "b_dec": b_dec,
               "threshold": threshold.clamp_min(0)}
    return _build("jumprelu", weights, gemma_scope_metadata(file), file)


# --- sparsify ---------------------------------------------------------------------------------
def _load_sparsify(path: Path) -> SAE:
    """A sparsify hookpoint folder: cfg.json (d_in, k, num_latents or expansion_factor, ...) and
    sae.safetensors (encoder.weight [n, d], encoder.bias, W_dec [n, d], b_dec). Encode is
    TopK(ReLU((x - b_dec) W^T + b)), featsep's topk; the folder name is the hookpoint."""
    cfg_file, weights_file = path / SPARSIFY_CFG, path / SPARSIFY_WEIGHTS
    cfg, tensors = _cfg_and_safetensors(cfg_file, weights_file)
    if cfg.get("activation", "topk") != "topk":
        raise _fail(cfg_file, f"activation {cfg['activation']!r} is not supported; featsep loads TopK sparse coders")
    for flag, what in (("transcode", "a transcoder (it predicts another activation)"),
                       ("skip_connection", "a skip connection"), ("embed_skip", "an embedding skip connection"),
                       ("gram_lookup", "an n-gram lookup")):
        if cfg.get(flag):
            raise _fail(cfg_file, f"{flag}=true: it has {what}, which featsep's SAEs cannot reproduce")
    d_in = cfg.get("d_in")
    n = cfg.get("num_latents") or (d_in * cfg.get("expansion_factor", 32) if isinstance(d_in, int) else None)
    d_in, d_sae = _check_sizes(cfg_file, d_in, n)
    k = cfg.get("k", 32)  # sparsify's default
    W = _tensor(tensors, "encoder.weight", (d_sae, d_in), weights_file)
    weights = {"W_enc": W.T.contiguous(), "b_enc": _tensor(tensors, "encoder.bias", (d_sae,), weights_file),
               "W_dec": _tensor(tensors, "W_dec", (d_sae, d_in), weights_file),
               "b_dec": _tensor(tensors, "b_dec", (d_in,), weights_file)}
    hook, layer = featsep_hook(path.resolve().name)
    return _build("topk", weights, {"hook_name": hook, "hook_layer": layer}, weights_file, k=k)


# --- dictionary_learning ----------------------------------------------------------------------
_DL_CLASSES = ("AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE", "JumpReluAutoEncoder")


def _load_dictionary_learning(path: Path) -> SAE:
    """ae.pt (a state dict) + config.json ({"trainer": {"dict_class", "activation_dim",
    "dict_size", "k", "layer", "lm_name", "submodule_name", ...}, "buffer": {...}})."""
    file = path if path.is_file() else path / DL_WEIGHTS
    cfg_file = file.parent / DL_CFG
    if not cfg_file.is_file():
        raise _fail(file, f"has no {DL_CFG} beside it; dictionary_learning's config names the SAE class")
    try:
        trainer = json.loads(cfg_file.read_text())["trainer"]
        dict_class = trainer["dict_class"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise _fail(cfg_file, f"is corrupt or lacks trainer.dict_class ({e!r})") from None
    if dict_class == "GatedAutoEncoder":
        raise _fail(cfg_file, GATED_REFUSAL)
    if dict_class not in _DL_CLASSES:
        raise _fail(cfg_file, f"unknown dict_class {dict_class!r}; featsep loads {', '.join(_DL_CLASSES)}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors: weights_only refuses anything but tensors and plain containers
        raise _fail(file, f"cannot be read as a plain state dict with weights_only=True ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise _fail(file, f"holds a {type(state).__name__}, not a state dict")
    d_in, d_sae = _check_sizes(cfg_file, trainer.get("activation_dim"), trainer.get("dict_size"))
    submodule = trainer.get("submodule_name") or ""
    layer = trainer.get("layer")
    hook = f"blocks.{layer}.hook_resid_post" if "resid_post" in submodule and isinstance(layer, int) else ""
    info = {"hook_name": hook, "hook_layer": layer if hook else -1, "model_name": trainer.get("lm_name")}

    if dict_class == "JumpReluAutoEncoder":  # W_enc [d, n] names; encode does not subtract b_dec
        W_enc = _tensor(state, "W_enc", (d_in, d_sae), file)
        b_dec = _tensor(state, "b_dec", (d_in,), file)
        weights = {"W_enc": W_enc, "b_enc": _fold_b_dec(W_enc, _tensor(state, "b_enc", (d_sae,), file), b_dec),
                   "W_dec": _tensor(state, "W_dec", (d_sae, d_in), file), "b_dec": b_dec,
                   "threshold": _tensor(state, "threshold", (d_sae,), file).clamp_min(0)}
        return _build("jumprelu", weights, info, file)
    weights = {"W_enc": _tensor(state, "encoder.weight", (d_sae, d_in), file).T.contiguous(),
               "b_enc": _tensor(state, "encoder.bias", (d_sae,), file),
               "W_dec": _tensor(state, "decoder.weight", (d_in, d_sae), file).T.contiguous(),
               "b_dec": _tensor(state, "bias" if dict_class == "AutoEncoder" else "b_dec", (d_in,), file)}
    if dict_class == "AutoEncoder":
        return _build("relu_l1", weights, info, file)
    k = int(_tensor(state, "k", (), file).item()) if "k" in state else trainer.get("k")
    if not isinstance(k, int):
        raise _fail(file, "has no k (neither a 'k' tensor nor trainer.k in the config)")
    if dict_class == "AutoEncoderTopK":  # its default encode: TopK of ReLU(pre), per token
        return _build("topk", weights, info, file, k=k)
    # BatchTopKSAE's default encode: ReLU(pre) * (ReLU(pre) > threshold), one scalar threshold
    threshold = _tensor(state, "threshold", (), file).reshape(1)
    return _build("batchtopk", {**weights, "threshold": threshold}, info, file, k=k)
