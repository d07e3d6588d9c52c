"""`ActivationStream`: the trainer-facing iterator of [batch_size, d_in] activation batches.

Three sources, one object:
    ActivationStream.from_lm(lm, "bbc-news", "blocks.8.hook_resid_post", batch_size=4096)
    ActivationStream.from_cache("cache/dir", batch_size=4096)
    ActivationStream.from_tensor(acts, batch_size=4096)          # acts [N, d] or [n_ctx, L, d]

Every batch has exactly batch_size rows (a finite source drops its last partial batch).
Shuffled by default (a seeded mixing buffer over many contexts); `sequence_mode=True` keeps
rows in text order, and `last_context_ids` / `last_positions` / `last_token_ids` say where each
row of the last batch came from, so temporal penalties can respect context boundaries.

Resume: `state_dict()` holds the source position, the rows waiting in the buffer, the RNG and
the normalisation factor; `load_state_dict()` on a freshly built stream (same arguments)
continues with exactly the batches the interrupted stream would have produced. Live streams
re-pack the text up to the recorded context but never re-run the LM for it.
"""

from __future__ import annotations

from itertools import islice
from typing import Iterator, Optional

import numpy as np
import torch
from torch import Tensor

from featsep.data.buffer import MixingBuffer
from featsep.data.errors import DataError
from featsep.data.harvest import ActivationChunk, LiveSource, estimate_normalization_factor

STATE_VERSION = 1
READ_CHUNK_ROWS = 512  # rows per read from a cache shard / tensor (shuffled in blocks of this size)


class ArraySource:
    """Chunks from row arrays already in hand: cache shards (memory-mapped) or tensors.

    Order: with shuffle, an epoch visits fixed-size row blocks in a permutation seeded by
    (seed, epoch), and the mixing buffer mixes rows across blocks; without, rows in order.
    Position = (epoch, blocks done in this epoch): exact and tiny.
    """

    kind = "array"

    def __init__(self, shards, d_in: int, shuffle: bool, seed: int = 42, repeat: bool = True,
                 block_rows: int = READ_CHUNK_ROWS):
        # shards: list of (acts [n, d], index [n, 3]), tensors or row-sliceable arrays (memmaps)
        self.shards, self.d_in, self.shuffle, self.seed = shards, d_in, shuffle, seed
        self.repeat, self.block_rows = repeat, block_rows
        self.blocks = [
            (s, start) for s, (acts, _) in enumerate(shards) for start in range(0, len(acts), block_rows)
        ]
        if not self.blocks:
            raise DataError("the activation source holds no rows; build the cache/tensor with some tokens")
        self.epoch = 0
        self.blocks_done = 0

    def describe(self) -> dict:
        return {"rows": sum(len(a) for a, _ in self.shards), "blocks": len(self.blocks)}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "blocks_done": self.blocks_done, "n_blocks": len(self.blocks)}

    def load_state_dict(self, state: dict) -> None:
        if int(state["n_blocks"]) != len(self.blocks):
            raise DataError(
                f"stream state was saved over {state['n_blocks']} blocks but this source has "
                f"{len(self.blocks)}; resume on the same cache/tensor with the same settings"
            )
        self.epoch, self.blocks_done = int(state["epoch"]), int(state["blocks_done"])

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.blocks)))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.blocks)).tolist()

    def _read(self, block: int) -> ActivationChunk:
        shard, start = self.blocks[block]
        acts, index = self.shards[shard]
        stop = min(start + self.block_rows, len(acts))
        a, i = acts[start:stop], index[start:stop]
        a = a if isinstance(a, Tensor) else torch.from_numpy(np.array(a, dtype=np.float32))
        i = i if isinstance(i, Tensor) else torch.from_numpy(np.array(i, dtype=np.int64))
        return ActivationChunk(a.float(), i.long())

    def chunks(self) -> Iterator[ActivationChunk]:
        while True:
            order = self._order()
            while self.blocks_done < len(order):
                block = order[self.blocks_done]
                self.blocks_done += 1
                yield self._read(block)
            if not self.repeat:
                return
            self.epoch += 1
            self.blocks_done = 0


class ActivationStream:
    """Iterator of float32 activation batches [batch_size, d_in]; see the module docstring."""

    def __init__(
        self,
        source,
        batch_size: int = 4096,
        shuffle_buffer: int = 32,
        context_length: int = 128,
        sequence_mode: bool = False,
        seed: int = 42,
        normalize: bool = False,
        normalization_factor: Optional[float] = None,
        norm_estimate_batches: int = 8,
        prescaled: bool = False,
    ):
        """shuffle_buffer: contexts the mixing buffer holds (x context_length rows; at least
        2 x batch_size); 0 or sequence_mode keeps source order. normalize: scale rows by a
        factor estimated from the first norm_estimate_batches source chunks (or the one given).
        prescaled: the source is already scaled (a normalised cache); the factor is only reported.
        """
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if norm_estimate_batches < 1:
            raise DataError(f"norm_estimate_batches must be >= 1, got {norm_estimate_batches}")
        self.source = source
        self.d_in = source.d_in
        self.batch_size = batch_size
        self.sequence_mode = sequence_mode or shuffle_buffer == 0
        self.normalize = normalize
        self.normalization_factor = normalization_factor
        self.norm_estimate_batches = norm_estimate_batches
        self.prescaled = prescaled
        self.buffer = MixingBuffer(
            self.d_in, batch_size, shuffle_buffer * context_length, shuffle=not self.sequence_mode, seed=seed
        )
        self.tokens_seen = 0
        self.last_index: Optional[Tensor] = None
        self._chunks: Optional[Iterator[ActivationChunk]] = None

    # ---- constructors ---------------------------------------------------------------------
    @classmethod
    def from_lm(
        cls,
        lm,
        dataset: str,
        hook: str,
        *,
        batch_size: int = 4096,
        context_length: int = 128,
        lm_batch_size: int = 8,
        text_column: str = "text",
        split: str = "train",
        seed: int = 42,
        shuffle_buffer: int = 32,
        sequence_mode: bool = False,
        normalize: bool = True,
        normalization_factor: Optional[float] = None,
        norm_estimate_batches: int = 8,
        exclude_special_tokens: bool = True,
        repeat: bool = True,
        progress: bool = False,
    ) -> "ActivationStream":
        """Harvest live: lm is a featsep.lm.LanguageModel or a model name for load_lm."""
        if isinstance(lm, str):
            from featsep.lm import load_lm

            lm = load_lm(lm)
        source = LiveSource(
            lm, dataset, hook, context_length, lm_batch_size, text_column, split, seed,
            exclude_special_tokens, repeat, progress,
        )
        return cls(
            source, batch_size, shuffle_buffer, context_length, sequence_mode, seed, normalize,
            normalization_factor, norm_estimate_batches,
        )

    @classmethod
    def from_cache(
        cls,
        path,
        *,
        batch_size: int = 4096,
        shuffle_buffer: int = 32,
        sequence_mode: bool = False,
        seed: int = 42,
        repeat: bool = True,
        verify: bool = True,
    ) -> "ActivationStream":
        """Read an activation cache (see featsep.data.cache); rows come as they were stored."""
        from featsep.data.cache import ActivationCache

        cache = path if isinstance(path, ActivationCache) else ActivationCache(path, verify=verify)
        shuffle = not (sequence_mode or shuffle_buffer == 0)
        source = cache.source(shuffle=shuffle, seed=seed, repeat=repeat)
        return cls(
            source, batch_size, shuffle_buffer, cache.context_length, sequence_mode, seed,
            normalize=False, normalization_factor=cache.normalization_factor, prescaled=True,
        )

    @classmethod
    def from_tensor(
        cls,
        acts: Tensor,
        *,
        batch_size: int = 4096,
        shuffle_buffer: int = 32,
        sequence_mode: bool = False,
        seed: int = 42,
        repeat: bool = True,
        normalize: bool = False,
        normalization_factor: Optional[float] = None,
    ) -> "ActivationStream":
        """Stream rows of an in-memory tensor [N, d] (one context) or [n_ctx, L, d]."""
        if not isinstance(acts, Tensor) or acts.dim() not in (2, 3):
            raise DataError("from_tensor needs a tensor [N, d] or [n_contexts, L, d]")
        if acts.dim() == 3:
            n_ctx, length, d = acts.shape
            ctx = torch.arange(n_ctx).repeat_interleave(length)
            pos = torch.arange(length).repeat(n_ctx)
            acts = acts.reshape(n_ctx * length, d)
        else:
            length = acts.shape[0]
            ctx, pos = torch.zeros(length, dtype=torch.long), torch.arange(length)
        index = torch.stack([ctx, pos, torch.full_like(ctx, -1)], dim=1)
        acts = acts.detach().float().cpu()
        shuffle = not (sequence_mode or shuffle_buffer == 0)
        source = ArraySource([(acts, index)], acts.shape[1], shuffle=shuffle, seed=seed, repeat=repeat)
        stream = cls(
            source, batch_size, shuffle_buffer, 128, sequence_mode, seed, normalize, normalization_factor,
        )
        if normalize and normalization_factor is None:
            stream.normalization_factor = estimate_normalization_factor(acts)
        return stream

    # ---- iteration -------------------------------------------------------------------------
    def _start(self) -> Iterator[ActivationChunk]:
        chunks = self.source.chunks()
        if self.normalize and self.normalization_factor is None:
            first = list(islice(chunks, self.norm_estimate_batches))
            self.normalization_factor = estimate_normalization_factor([c.acts for c in first])
            self.buffer.add(first, self._scale)
        return chunks

    def ensure_normalization_factor(self) -> Optional[float]:
        """Estimate the factor now (from the first chunks, which stay in the buffer) so that
        SAEs built before training can record it; None when the stream does not normalise."""
        if self._chunks is None and self.normalize and self.normalization_factor is None:
            self._chunks = self._start()
        return self.normalization_factor

    @property
    def _scale(self) -> float:
        if self.prescaled or not self.normalize or self.normalization_factor is None:
            return 1.0
        return self.normalization_factor

    def __iter__(self) -> "ActivationStream":
        return self

    def __next__(self) -> Tensor:
        if self._chunks is None:
            self._chunks = self._start()
        batch = self.buffer.next_batch(self._chunks, self._scale)
        if batch is None:
            raise StopIteration
        self.tokens_seen += self.batch_size
        self.last_index = batch.index
        return batch.acts

    @property
    def last_context_ids(self) -> Optional[Tensor]:
        return None if self.last_index is None else self.last_index[:, 0]

    @property
    def last_positions(self) -> Optional[Tensor]:
        return None if self.last_index is None else self.last_index[:, 1]

    @property
    def last_token_ids(self) -> Optional[Tensor]:
        """Token id of each row (-1 where unknown, e.g. from_tensor)."""
        return None if self.last_index is None else self.last_index[:, 2]

    # ---- resume ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue exactly here (tensors inside; save with torch.save)."""
        self.ensure_normalization_factor()  # fix the factor now so the state carries it
        return {
            "version": STATE_VERSION,
            "kind": self.source.kind,
            "d_in": self.d_in,
            "batch_size": self.batch_size,
            "tokens_seen": self.tokens_seen,
            "normalization_factor": self.normalization_factor,
            "source": self.source.state_dict(),
            "buffer": self.buffer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`; call on a stream built with the same arguments, before iterating."""
        if state.get("version") != STATE_VERSION:
            raise DataError(f"stream state version {state.get('version')} is not {STATE_VERSION}; it came from another featsep")
        for key, mine in (("kind", self.source.kind), ("d_in", self.d_in), ("batch_size", self.batch_size)):
            if state[key] != mine:
                raise DataError(
                    f"stream state has {key}={state[key]!r} but this stream has {key}={mine!r}; "
                    "resume with the same data settings"
                )
        self.tokens_seen = int(state["tokens_seen"])
        self.normalization_factor = state["normalization_factor"]
        self.source.load_state_dict(state["source"])
        self.buffer.load_state_dict(state["buffer"])
        self._chunks = self.source.chunks()

    def __repr__(self) -> str:
        mode = "sequence" if self.sequence_mode else "shuffled"
        return (
            f"ActivationStream({self.source.kind}, d_in={self.d_in}, batch_size={self.batch_size}, {mode}, "
            f"normalization_factor={self.normalization_factor}, tokens_seen={self.tokens_seen})"
        )


def stream_from_config(cfg, lm=None, batch_size: Optional[int] = None) -> ActivationStream:
    """The stream a run config asks for: its data.cache when set, else live from model + dataset.

    cfg: a featsep.config RunConfig (or anything with .model, .data and .train sections).
    lm: an already loaded LanguageModel to reuse (default: load cfg.model.name).
    """
    data, model = cfg.data, cfg.model
    batch_size = batch_size or cfg.train.batch_size
    if data.cache:
        from featsep.data.cache import ActivationCache

        cache = ActivationCache(data.cache)
        for key, wanted in (("hook", model.hook), ("model", model.name), ("context_length", data.context_length)):
            if cache.manifest[key] != wanted:
                raise DataError(
                    f"data.cache {data.cache} was built with {key}={cache.manifest[key]!r} but the config "
                    f"asks for {wanted!r}; point data.cache at a matching cache or change the config"
                )
        return ActivationStream.from_cache(
            cache, batch_size=batch_size, shuffle_buffer=data.shuffle_buffer,
            sequence_mode=data.sequence_mode, seed=data.seed,
        )
    if lm is None:
        from featsep.lm import load_lm

        lm = load_lm(model.name, device=model.device, dtype=model.dtype)
    return ActivationStream.from_lm(
        lm, data.dataset, model.hook, batch_size=batch_size, context_length=data.context_length,
        lm_batch_size=model.batch_size, text_column=data.text_column, split=data.split, seed=data.seed,
        shuffle_buffer=data.shuffle_buffer, sequence_mode=data.sequence_mode, normalize=data.normalize,
        norm_estimate_batches=data.norm_estimate_batches, exclude_special_tokens=data.exclude_special_tokens,
    )

