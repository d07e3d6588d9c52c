"""The `[model]` section: which language model, and where activations are read from it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from featsep.settings import Strict


class ModelConfig(Strict):
    """The language model and the hook its activations are read at."""

    name: str = "gemma-3-270m"
    hook: str = "blocks.8.hook_resid_post"
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(8, gt=0, description="contexts per language-model forward")
