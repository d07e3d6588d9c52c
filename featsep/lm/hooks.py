"""Hook-point names and where each supported architecture keeps its decoder layers.

Hook names follow TransformerLens: `blocks.L.hook_resid_post` is the residual stream after
decoder layer L, i.e. output[0] of the HF decoder layer L. It is NOT `hidden_states[L + 1]`
of an HF forward, whose last entry has the final norm applied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

# The hook kinds we can serve; each maps to "the output of decoder layer L".
HOOK_KINDS = ("hook_resid_post",)
_HOOK_PATTERN = re.compile(r"^blocks\.(\d+)\.([A-Za-z_]+)$")


@dataclass(frozen=True)
class ArchitectureSpec:
    """Attribute paths from the HF causal-LM wrapper to its base model and decoder layers."""

    base_model: str  # e.g. "model" (Gemma, Llama), "transformer" (GPT-2)
    layers: str  # relative to the base model, e.g. "layers" or "h"


# model_type (config.model_type) -> where to find things. Add a line to support a new family.
ARCHITECTURES: dict[str, ArchitectureSpec] = {
    "gemma2": ArchitectureSpec("model", "layers"),
    "gemma3_text": ArchitectureSpec("model", "layers"),
    "llama": ArchitectureSpec("model", "layers"),
    "qwen2": ArchitectureSpec("model", "layers"),
    "gpt2": ArchitectureSpec("transformer", "h"),
    "gpt_neox": ArchitectureSpec("gpt_neox", "layers"),
}


def parse_hook(hook: str) -> int:
    """Layer index of a hook name such as `blocks.8.hook_resid_post` (range not checked)."""
    match = _HOOK_PATTERN.match(hook.strip()) if isinstance(hook, str) else None
    if match is None:
        raise ValueError(
            f"hook {hook!r} is not a hook name; use the form blocks.L.hook_resid_post "
            "(e.g. blocks.8.hook_resid_post, the residual stream after decoder layer 8)"
        )
    layer, kind = int(match.group(1)), match.group(2)
    if kind not in HOOK_KINDS:
        raise ValueError(
            f"hook kind {kind!r} in {hook!r} is not supported; valid kinds: {', '.join(HOOK_KINDS)} "
            f"(e.g. blocks.{layer}.hook_resid_post)"
        )
    return layer


def architecture_spec(model_type: str) -> ArchitectureSpec:
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise ValueError(
            f"architecture {model_type!r} is not supported; supported model types: "
            f"{', '.join(sorted(ARCHITECTURES))} (add a line to featsep.lm.hooks.ARCHITECTURES)"
        ) from None


def _get_attr_path(obj: object, path: str) -> object:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def base_model_and_layers(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """The base transformer (no LM head) and its list of decoder layers."""
    spec = architecture_spec(model.config.model_type)
    base = _get_attr_path(model, spec.base_model)
    return base, _get_attr_path(base, spec.layers)
