"""Activations from a language model: batched forwards cut at the hook, special tokens dropped.

The unit passed between stages is an `ActivationChunk`: rows of activations [n, d] (fp32, CPU)
plus an index [n, 3] = (context id, position in context, token id) saying where each row came
from, so sequence-aware consumers (temporal penalties, evals) can find context boundaries.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from itertools import islice
from typing import Callable, Iterable, Iterator, Optional, Sequence

import torch
from torch import Tensor

from featsep.data.errors import DataError
from featsep.data.packing import pack_tokens
from featsep.data.text import text_source

INDEX_COLUMNS = ("context", "position", "token")


@dataclass
class ActivationChunk:
    acts: Tensor  # [n, d] float32
    index: Tensor  # [n, 3] int64: context id, position, token id

    def __len__(self) -> int:
        return self.acts.shape[0]

    def __getitem__(self, rows) -> "ActivationChunk":
        return ActivationChunk(self.acts[rows], self.index[rows])

    @staticmethod
    def cat(chunks: Sequence["ActivationChunk"], d_in: int) -> "ActivationChunk":
        if not chunks:
            return ActivationChunk(torch.empty(0, d_in), torch.empty(0, 3, dtype=torch.long))
        if len(chunks) == 1:
            return chunks[0]
        return ActivationChunk(torch.cat([c.acts for c in chunks]), torch.cat([c.index for c in chunks]))


def special_token_mask(token_ids: Tensor, special_ids: Iterable[int]) -> Tensor:
    """True where a position holds BOS/EOS/pad (SAEBench's ignore_tokens), by id."""
    ids = torch.tensor(sorted(special_ids), dtype=token_ids.dtype)
    return torch.isin(token_ids, ids)


def harvest_batch(lm, ids: Tensor, hook: str, first_context: int = 0, special_ids: Iterable[int] = ()) -> ActivationChunk:
    """Activations of one LM forward over packed rows ids [B, L], special positions dropped.

    Rows are full-length packed contexts, so no padding and no attention mask are needed.
    """
    acts = lm.forward_to_hook(ids, None, hook).to(device="cpu", dtype=torch.float32)
    b, length = ids.shape
    index = torch.stack(
        [
            torch.arange(first_context, first_context + b).unsqueeze(1).expand(b, length),
            torch.arange(length).unsqueeze(0).expand(b, length),
            ids,
        ],
        dim=-1,
    )
    special_ids = set(special_ids)
    if special_ids:
        keep = ~special_token_mask(ids, special_ids)
        return ActivationChunk(acts[keep], index[keep])
    return ActivationChunk(acts.reshape(b * length, -1), index.reshape(b * length, 3))


def batched_rows(rows: Iterable[Tensor], batch_size: int) -> Iterator[Tensor]:
    """Stack consecutive rows into [batch_size, L] (the last batch may be smaller)."""
    if batch_size < 1:
        raise DataError(f"LM batch size must be >= 1, got {batch_size}")
    rows = iter(rows)
    while group := list(islice(rows, batch_size)):
        yield torch.stack(group)


def estimate_normalization_factor(acts: Sequence[Tensor] | Tensor) -> float:
    """factor = sqrt(d / mean ||x||^2), so that mean ||x * factor||^2 == d.

    SAELens's "expected_average_only_in" uses sqrt(d) / mean ||x|| instead (mean norm, not RMS
    norm); the two agree when all norms are equal. We use the RMS form: it makes the mean
    squared norm exactly d, which is what reconstruction losses (MSE) see.
    """
    if isinstance(acts, Tensor):
        acts = [acts]
    total = sum(float(a.double().pow(2).sum()) for a in acts)
    n = sum(a.shape[0] for a in acts)
    return _factor(total, n, acts[0].shape[-1] if n else 1)


def first_chunks_factor(chunks: Iterator, n: int, acts=lambda chunk: chunk.acts,
                        reduce_sum: Optional[Callable[[Tensor], Tensor]] = None) -> tuple[float, list]:
    """The normalisation factor from the first `n` chunks of a source, and those chunks (the
    caller still uses them: the stream feeds its buffer, the cache its first shard). `acts`
    reads the activations of one item (the cache's items carry their first context too).
    reduce_sum: sums a float64 tensor [sum ||x||^2, rows] over the ranks of a torchrun job, so
    every rank gets the one factor of all the ranks' first chunks."""
    first = list(islice(chunks, n))
    if reduce_sum is None:
        return estimate_normalization_factor([acts(c) for c in first]), first
    stats = torch.tensor([sum(float(acts(c).double().pow(2).sum()) for c in first),
                          float(sum(acts(c).shape[0] for c in first))], dtype=torch.float64)
    total, rows = (float(v) for v in reduce_sum(stats))
    return _factor(total, int(rows), acts(first[0]).shape[-1] if first else 1), first


def _factor(total_sq: float, rows: int, d: int) -> float:
    if rows == 0:
        raise DataError("no activations to estimate the normalisation factor from (corpus too small?)")
    mean_sq = total_sq / rows
    if not math.isfinite(mean_sq) or mean_sq <= 0:
        raise DataError(f"activations have mean squared norm {mean_sq}; cannot normalise (NaN/zero activations?)")
    return math.sqrt(d / mean_sq)


class LiveSource:
    """Chunks harvested on the fly from text; position = contexts consumed (per epoch).

    Resuming re-reads and re-packs the text up to the recorded context (cheap) but never
    re-runs the LM for it; LM batches keep the same composition, so resumed activations are
    bit-identical to an uninterrupted run on the same machine.
    """

    kind = "live"

    def __init__(
        self,
        lm,
        dataset: str,
        hook: str,
        context_length: int = 128,
        lm_batch_size: int = 8,
        text_column: str = "text",
        split: str = "train",
        seed: int = 42,
        exclude_special_tokens: bool = True,
        repeat: bool = True,
        progress: bool = False,
        encoding: str = "utf-8",
        rank: int = 0,
        world_size: int = 1,
    ):
        """rank / world_size: a torchrun rank runs the LM on every world_size-th LM batch of
        contexts (batch b goes to rank b % world_size): the ranks' contexts are disjoint, their
        ids global, and each context's activations are those of a single-process harvest."""
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not one of the {world_size} ranks of the job")
        lm.hook_layer(hook)  # a bad hook fails before any work
        if lm.tokenizer is None:
            raise DataError(f"{lm.name} has no tokenizer; wrap it with LanguageModel.from_hf(model, tokenizer)")
        self.lm, self.dataset, self.hook = lm, dataset, hook
        self.context_length, self.lm_batch_size = context_length, lm_batch_size
        self.text_column, self.split, self.seed, self.encoding = text_column, split, seed, encoding
        self.exclude_special_tokens, self.repeat, self.progress = exclude_special_tokens, repeat, progress
        self.d_in = lm.d_model
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.contexts_done = 0  # in this epoch
        self.contexts_total = 0  # over all epochs: the context id of the next row
        text_source(dataset, text_column, split, seed, encoding)  # unknown spec / no network: fail now

    def describe(self) -> dict:
        return {"model": self.lm.name, "hook": self.hook, "dataset": self.dataset, "context_length": self.context_length}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "contexts_done": self.contexts_done, "contexts_total": self.contexts_total}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.contexts_done, self.contexts_total = (
            int(state["epoch"]), int(state["contexts_done"]), int(state["contexts_total"])
        )

    def rows(self) -> Iterator[Tensor]:
        """Packed token rows of the current epoch from the current position."""
        texts = text_source(self.dataset, self.text_column, self.split, self.seed, self.encoding)
        packed = pack_tokens(texts, self.lm.tokenizer, self.context_length, self.lm.bos_token_id)
        return islice(packed, self.contexts_done, None)

    def chunks(self) -> Iterator[ActivationChunk]:
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(desc=f"harvest {self.hook}", unit="tok", unit_scale=True, smoothing=0.1)
        try:
            while True:
                special = self.lm.special_token_ids if self.exclude_special_tokens else set()
                for ids in batched_rows(self.rows(), self.lm_batch_size):
                    # positions are multiples of lm_batch_size within an epoch, so this is the batch's number
                    mine = (self.contexts_done // self.lm_batch_size) % self.world_size == self.rank
                    chunk = harvest_batch(self.lm, ids, self.hook, self.contexts_total, special) if mine else None
                    self.contexts_done += ids.shape[0]
                    self.contexts_total += ids.shape[0]
                    if chunk is None:
                        continue
                    if bar is not None:
                        bar.update(ids.numel())
                    yield chunk
                if self.contexts_done == 0:  # a whole epoch gave no row
                    raise DataError(
                        f"dataset {self.dataset!r} is shorter than one context of {self.context_length} "
                        "tokens; use more text or a smaller data.context_length"
                    )
                if not self.repeat:
                    return
                self.epoch += 1
                self.contexts_done = 0
                warnings.warn(
                    f"dataset {self.dataset!r} exhausted after {self.contexts_total} contexts; "
                    f"starting epoch {self.epoch + 1} (repeating the same text)",
                    stacklevel=2,
                )
        finally:
            if bar is not None:
                bar.close()
