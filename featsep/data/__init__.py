"""Data stage: text -> packed token rows -> activations -> batches (live or from a disk cache).

    texts = text_source("bbc-news")                        # or a file/dir, or an HF dataset name
    rows = pack_tokens(texts, lm.tokenizer, 128)           # BOS-led rows, SAELens packing
    stream = ActivationStream.from_lm(lm, "bbc-news", "blocks.8.hook_resid_post", batch_size=4096)
    build_cache("gemma-3-270m", "blocks.8.hook_resid_post", "bbc-news", 200_000, "cache/g8")
    stream = ActivationStream.from_cache("cache/g8", batch_size=4096)
    stream = stream_from_config(cfg.model, cfg.data, batch_size=4096)  # what `featsep train` uses
    datasets(kind="probing set")                           # the registered datasets (featsep.data.registry)
"""

from featsep.data.cache import ActivationCache, build_cache
from featsep.data.errors import CacheError, DataError
from featsep.data.harvest import (
    ActivationChunk,
    LiveSource,
    estimate_normalization_factor,
    harvest_batch,
    special_token_mask,
)
from featsep.data.packing import pack_token_lists, pack_tokens, pack_tokens_reference, tokenize_documents
from featsep.data.stream import ActivationStream, ArraySource, stream_from_config
from featsep.data.text import TEXT_FILE_SUFFIXES, load_bbc_news, text_source
from featsep.data.registry import DATASETS, DatasetEntry, datasets
# the loader modules attach their loaders to DATASETS when imported
from featsep.data.probing import load_probing_dataset
from featsep.data.questions import question_set
from featsep.data.scr import scr_frames

__all__ = [
    "ActivationCache",
    "ActivationChunk",
    "ActivationStream",
    "ArraySource",
    "CacheError",
    "DATASETS",
    "DatasetEntry",
    "DataError",
    "LiveSource",
    "TEXT_FILE_SUFFIXES",
    "build_cache",
    "datasets",
    "estimate_normalization_factor",
    "harvest_batch",
    "load_bbc_news",
    "load_probing_dataset",
    "pack_token_lists",
    "pack_tokens",
    "pack_tokens_reference",
    "question_set",
    "scr_frames",
    "special_token_mask",
    "stream_from_config",
    "text_source",
    "tokenize_documents",
]
