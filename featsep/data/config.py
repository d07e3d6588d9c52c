"""The `[data]` section: text (or a cache of activations) and how it becomes a stream of
activation batches. The stream, the harvester and `featsep cache` read their defaults here."""

from __future__ import annotations

from typing import Optional

from pydantic import Field, field_validator, model_validator

from featsep.settings import Strict


class DataConfig(Strict):
    """Text (or a cache of activations) and how it becomes a stream of activation batches."""

    dataset: str = "bbc-news"
    text_column: str = "text"
    encoding: str = Field("utf-8", description="of local text files (e.g. latin-1, cp1252, utf-16); bad bytes are an error")
    split: str = "train"
    context_length: int = Field(128, gt=1)
    cache: Optional[str] = Field(None, description="activation cache dir; when set, train reads it")
    shuffle_buffer: int = Field(
        256, ge=0, description="contexts mixed by the shuffling buffer (0: keep sequences in order)"
    )
    sequence_mode: bool = Field(
        False, description="keep whole contexts in order (temporal penalties need this)"
    )
    normalize: bool = Field(True, description="scale activations so that mean ||x||^2 = d")
    norm_estimate_batches: int = Field(8, gt=0)
    exclude_special_tokens: bool = True
    seed: int = 42

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        from featsep.data.tables import check_encoding

        return check_encoding(value)

    @model_validator(mode="after")
    def _dataset_exists(self) -> "DataConfig":
        """A misspelt corpus or a missing file fails when the config is read, not after the
        model has loaded (a cache, when set, is what training reads instead)."""
        if not self.cache:
            from featsep.data.text import text_spec_kind

            text_spec_kind(self.dataset.strip())
        return self
