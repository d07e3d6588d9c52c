"""Language models and hook points: load a causal LM, read or replace the residual stream.

    lm = load_lm("gemma-3-270m")                       # offline default; or a hub id / dir / .gguf
    ids, mask = lm.tokenize(texts, max_length=128)     # right-padded, one BOS at position 0
    acts = lm.forward_to_hook(ids, mask, "blocks.8.hook_resid_post")   # [B, L, d], stops at layer 8
    logits = lm.run_with_hook(ids, mask, "blocks.8.hook_resid_post", sae_reconstruct)
"""

from .hooks import ARCHITECTURES, HOOK_KINDS, parse_hook
from .loading import (
    OFFLINE_DEFAULT,
    OFFLINE_MODELS,
    cache_root,
    format_models_table,
    list_models,
    load_lm,
    resolve_device,
    resolve_dtype,
)
from .model import LanguageModel

__all__ = [
    "ARCHITECTURES",
    "HOOK_KINDS",
    "LanguageModel",
    "OFFLINE_DEFAULT",
    "OFFLINE_MODELS",
    "cache_root",
    "format_models_table",
    "list_models",
    "load_lm",
    "parse_hook",
    "resolve_device",
    "resolve_dtype",
]
