"""Save and load SAEs as `sae_weights.safetensors` + `cfg.json`, a layout SAELens loads.

cfg.json holds our whole config plus SAELens's keys (flat, as older SAELens reads them, and
under "meta", as SAELens 6 does); `featsep_architecture` names our class so `load_sae`
rebuilds exactly what was saved.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file

from featsep.io import atomic_target, write_text_atomic
from featsep.sae.base import SAE, get_architecture
from featsep.sae.foreign import foreign_format, load_foreign

WEIGHTS_FILENAME = "sae_weights.safetensors"
CFG_FILENAME = "cfg.json"
_META_KEYS = ("model_name", "hook_name", "hook_layer", "context_size", "prepend_bos", "dataset_path")


@torch.no_grad()
def fold_normalization(sae: SAE) -> SAE:
    """A copy that takes raw activations: the constant factor f of cfg.normalization_factor
    (x_normalised = x * f) folded into the weights, W_enc * f, W_dec / f, b_dec / f, so codes are
    unchanged and reconstructions come out in raw units. SAELens ignores featsep's factor key
    (and its own saved SAEs are folded the same way), so SAEs meant for SAELens are saved so."""
    out = copy.deepcopy(sae)
    f = sae.cfg.normalization_factor
    if f is not None and f != 1.0:
        out.W_enc.mul_(f)
        out.W_dec.div_(f)
        out.b_dec.div_(f)
    out.cfg.normalization_factor = None
    return out


def save_sae(sae: SAE, path: str | os.PathLike, extra: Optional[dict[str, Any]] = None,
             fold: bool = False) -> Path:
    """Write `path/sae_weights.safetensors` and `path/cfg.json`; `extra` (JSON-serialisable)
    is stored in cfg.json under "featsep_extra" (e.g. training summary). `fold`: save
    fold_normalization(sae), which SAELens evaluates correctly on raw activations. Returns the dir."""
    if fold:
        sae = fold_normalization(sae)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in sae.saved_tensors().items()}
    cfg = sae.to_cfg_dict()
    cfg["meta"] = {k: cfg[k] for k in _META_KEYS}
    if extra:
        cfg["featsep_extra"] = extra
    text = json.dumps(cfg, indent=2, default=str)
    # weights first: a directory whose cfg.json exists always has matching weights
    with atomic_target(path / WEIGHTS_FILENAME) as tmp:
        save_file(tensors, str(tmp))
    write_text_atomic(path / CFG_FILENAME, text)
    return path


def load_sae(path: str | os.PathLike, device: Optional[str] = None) -> SAE:
    """Rebuild the saved architecture with its weights (on `device`, default: as saved if
    available, else CPU). SAEs saved by SAELens, sparsify, dictionary_learning or Gemma Scope
    load too, as the featsep architecture with the same maths (featsep.sae.foreign)."""
    path = Path(path)
    fmt = foreign_format(path)
    if fmt is not None:
        return load_foreign(path, fmt, device)
    cfg_file, weights_file = path / CFG_FILENAME, path / WEIGHTS_FILENAME
    if not cfg_file.is_file() or not weights_file.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is not a saved SAE: it needs {CFG_FILENAME} and {WEIGHTS_FILENAME} "
            "(write one with featsep.save_sae, or pass the SAE's directory)"
        )
    try:
        cfg = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(cfg_file)!r} is corrupt ({e}); re-save the SAE") from None
    name = cfg.get("featsep_architecture")
    if name is None:
        raise ValueError(
            f"{str(cfg_file)!r} has no 'featsep_architecture': it was not written by featsep; "
            "load it with SAELens instead"
        )
    cls = get_architecture(name)
    fields = {k: v for k, v in cfg.items() if k in cls.config_class.model_fields}
    if device is None:
        device = fields.get("device", "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"
    fields["device"] = device
    sae = cls(cls.config_class(**fields))
    try:
        tensors = load_file(weights_file, device=str(device))
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{str(weights_file)!r} is corrupt ({e}); re-save the SAE") from None
    missing = set(sae.saved_tensors()) - set(tensors)
    if missing:
        raise ValueError(f"{str(weights_file)!r} lacks {sorted(missing)}; re-save the SAE")
    sae.load_saved_tensors(tensors)
    return sae
