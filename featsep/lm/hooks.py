"""Hook-point names and where each supported architecture keeps its decoder layers.

Hook names follow TransformerLens: `blocks.L.hook_resid_post` is the residual stream after
decoder layer L, i.e. output[0] of the HF decoder layer L. It is NOT `hidden_states[L + 1]`
of an HF forward, whose last entry has the final norm applied.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from featsep.hooknames import HOOK_KINDS, parse_hook  # noqa: F401  (part of lm's API)

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
