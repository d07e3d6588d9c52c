"""Where activation chunks come from, besides live harvesting (featsep.data.harvest.LiveSource):
rows already in hand, from cache shards (memory-mapped) or tensors. Both the stream and the
cache read through it, so neither imports the other's internals."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from featsep.data.errors import DataError
from featsep.data.harvest import ActivationChunk

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
