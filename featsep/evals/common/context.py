"""Language-model work shared by every eval, and the cache that lets many SAEs share it.

`EvalContext` holds the model and hook for one group of SAEs. `ctx.cached(kind, key, fn)`
returns fn()'s result from memory (same call), else from disk (a later call), else computes
and stores it. Disk entries are keyed by the model's fingerprint (name, config and a hash of
a few weights), the hook, the kind of work and its settings, so a different model or
setting never reads a stale entry. A setting that names a local file or folder (a labelled
table, a corpus, a local copy of a hub set) is keyed by its contents too: replace the file and
the next call recomputes instead of returning the old results.

SAE normalisation lives here only: the SAE sees x * cfg.normalization_factor and its
reconstruction is divided by the factor (no factor: raw x).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from featsep.io import atomic_target, file_sha256

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when a cached layout changes
_CONTENT_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, per process


def content_hash(path: Path) -> str:
    """sha256 of a file's bytes, or of a folder's files (relative names and bytes, in order)."""
    if path.is_dir():
        digest = hashlib.sha256()
        for sub in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(sub.relative_to(path)).encode() + b"\0" + content_hash(sub).encode())
        return digest.hexdigest()
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _CONTENT_HASHES:
        _CONTENT_HASHES[memo] = file_sha256(path)
    return _CONTENT_HASHES[memo]


def with_local_contents(value: Any) -> Any:
    """`value` with each string that names an existing local file or folder paired with the
    hash of its contents (dicts and lists walked), for cache keys."""
    if isinstance(value, dict):
        return {k: with_local_contents(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [with_local_contents(v) for v in value]
    if isinstance(value, (str, Path)) and str(value).strip() and len(str(value)) < 4096:
        path = Path(value).expanduser()
        try:
            exists = path.exists()
        except OSError:  # not a usable path name
            exists = False
        if exists:
            return {"path": str(value), "sha256": content_hash(path)}
    return value


# ---- the SAE side ------------------------------------------------------------------------------


def sae_scale(sae) -> float:
    factor = getattr(sae.cfg, "normalization_factor", None)
    return 1.0 if factor is None else float(factor)


def sae_device_dtype(sae) -> tuple[torch.device, torch.dtype]:
    p = next(sae.parameters(), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


@torch.no_grad()
def encode(sae, x: Tensor) -> Tensor:
    """Codes of raw activations x [..., d_in] (normalised for the SAE first)."""
    device, dtype = sae_device_dtype(sae)
    return sae.encode(x.to(device=device, dtype=dtype) * sae_scale(sae))


@torch.no_grad()
def encode_decode(sae, x: Tensor) -> tuple[Tensor, Tensor]:
    """(codes, reconstruction in x's own scale and dtype) for raw activations x."""
    codes = encode(sae, x)
    x_hat = sae.decode(codes) / sae_scale(sae)
    return codes, x_hat.to(device=x.device, dtype=x.dtype)


def check_sae_fits(sae, lm, hook: str) -> None:
    """One clear error when an SAE cannot read this model's activations at this hook."""
    lm.hook_layer(hook)  # raises a clear error for a bad or out-of-range hook
    d_in = int(sae.cfg.d_in)
    if d_in != lm.d_model:
        raise ValueError(
            f"SAE d_in={d_in} does not match {lm.name}'s d_model={lm.d_model}: the SAE was trained on "
            f"another model ({sae.cfg.model_name or 'model unknown'}); evaluate it with that model "
            "(--model NAME) or pick an SAE trained on this one"
        )


# ---- the model side ----------------------------------------------------------------------------


def not_special(lm, input_ids: Tensor) -> Tensor:
    """Bool [B, L]: positions whose token is not pad/eos/bos (SAEBench's ignore_tokens)."""
    ids = torch.tensor(sorted(lm.special_token_ids), dtype=input_ids.dtype, device=input_ids.device)
    return ~torch.isin(input_ids, ids)


def _model_fingerprint(lm) -> str:
    h = hashlib.sha256()
    h.update(str(lm.name).encode())
    config = getattr(lm.model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        h.update(config.to_json_string(use_diff=False).encode())
    # a few weights: random-initialised test models share name and config
    for _, p in list(lm.model.named_parameters())[:3]:
        flat = p.detach().flatten()[:4096].float().cpu().numpy()
        h.update(flat.tobytes())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    from featsep.lm import cache_root

    return cache_root() / "evals"


class EvalContext:
    """The model and hook one group of SAEs is evaluated on, with the shared-work cache.

    cache_dir: a folder for disk entries; None disables the disk cache (memory only).
    """

    def __init__(self, lm, hook: str, cache_dir: Optional[str | Path] = None, verbose: bool = True):
        self.lm = lm
        self.hook = hook
        self.layer = lm.hook_layer(hook)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.verbose = verbose
        self._memory: dict[str, Any] = {}
        self._fingerprint: Optional[str] = None

    def budget(self, value: Any, gpu: Any, cpu: Any) -> Any:
        """A size setting: the user's value if set, else SAEBench's (gpu) on an accelerator and a
        CPU-sized default on CPU (the one rule every eval's unset sizes follow)."""
        if value is not None:
            return value
        return gpu if self.lm.device.type != "cpu" else cpu

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = _model_fingerprint(self.lm)
        return self._fingerprint

    def cache_key(self, kind: str, key: dict[str, Any]) -> str:
        payload = json.dumps(
            {"format": CACHE_FORMAT, "model": self.fingerprint, "hook": self.hook, "kind": kind,
             **with_local_contents(key)},
            sort_keys=True,
            default=str,
        )
        return f"{kind}-{hashlib.sha256(payload.encode()).hexdigest()[:24]}"

    def _path(self, name: str) -> Optional[Path]:
        return self.cache_dir / f"{name}.pt" if self.cache_dir is not None else None

    def lookup(self, kind: str, key: dict[str, Any], memory: bool = True) -> Any:
        """The stored value, or None."""
        name = self.cache_key(kind, key)
        if name in self._memory:
            return self._memory[name]
        path = self._path(name)
        value = _load(path) if path is not None and path.exists() else None
        if value is not None and memory:
            self._memory[name] = value
        return value

    def store(self, kind: str, key: dict[str, Any], value: Any, memory: bool = True) -> Any:
        name = self.cache_key(kind, key)
        if memory:
            self._memory[name] = value
        path = self._path(name)
        if path is not None:
            _save_atomic(path, value)
        return value

    def cached(self, kind: str, key: dict[str, Any], compute: Callable[[], Any], memory: bool = True) -> Any:
        """compute()'s value (tensors, lists, dicts, numbers, strings), computed at most once.

        memory=False: keep only the disk copy (for big values each needed once per call)."""
        value = self.lookup(kind, key, memory)
        return value if value is not None else self.store(kind, key, compute(), memory)

    # -- activations at the hook --------------------------------------------------------------
    @torch.no_grad()
    def hook_acts(self, input_ids: Tensor, attention_mask: Optional[Tensor], batch_size: int) -> Tensor:
        """Float32 CPU activations [N, L, d] at the hook, in batches of batch_size rows."""
        out = []
        for start in range(0, input_ids.shape[0], batch_size):
            ids = input_ids[start : start + batch_size]
            mask = attention_mask[start : start + batch_size] if attention_mask is not None else None
            out.append(self.lm.forward_to_hook(ids, mask, self.hook).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, input_ids.shape[1], self.lm.d_model)


def _save_atomic(path: Path, value: Any) -> None:
    with atomic_target(path) as tmp:  # streamed to disk: no in-memory copy of a big entry
        torch.save(value, tmp)


def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged entry is recomputed, never trusted
        log.warning("eval cache entry %s is unreadable (%s); recomputing it", path, e)
        return None
