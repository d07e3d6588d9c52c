"""Save and load SAEs as `sae_weights.safetensors` + `cfg.json`, a layout SAELens loads.

cfg.json holds our whole config plus SAELens's keys (flat, as older SAELens reads them, and
under "meta", as SAELens 6 does); `featsep_architecture` names our class so `load_sae`
rebuilds exactly what was saved, and `featsep_weights_sha256` (which SAELens ignores) lets it
tell a corrupted weights file from a good one.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file

from pydantic import ValidationError

from featsep.io import TEMP_SUFFIX, atomic_target, file_sha256, raise_if_disk_full, remove_stale_temp_files
from featsep.sae.base import SAE, get_architecture
from featsep.sae.foreign import (EXPORT_FILES, EXPORT_FORMATS, EXPORTED_FROM_KEY, export_files, foreign_format,
                                 is_sae_ref, load_foreign, resolve_sae_ref)
from featsep.settings import one_line

WEIGHTS_FILENAME = "sae_weights.safetensors"
CFG_FILENAME = "cfg.json"
SHA256_KEY = "featsep_weights_sha256"
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
    fold_normalization(sae), which SAELens evaluates correctly on raw activations. Returns the dir.

    Both files are written in full as temp files before either replaces its target, so a failed
    save (a full disk, say) leaves an earlier save as it was and a new directory not there at all."""
    if fold:
        sae = fold_normalization(sae)
    path = Path(path)
    created = next((p for p in reversed([path, *path.parents]) if not p.exists()), None)
    tensors = {k: v.detach().contiguous().cpu() for k, v in sae.saved_tensors().items()}
    cfg = sae.to_cfg_dict()
    cfg["meta"] = {k: cfg[k] for k in _META_KEYS}
    if extra:
        cfg["featsep_extra"] = extra
    try:
        path.mkdir(parents=True, exist_ok=True)
        # cfg.json commits last: when it is there, the weights it names (by checksum) are too
        with atomic_target(path / CFG_FILENAME) as cfg_tmp, atomic_target(path / WEIGHTS_FILENAME) as weights_tmp:
            save_file(tensors, str(weights_tmp))
            cfg[SHA256_KEY] = file_sha256(weights_tmp)
            cfg_tmp.write_text(json.dumps(cfg, indent=2, default=str))
    except BaseException as e:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise_if_disk_full(e, path, "free space or save the SAE elsewhere")
        raise
    return path


def load_sae(path: str | os.PathLike, device: Optional[str] = None) -> SAE:
    """Rebuild the saved architecture with its weights (on `device`, default: as saved if
    available, else CPU). The weights are checked against cfg.json's checksum when it has one
    (SAEs saved before checksums, or by hand, load unchecked). SAEs saved by SAELens, sparsify,
    dictionary_learning or Gemma Scope load too, as the featsep architecture with the same
    maths (featsep.sae.foreign). `path` may be a hub reference (hf://ORG/REPO/PATH,
    saelens:RELEASE/SAE_ID; foreign.resolve_sae_ref)."""
    path = resolve_sae_ref(path)
    fmt = foreign_format(path)
    if fmt is not None:
        return load_foreign(path, fmt, device)
    cfg_file, weights_file = path / CFG_FILENAME, path / WEIGHTS_FILENAME
    if not cfg_file.is_file() or not weights_file.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is not a saved SAE: it needs {CFG_FILENAME} and {WEIGHTS_FILENAME} "
            "(write one with featsep.save_sae, or pass the SAE's directory), or holds neither of the foreign "
            "layouts (sparsify cfg.json + sae.safetensors, dictionary_learning ae.pt, Gemma Scope params.npz)"
        )
    cfg = read_sae_cfg(path)
    name = cfg.get("featsep_architecture")
    if name is None:
        raise ValueError(
            f"{str(cfg_file)!r} has no 'featsep_architecture': it was not written by featsep; "
            "load it with SAELens instead"
        )
    expected = cfg.get(SHA256_KEY)
    if expected is not None and file_sha256(weights_file) != expected:
        raise ValueError(f"{str(weights_file)!r} is corrupted: its sha256 differs from the one {CFG_FILENAME} "
                         "records; re-save or re-export the SAE (or retrain it)")
    cls = get_architecture(name)
    fields = {k: v for k, v in cfg.items() if k in cls.config_class.model_fields}
    if device is None:
        device = fields.get("device", "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"
    fields["device"] = device
    try:
        sae = cls(cls.config_class(**fields))
    except ValidationError as e:
        raise ValueError(f"{str(cfg_file)!r} is not a valid {name} config: {one_line(e, cls.config_class)}") from None
    try:
        tensors = load_file(weights_file, device=str(device))
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{str(weights_file)!r} is corrupt ({e}); re-save the SAE") from None
    expected_tensors = sae.saved_tensors()
    missing = set(expected_tensors) - set(tensors)
    if missing:
        raise ValueError(f"{str(weights_file)!r} lacks {sorted(missing)}; re-save the SAE")
    for key, want in expected_tensors.items():
        if tensors[key].shape != want.shape:
            raise ValueError(f"{str(cfg_file)!r} says d_in={sae.cfg.d_in}, d_sae={sae.cfg.d_sae}, so {key} should have "
                             f"shape {tuple(want.shape)}, but {WEIGHTS_FILENAME} holds {key} of shape "
                             f"{tuple(tensors[key].shape)}; the two files do not belong together: re-save the SAE")
    sae.load_saved_tensors(tensors)
    return sae


def read_sae_cfg(path: str | os.PathLike) -> dict[str, Any]:
    """cfg.json of the SAE dir `path` as a dict (ValueError when it is not one)."""
    cfg_file = Path(path) / CFG_FILENAME
    try:
        cfg = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(cfg_file)!r} is corrupt ({e}); re-save the SAE") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{str(cfg_file)!r} is corrupt (a JSON {type(cfg).__name__}, not an object); re-save the SAE")
    return cfg


def _earlier_export(out: Path) -> bool:
    """`out` holds an export of some format: a config there whose featsep_extra names its source."""
    for name in {files[0] for files in EXPORT_FILES.values()}:
        try:
            extra = json.loads((out / name).read_text()).get("featsep_extra")
        except (OSError, ValueError, AttributeError):  # absent, unreadable, not a JSON object
            continue
        if isinstance(extra, dict) and EXPORTED_FROM_KEY in extra:
            return True
    return False


def export_sae(sae_dir: str | os.PathLike, out: str | os.PathLike, force: bool = False,
               fmt: str = "saelens") -> SAE:
    """Save a folded copy of the SAE `sae_dir` (a path or hub reference) to `out` as library
    `fmt` saves it (foreign.export_files; see fold_normalization); returns the SAE as loaded.
    `out` must not be the SAE's dir or lie inside it, and must be new or empty, or, with `force`,
    an earlier export (its config records where it came from), of any format: the files of the
    other formats are removed once the new ones are written, so the folder holds one SAE."""
    if fmt not in EXPORT_FORMATS:  # before loading: a typo costs nothing
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    src, out = resolve_sae_ref(sae_dir), Path(out)
    sae = load_sae(src, device="cpu")
    source = sae_dir if is_sae_ref(sae_dir) else str(src.resolve())  # a hub reference says more than the cache path
    files = export_files(fold_normalization(sae), fmt, extra={EXPORTED_FROM_KEY: source})
    if out.resolve() == src.resolve() or out.resolve().is_relative_to(src.resolve()):
        raise ValueError(f"{str(out)!r} is the SAE being exported or inside it; the export is a different "
                         "(folded) SAE and would overwrite it: choose another OUT")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{str(out)!r} is a file; choose a new directory as OUT")
    held = [p for p in out.iterdir() if not p.name.endswith(TEMP_SUFFIX)] if out.is_dir() else []
    if held:
        if not _earlier_export(out):
            raise FileExistsError(f"{str(out)!r} already holds files and is not an earlier export; "
                                  "choose a new or empty directory as OUT")
        if not force:
            raise FileExistsError(f"{str(out)!r} holds an earlier export; pass --force to overwrite it")
    remove_stale_temp_files(out)  # of an export killed midway
    created = next((p for p in reversed([out, *out.parents]) if not p.exists()), None)
    try:
        out.mkdir(parents=True, exist_ok=True)
        # the config commits last: when it is there, its weights are too
        with atomic_target(out / files.cfg_name) as cfg_tmp, atomic_target(out / files.weights_name) as weights_tmp:
            if files.weights_name.endswith(".safetensors"):
                save_file(files.tensors, str(weights_tmp))
            else:
                torch.save(files.tensors, weights_tmp)
            cfg_tmp.write_text(json.dumps(files.cfg, indent=2))
    except BaseException as e:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise_if_disk_full(e, out, "free space or save the SAE elsewhere")
        raise
    for name in {n for pair in EXPORT_FILES.values() for n in pair} - {files.cfg_name, files.weights_name}:
        (out / name).unlink(missing_ok=True)  # an earlier export's files of another format
    return sae
