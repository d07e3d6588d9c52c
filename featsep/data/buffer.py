"""The buffer between chunk sources and fixed-size batches: shuffling or sequence-preserving.

Shuffling ("fill, permute, serve half"): the pool is filled to `capacity` rows, permuted with
a seeded generator, and batches are served from the front until only capacity/2 rows remain;
the remaining half is mixed with the next fill. Each row is served exactly once.
Sequence mode: no permutation, nothing held back; rows come out in source order.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch

from featsep.data.errors import DataError
from featsep.data.harvest import ActivationChunk


class MixingBuffer:
    def __init__(self, d_in: int, batch_size: int, capacity: int, shuffle: bool, seed: int = 42):
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.d_in, self.batch_size, self.shuffle = d_in, batch_size, shuffle
        self.capacity = max(capacity, 2 * batch_size) if shuffle else batch_size
        self.keep = self.capacity // 2 if shuffle else 0
        self.generator = torch.Generator().manual_seed(seed)
        self.pool = ActivationChunk.cat([], d_in)
        self.cursor = 0

    def __len__(self) -> int:
        return len(self.pool) - self.cursor

    def next_batch(self, chunks: Iterator[ActivationChunk], scale: float = 1.0) -> Optional[ActivationChunk]:
        """The next batch of exactly batch_size rows, or None when the chunks run out."""
        if len(self) - self.batch_size < self.keep:
            self._refill(chunks, scale)
            if len(self) < self.batch_size:
                return None
        batch = self.pool[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return batch

    def add(self, chunks: list[ActivationChunk], scale: float = 1.0) -> None:
        """Put chunks in the pool as they are (mixed at the next refill)."""
        scaled = [c if scale == 1.0 else ActivationChunk(c.acts * scale, c.index) for c in chunks]
        self.pool, self.cursor = ActivationChunk.cat([self.pool[self.cursor :], *scaled], self.d_in), 0

    def _refill(self, chunks: Iterator[ActivationChunk], scale: float) -> None:
        parts = [self.pool[self.cursor :]]
        rows = len(parts[0])
        exhausted = False
        while rows < self.capacity:
            chunk = next(chunks, None)
            if chunk is None:
                exhausted = True
                break
            if scale != 1.0:
                chunk = ActivationChunk(chunk.acts * scale, chunk.index)
            parts.append(chunk)
            rows += len(chunk)
        pool = ActivationChunk.cat(parts, self.d_in)
        if self.shuffle:
            pool = pool[torch.randperm(len(pool), generator=self.generator)]
        self.pool, self.cursor = pool, 0
        if exhausted:
            self.keep = 0  # serve everything that is left

    def state_dict(self) -> dict:
        rest = self.pool[self.cursor :]
        return {
            "acts": rest.acts.clone(),
            "index": rest.index.clone(),
            "rng": self.generator.get_state(),
            "keep": self.keep,
            "capacity": self.capacity,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["acts"].shape[1:] != (self.d_in,):
            raise DataError(
                f"stream state holds {tuple(state['acts'].shape[1:])}-d activations but this stream is "
                f"{self.d_in}-d; resume with the same model and hook"
            )
        saved = state.get("capacity", self.capacity)  # states written before it was recorded: trusted
        if saved != self.capacity:
            raise DataError(
                f"stream state was saved with a mixing buffer of {saved} rows but this stream's holds "
                f"{self.capacity} (shuffle_buffer x context_length, at least 2 x batch_size); resume with "
                "the same data.shuffle_buffer, data.context_length and train.batch_size"
            )
        self.pool, self.cursor = ActivationChunk(state["acts"], state["index"]), 0
        self.generator.set_state(state["rng"])
        self.keep = int(state["keep"])
