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
import os
import re
from dataclasses import dataclass
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


# --- hub references ---------------------------------------------------------------------------
HF_SCHEME, SAELENS_SCHEME = "hf://", "saelens:"
_HF_REF = re.compile(r"^hf://(?P<org>[^/@\s]+)/(?P<repo>[^/@\s]+)(?:@(?P<rev1>[^/\s]+))?"
                     r"(?:/(?P<path>[^@\s]*?))?/?(?:@(?P<rev2>[^/@\s]+))?$")


def is_sae_ref(ref: Any) -> bool:
    """`ref` names an SAE on the hub (hf://... or saelens:...) rather than a local path."""
    return isinstance(ref, str) and ref.startswith((HF_SCHEME, SAELENS_SCHEME))


def resolve_sae_ref(ref: str | Path) -> Path:
    """The local path of an SAE reference, for every command that takes an SAE path:
    - a local path: returned as it is (~ expanded);
    - hf://ORG/REPO/PATH, hf://ORG/REPO@REVISION/PATH or hf://ORG/REPO/PATH@REVISION (PATH a folder
      or file in the repo, or nothing for the whole repo): only that folder or file is fetched
      into the HF cache ($HF_HUB_CACHE) and its path there returned; offline (HF_HUB_OFFLINE=1, or
      the hub unreachable) the cache alone answers;
    - saelens:RELEASE/SAE_ID: looked up in sae-lens's release list (saelens_directory) to its
      repo and folder, then as hf://.
    Mistakes and misses are one ValueError line naming the fix."""
    if isinstance(ref, Path) or not is_sae_ref(ref):
        return Path(ref).expanduser()
    if ref.startswith(SAELENS_SCHEME):
        ref = saelens_hf_ref(ref)
    m = _HF_REF.match(ref)
    if not m or (m.group("rev1") and m.group("rev2")):
        raise ValueError(f"{ref!r} is not a hub SAE reference; write hf://ORG/REPO/PATH (optionally "
                         "hf://ORG/REPO@REVISION/PATH), e.g. hf://google/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82")
    repo_id, path = f"{m.group('org')}/{m.group('repo')}", (m.group("path") or "").strip("/")
    if ".." in path.split("/"):
        raise ValueError(f"{ref!r}: a path inside the repo cannot climb out of it ('..'); name the folder itself")
    return _hf_download(ref, repo_id, path, m.group("rev1") or m.group("rev2"))


def _hf_cache_dir() -> Optional[str]:
    """The cache the user's environment names now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    return str(Path(os.environ["HF_HOME"]) / "hub") if os.environ.get("HF_HOME") else None


def _download_command(repo_id: str, path: str, revision: Optional[str]) -> str:
    import huggingface_hub

    if int(huggingface_hub.__version__.split(".")[0]) >= 1:  # `hf` replaced huggingface-cli in 1.0
        cli, include = "hf", f" --include '{path}' --include '{path}/*'"
    else:
        cli, include = "huggingface-cli", f" --include '{path}' '{path}/*'"
    return f"{cli} download {repo_id}{include if path else ''}" + (f" --revision {revision}" if revision else "")


def _hf_download(ref: str, repo_id: str, path: str, revision: Optional[str]) -> Path:
    """snapshot_download of `path` (a folder or a file) only; the cache when offline."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    from featsep.hub import offline, reachable

    local_only = offline() or not reachable()
    fetch = (f"run once with network, or fetch it with `{_download_command(repo_id, path, revision)}`")
    patterns = [path, f"{path}/*"] if path else None
    if patterns and path.rsplit("/", 1)[-1] == DL_WEIGHTS:  # the file alone: dictionary_learning needs its config
        patterns.append(f"{path.rsplit('/', 1)[0]}/{DL_CFG}" if "/" in path else DL_CFG)
    try:
        root = snapshot_download(repo_id, revision=revision, cache_dir=_hf_cache_dir(), local_files_only=local_only,
                                 allow_patterns=patterns)
    except LocalEntryNotFoundError:
        raise ValueError(f"{ref} is not in the local HF cache and the hub is "
                         f"{'offline (HF_HUB_OFFLINE)' if offline() else 'unreachable'}; {fetch}") from None
    except GatedRepoError:
        raise ValueError(f"{ref}: the repo {repo_id} is gated; accept its terms on huggingface.co and log in "
                         "(hf auth login), then run again") from None
    except RepositoryNotFoundError:
        raise ValueError(f"{ref}: no repo {repo_id} on the hub (or it is private: log in first)") from None
    except RevisionNotFoundError:
        raise ValueError(f"{ref}: repo {repo_id} has no revision {revision!r}") from None
    except HfHubHTTPError as e:
        raise ValueError(f"{ref}: the hub refused the download ({str(e).splitlines()[0]})") from None
    target = Path(root) / path
    if not target.exists():
        where = "in the local HF cache" if local_only else f"in {repo_id}"
        hint = fetch if local_only else "check the path (the repo's file list is on its hub page)"
        raise ValueError(f"{ref}: no {path!r} {where}; {hint}")
    return target


def saelens_directory() -> dict[str, Any]:
    """sae-lens's release list (its pretrained_saes.yaml: {release: {repo_id, model,
    conversion_func, saes: [{id, path, l0, neuronpedia, ...}], config_overrides}}), read from the
    installed package without importing it (sae-lens is not a featsep dependency)."""
    import importlib.util

    spec = importlib.util.find_spec("sae_lens")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("saelens: references need sae-lens's release list: pip install sae-lens, "
                         "or give the SAE as hf://ORG/REPO/PATH")
    yaml_file = Path(list(spec.submodule_search_locations)[0]) / "pretrained_saes.yaml"
    import yaml

    try:
        data = yaml.safe_load(yaml_file.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"sae-lens's release list {str(yaml_file)!r} cannot be read ({type(e).__name__}); "
                         "reinstall sae-lens, or give hf://ORG/REPO/PATH") from None
    return data if isinstance(data, dict) else {}


def saelens_hf_ref(ref: str) -> str:
    """saelens:RELEASE/SAE_ID -> hf://REPO_ID/PATH through sae-lens's release list, as SAELens's
    SAE.from_pretrained(release, sae_id) resolves it (SAE ids may hold slashes:
    saelens:gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical)."""
    body = ref[len(SAELENS_SCHEME):]
    release, _, sae_id = body.partition("/")
    if not release or not sae_id:
        raise ValueError(f"{ref!r} is not a SAELens reference; write saelens:RELEASE/SAE_ID, e.g. "
                         "saelens:gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical")
    directory = saelens_directory()
    entry = directory.get(release)
    if not isinstance(entry, dict):
        near = sorted(r for r in directory if release.split("-")[0] in r)[:5]
        raise ValueError(f"{ref}: sae-lens knows no release {release!r}"
                         + (f" (similar: {', '.join(near)})" if near else "") + "; or give hf://ORG/REPO/PATH")
    saes = {s.get("id"): s for s in entry.get("saes") or [] if isinstance(s, dict)}
    if sae_id not in saes:
        ids = sorted(str(i) for i in saes)
        raise ValueError(f"{ref}: release {release!r} has no SAE {sae_id!r} ({len(ids)} ids, e.g. "
                         f"{', '.join(ids[:3])})")
    repo_id, path = entry.get("repo_id"), saes[sae_id].get("path")
    if not isinstance(repo_id, str) or not isinstance(path, str):
        raise ValueError(f"{ref}: sae-lens's entry lacks repo_id or path; give hf://ORG/REPO/PATH")
    return f"hf://{repo_id}/{path.strip('/')}"


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
    text = Path(os.path.abspath(path)).as_posix()  # not resolve(): in the HF cache the file links to a blob
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
    hook, layer = featsep_hook(Path(os.path.abspath(path)).name)
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


# --- export -----------------------------------------------------------------------------------
EXPORT_FORMATS = ("saelens", "sparsify", "dictionary_learning")
EXPORTED_FROM_KEY = "exported_from"  # in the config's featsep_extra: which SAE an export copies
SAELENS_LAYOUT_VERSION = "6.0.0"  # the SAELens release whose cfg.json layout the saelens export writes
EXPORT_FILES = {"saelens": (SAELENS_CFG, SAELENS_WEIGHTS), "sparsify": (SPARSIFY_CFG, SPARSIFY_WEIGHTS),
                "dictionary_learning": (DL_CFG, DL_WEIGHTS)}


@dataclass
class ForeignFiles:
    """What one library's own save writes for an SAE: a JSON config and a weights file
    (safetensors, or for dictionary_learning a torch.save'd state dict)."""
    cfg_name: str
    cfg: dict[str, Any]
    weights_name: str
    tensors: dict[str, Tensor]


def _threshold_vector(sae: SAE) -> Tensor:
    """The per-latent JumpReLU threshold with featsep's inference encode: JumpReLU's own, and the
    one scalar of BatchTopK (and Matryoshka, whose prefixes only shape training) for every latent."""
    threshold = sae.threshold.detach().float()
    return threshold.expand(sae.cfg.d_sae).clone() if threshold.dim() == 0 else threshold.clone()


def _refuse_export(sae: SAE, fmt: str, reason: str) -> ValueError:
    holds = {"sparsify": "topk", "saelens": "relu_l1, topk, jumprelu, batchtopk, matryoshka",
             "dictionary_learning": "relu_l1, topk, jumprelu, batchtopk, matryoshka"}[fmt]
    return ValueError(f"a {sae.architecture} SAE cannot be exported to {fmt}: {reason} ({fmt} holds {holds}); "
                      "choose another --format")


def export_files(sae: SAE, fmt: str, extra: Optional[dict[str, Any]] = None) -> ForeignFiles:
    """The files library `fmt` (one of EXPORT_FORMATS) saves for `sae`, whose weights must already
    take raw activations (sae.io.fold_normalization: none of these formats carries featsep's
    factor). `extra` goes into the config under "featsep_extra", a key each library's loader
    ignores. An architecture the format cannot express exactly is refused in one ValueError line."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if sae.cfg.normalization_factor not in (None, 1.0):
        raise ValueError("fold the normalization factor into the weights first (featsep.sae.io.fold_normalization)")
    if sae.architecture not in ("relu_l1", "topk", "jumprelu", "batchtopk", "matryoshka"):
        raise _refuse_export(sae, fmt, "featsep knows no equivalent in that library")
    files = {"saelens": _saelens_files, "sparsify": _sparsify_files,
             "dictionary_learning": _dictionary_learning_files}[fmt](sae)
    if extra:
        files.cfg["featsep_extra"] = extra
    return files


def _weights(sae: SAE) -> dict[str, Tensor]:
    return {k: getattr(sae, k).detach().float().cpu().contiguous() for k in ("W_enc", "b_enc", "W_dec", "b_dec")}


def _saelens_files(sae: SAE) -> ForeignFiles:
    """SAELens 6's save_model: cfg.json = SAEConfig.to_dict() (d_in, d_sae, dtype, device,
    apply_b_dec_to_input, normalize_activations, reshape_activations, the architecture's own
    fields, "metadata", "architecture") and the SAE's state dict. BatchTopK-family SAEs are saved
    as SAELens saves them for inference: jumprelu with a per-latent threshold."""
    c = sae.cfg
    tensors = _weights(sae)
    cfg: dict[str, Any] = {"d_in": c.d_in, "d_sae": c.d_sae, "dtype": "float32", "device": "cpu",
                           "apply_b_dec_to_input": True, "normalize_activations": "none",
                           "reshape_activations": "none"}
    if sae.architecture == "relu_l1":
        arch = "standard"
    elif sae.architecture == "topk":
        arch = "topk"
        cfg.update(k=c.k, rescale_acts_by_decoder_norm=False)
    else:
        arch = "jumprelu"
        tensors["threshold"] = _threshold_vector(sae)
    cfg["metadata"] = {
        "model_name": c.model_name or None, "hook_name": c.hook_name or None, "model_class_name": None,
        "hook_head_index": None, "model_from_pretrained_kwargs": None, "prepend_bos": c.prepend_bos,
        "exclude_special_tokens": None, "neuronpedia_id": None, "context_size": c.context_size,
        "seqpos_slice": None, "dataset_path": c.dataset_path or None,
        # SAELens reads a config without a version >= 6 as an older layout and rebuilds "metadata"
        # from flat keys (dropping this block): name the layout's version; featsep did the training
        "sae_lens_version": SAELENS_LAYOUT_VERSION, "sae_lens_training_version": None,
    }
    cfg["architecture"] = arch
    cfg["normalization_factor"] = None  # featsep's key (SAELens ignores it): nothing left to undo
    return ForeignFiles(SAELENS_CFG, cfg, SAELENS_WEIGHTS, tensors)


def _sparsify_files(sae: SAE) -> ForeignFiles:
    """sparsify's SparseCoder.save_to_disk: sae.safetensors (encoder.weight [n, d],
    encoder.bias, W_dec, b_dec) and cfg.json = SparseCoderConfig.to_dict() plus d_in. sparsify
    encodes TopK(ReLU(...)) per token and has no threshold, so only featsep's topk fits."""
    if sae.architecture != "topk":
        reason = ("sparsify encodes a per-token TopK and has no threshold for the batch's selection"
                  if sae.architecture in ("batchtopk", "matryoshka") else
                  "sparsify encodes a per-token TopK only")
        raise _refuse_export(sae, "sparsify", reason)
    c, w = sae.cfg, _weights(sae)
    tensors = {"encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"],
               "W_dec": w["W_dec"], "b_dec": w["b_dec"]}
    cfg = {"activation": "topk", "expansion_factor": max(1, c.d_sae // c.d_in), "normalize_decoder": False,
           "num_latents": c.d_sae, "k": c.k, "multi_topk": False, "skip_connection": False,
           "transcode": False, "d_in": c.d_in}
    return ForeignFiles(SPARSIFY_CFG, cfg, SPARSIFY_WEIGHTS, tensors)


_DL_TRAINERS = {"relu_l1": ("StandardTrainer", "AutoEncoder"), "topk": ("TopKTrainer", "AutoEncoderTopK"),
                "batchtopk": ("BatchTopKTrainer", "BatchTopKSAE"), "matryoshka": ("BatchTopKTrainer", "BatchTopKSAE"),
                "jumprelu": ("JumpReluTrainer", "JumpReluAutoEncoder")}


def _dictionary_learning_files(sae: SAE) -> ForeignFiles:
    """dictionary_learning's training save: ae.pt (the dictionary's state dict) and config.json
    {"trainer": the trainer's config (trainer_class, dict_class, activation_dim, dict_size, k,
    layer, lm_name, submodule_name, ...), "buffer": {...}}. Matryoshka is written as
    BatchTopKSAE, whose encode is the same (the prefixes only shape training)."""
    c, w = sae.cfg, _weights(sae)
    trainer_class, dict_class = _DL_TRAINERS[sae.architecture]
    if dict_class == "JumpReluAutoEncoder":  # it does not subtract b_dec before encoding
        b_enc = (w["b_enc"].double() - w["b_dec"].double() @ w["W_enc"].double()).float()
        state = {"W_enc": w["W_enc"], "b_enc": b_enc, "W_dec": w["W_dec"], "b_dec": w["b_dec"],
                 "threshold": _threshold_vector(sae)}
    else:
        state = {"encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"],
                 "decoder.weight": w["W_dec"].T.contiguous()}
        if dict_class == "AutoEncoder":
            state["bias"] = w["b_dec"]
        else:  # AutoEncoderTopK / BatchTopKSAE buffers: k, and the threshold (-1: never set)
            state.update(b_dec=w["b_dec"], k=torch.tensor(c.k, dtype=torch.int),
                         threshold=sae.threshold.detach().float().reshape(()).clone()
                         if dict_class == "BatchTopKSAE" else torch.tensor(-1.0))
    named_layer = featsep_hook(c.hook_name)[1]  # the layer the hook name says, when hook_layer was left unset
    layer = c.hook_layer if c.hook_layer >= 0 else (named_layer if named_layer >= 0 else None)
    resid = _TL_HOOK.match(c.hook_name or "")
    submodule = f"resid_post_layer_{layer}" if resid and resid.group(2) == "hook_resid_post" else (c.hook_name or None)
    trainer: dict[str, Any] = {"trainer_class": trainer_class, "dict_class": dict_class,
                               "activation_dim": c.d_in, "dict_size": c.d_sae}
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        trainer["k"] = c.k
    trainer.update(seed=c.seed, device="cpu", layer=layer, lm_name=c.model_name, wandb_name=None,
                   submodule_name=submodule or "")
    cfg = {"trainer": trainer, "buffer": {"d_submodule": c.d_in, "io": "out", "ctx_len": c.context_size}}
    return ForeignFiles(DL_CFG, cfg, DL_WEIGHTS, state)
