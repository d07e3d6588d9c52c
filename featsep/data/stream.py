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

from typing import Callable, Iterator, Optional

import torch
from torch import Tensor

from featsep.data.buffer import MixingBuffer
from featsep.data.cache import ActivationCache
from featsep.data.config import DataConfig
from featsep.data.errors import DataError
from featsep.data.harvest import ActivationChunk, LiveSource, estimate_normalization_factor, first_chunks_factor
from featsep.data.sources import ArraySource
from featsep.lm.config import ModelConfig

STATE_VERSION = 1
_DATA, _MODEL = DataConfig(), ModelConfig()  # the one place stream defaults come from


class ActivationStream:
    """Iterator of float32 activation batches [batch_size, d_in]; see the module docstring."""

    def __init__(
        self,
        source,
        batch_size: int = 4096,
        shuffle_buffer: int = _DATA.shuffle_buffer,
        context_length: int = _DATA.context_length,
        sequence_mode: bool = _DATA.sequence_mode,
        seed: int = _DATA.seed,
        normalize: bool = False,
        normalization_factor: Optional[float] = None,
        norm_estimate_batches: int = _DATA.norm_estimate_batches,
        prescaled: bool = False,
        rows_of: tuple[int, int] = (0, 1),
        pin_memory: bool = False,
        reduce_sum: Optional[Callable[[Tensor], Tensor]] = None,
    ):
        """shuffle_buffer: contexts the mixing buffer holds (x context_length rows; at least
        2 x batch_size); 0 or sequence_mode keeps source order. normalize: scale rows by a
        factor estimated from the first norm_estimate_batches source chunks (or the one given).
        prescaled: the source is already scaled (a normalised cache); the factor is only reported.
        rows_of=(rank, world_size): yield only rows [rank B/N, (rank+1) B/N) of each batch of
        batch_size=B rows (a torchrun rank's slice of the global batch every rank builds alike).
        pin_memory: batches in page-locked memory, so .to("cuda", non_blocking=True) is an
        asynchronous copy. reduce_sum: sums the normalisation statistics over the ranks of a
        torchrun job (featsep.data.harvest.first_chunks_factor), for one factor on every rank.
        """
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if norm_estimate_batches < 1:
            raise DataError(f"norm_estimate_batches must be >= 1, got {norm_estimate_batches}")
        rank, size = rows_of
        if not 0 <= rank < size or batch_size % size:
            raise DataError(f"a batch of {batch_size} rows does not split over {size} ranks (rank {rank}); "
                            f"use a batch size divisible by {size}")
        self.source = source
        self.d_in = source.d_in
        self.batch_size = batch_size
        self.sequence_mode = sequence_mode or shuffle_buffer == 0
        self.normalize = normalize
        self.normalization_factor = normalization_factor
        self.norm_estimate_batches = norm_estimate_batches
        self.prescaled = prescaled
        self.rows_of, self.pin_memory, self.reduce_sum = rows_of, pin_memory, reduce_sum
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
        context_length: int = _DATA.context_length,
        lm_batch_size: int = _MODEL.batch_size,
        text_column: str = _DATA.text_column,
        split: str = _DATA.split,
        seed: int = _DATA.seed,
        shuffle_buffer: int = _DATA.shuffle_buffer,
        sequence_mode: bool = _DATA.sequence_mode,
        normalize: bool = _DATA.normalize,
        normalization_factor: Optional[float] = None,
        norm_estimate_batches: int = _DATA.norm_estimate_batches,
        exclude_special_tokens: bool = _DATA.exclude_special_tokens,
        repeat: bool = True,
        progress: bool = False,
        encoding: str = _DATA.encoding,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
        reduce_sum: Optional[Callable[[Tensor], Tensor]] = None,
    ) -> "ActivationStream":
        """Harvest live: lm is a featsep.lm.LanguageModel or a model name for load_lm.
        rank / world_size: this torchrun rank harvests its share of the contexts only
        (LiveSource), and batch_size is its own rows per step."""
        if isinstance(lm, str):
            from featsep.lm import load_lm

            lm = load_lm(lm)
        source = LiveSource(
            lm, dataset, hook, context_length=context_length, lm_batch_size=lm_batch_size,
            text_column=text_column, split=split, seed=seed, exclude_special_tokens=exclude_special_tokens,
            repeat=repeat, progress=progress, encoding=encoding, rank=rank, world_size=world_size,
        )
        return cls(
            source, batch_size=batch_size, shuffle_buffer=shuffle_buffer, context_length=context_length,
            sequence_mode=sequence_mode, seed=seed, normalize=normalize,
            normalization_factor=normalization_factor, norm_estimate_batches=norm_estimate_batches,
            pin_memory=pin_memory, reduce_sum=reduce_sum,
        )

    @classmethod
    def from_cache(
        cls,
        path,
        *,
        batch_size: int = 4096,
        shuffle_buffer: int = _DATA.shuffle_buffer,
        sequence_mode: bool = _DATA.sequence_mode,
        seed: int = _DATA.seed,
        repeat: bool = True,
        verify: bool = True,
        rows_of: tuple[int, int] = (0, 1),
        pin_memory: bool = False,
    ) -> "ActivationStream":
        """Read an activation cache (see featsep.data.cache); rows come as they were stored.
        rows_of=(rank, world_size): every rank reads the same global batches of batch_size rows
        and keeps its slice, so training equals one process on the same cache."""
        cache = path if isinstance(path, ActivationCache) else ActivationCache(path, verify=verify)
        shuffle = not (sequence_mode or shuffle_buffer == 0)
        source = cache.source(shuffle=shuffle, seed=seed, repeat=repeat)
        return cls(
            source, batch_size=batch_size, shuffle_buffer=shuffle_buffer, context_length=cache.context_length,
            sequence_mode=sequence_mode, seed=seed,
            normalize=False, normalization_factor=cache.normalization_factor, prescaled=True,
            rows_of=rows_of, pin_memory=pin_memory,
        )

    @classmethod
    def from_tensor(
        cls,
        acts: Tensor,
        *,
        batch_size: int = 4096,
        shuffle_buffer: int = _DATA.shuffle_buffer,
        sequence_mode: bool = _DATA.sequence_mode,
        seed: int = _DATA.seed,
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
            source, batch_size=batch_size, shuffle_buffer=shuffle_buffer, sequence_mode=sequence_mode,
            seed=seed, normalize=normalize, normalization_factor=normalization_factor,
        )
        if normalize and normalization_factor is None:
            stream.normalization_factor = estimate_normalization_factor(acts)
        return stream

    # ---- iteration -------------------------------------------------------------------------
    def _start(self) -> Iterator[ActivationChunk]:
        chunks = self.source.chunks()
        if self.normalize and self.normalization_factor is None:
            self.normalization_factor, first = first_chunks_factor(chunks, self.norm_estimate_batches,
                                                                   reduce_sum=self.reduce_sum)
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
        rank, size = self.rows_of
        if size > 1:
            per = self.batch_size // size
            batch = batch[rank * per:(rank + 1) * per]
        acts = batch.acts.pin_memory() if self.pin_memory else batch.acts
        self.last_index = batch.index
        return acts

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


def stream_from_config(model: ModelConfig, data: DataConfig, batch_size: int, lm=None, rank: int = 0,
                       world_size: int = 1, pin_memory: bool = False,
                       reduce_sum: Optional[Callable[[Tensor], Tensor]] = None) -> ActivationStream:
    """The stream the [model] and [data] sections ask for: data.cache when set, else live.

    lm: an already loaded LanguageModel to reuse (default: load model.name). rank / world_size:
    a torchrun rank's disjoint, deterministic share of the global batches of batch_size rows:
    from a cache, rows [rank B/N, (rank+1) B/N) of each global batch (so the job trains on the
    batches one process would); live, the contexts of every world_size-th LM batch, shuffled
    into B/N rows per step on each rank (reduce_sum: one normalisation factor for all ranks)."""
    if batch_size % world_size:
        raise DataError(f"train.batch_size={batch_size} does not split over {world_size} ranks; "
                        f"use a batch size divisible by {world_size}")
    if data.cache:
        cache = ActivationCache(data.cache)
        for key, wanted in (("hook", model.hook), ("model", model.name), ("context_length", data.context_length)):
            if cache.manifest[key] != wanted:
                raise DataError(
                    f"data.cache {data.cache} was built with {key}={cache.manifest[key]!r} but the config "
                    f"asks for {wanted!r}; point data.cache at a matching cache or change the config"
                )
        return ActivationStream.from_cache(
            cache, batch_size=batch_size, shuffle_buffer=data.shuffle_buffer,
            sequence_mode=data.sequence_mode, seed=data.seed, rows_of=(rank, world_size), pin_memory=pin_memory,
        )
    if lm is None:
        from featsep.lm import load_lm

        lm = load_lm(model.name, device=model.device, dtype=model.dtype)
    return ActivationStream.from_lm(
        lm, data.dataset, model.hook, batch_size=batch_size // world_size, context_length=data.context_length,
        lm_batch_size=model.batch_size, text_column=data.text_column, split=data.split, seed=data.seed,
        shuffle_buffer=data.shuffle_buffer, sequence_mode=data.sequence_mode, normalize=data.normalize,
        norm_estimate_batches=data.norm_estimate_batches, exclude_special_tokens=data.exclude_special_tokens,
        encoding=data.encoding, rank=rank, world_size=world_size, pin_memory=pin_memory, reduce_sum=reduce_sum,
    )
