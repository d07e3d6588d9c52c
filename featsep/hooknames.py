"""The hook-name grammar (TransformerLens style, `blocks.L.hook_resid_post`), in the foundation
layer: the language model serves these hooks, and SAE metadata, training results and evals
all name a layer by them without loading a model."""

from __future__ import annotations

import re

# The hook kinds we can serve; each maps to "the output of decoder layer L".
HOOK_KINDS = ("hook_resid_post",)
_HOOK_PATTERN = re.compile(r"^blocks\.(\d+)\.([A-Za-z_]+)$")


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
