"""Plain co-activation-weighted orthogonality: the baseline pair penalty (docs/methods.md end of
section 2; what the reference's temporal penalty reduced to once its stability term vanished).

With F [B, n] the codes, A = 1[F != 0] the firing masks, C = A^T A / B (the fraction of the
batch in which i and j fire together) and D = F^T F / B:

    loss = sum_{i != j} C_ij |D_ij| / s,   s = n ("latent", default), n(n-1) ("pair"), 1 ("none")

Stateless. Exact and sparse: C_ij and D_ij vanish unless i and j fire together in some sample,
so the sum runs over the co-active pairs of the batch (O(B k^2) time; see pairs.py). On an
accelerator, codes in the TopK form whose B k (k - 1) / 2 entry pairs fit in `chunk_elements`
take them all at once in a fixed-size table (pair_slots: no host sync, so the step never
waits); otherwise, and on the CPU where host reads are free and streaming is 1.1-1.2x faster,
the pairs stream in chunks (pair_loss: O(chunk) memory, a few host reads a step). Gradients
are exact at every non-zero entry; zero entries get none (ReLU, TopK and JumpReLU pass no
gradient there anyway). Dense oracle: reference.orthogonality_dense.
"""

from __future__ import annotations

from typing import Any, Union

from pydantic import Field
from torch import Tensor

from featsep.codes import Codes
from featsep.device import host_reads_are_free
from featsep.penalties.base import Normalize, host_values, Penalty, PenaltyConfigBase, as_codes, register, scale_divisor
from featsep.penalties.pairs import (DEFAULT_CHUNK_ELEMENTS, PairChunk, fixed_width_entry_pairs, pair_loss,
                                     pair_slots)


class OrthogonalityConfig(PenaltyConfigBase):
    weight: float = 0.1
    normalize: Normalize = "latent"
    chunk_elements: int = Field(DEFAULT_CHUNK_ELEMENTS, gt=0, description="pair entries per temporary chunk")


@register("orthogonality")
class OrthogonalityPenalty(Penalty):
    config_class = OrthogonalityConfig

    def __init__(self, cfg: OrthogonalityConfig):
        super().__init__(cfg)
        self.steps = 0
        self._last: dict[str, float] = {}

    def __call__(self, codes: Union[Codes, Tensor]) -> dict[str, Tensor]:
        cfg = self.cfg
        codes = as_codes(codes, cfg.d_sae, "orthogonality penalty")
        divisor, batch = scale_divisor(cfg.normalize, cfg.d_sae), max(codes.batch_size, 1)
        sums = {"pairs": 0, "rate": 0.0}

        def weigh(chunk: PairChunk) -> tuple[Tensor, Tensor]:
            rate = chunk.counts.to(chunk.gram.dtype) / batch
            sums["pairs"] += chunk.keys.numel()
            sums["rate"] = sums["rate"] + rate.sum()
            # each unordered pair stands for (i, j) and (j, i)
            return 2 * (rate * chunk.gram.abs()).sum() / divisor, 2 * rate * chunk.gram.sign() / divisor

        if (codes.has_topk and not host_reads_are_free(codes.device)
                and fixed_width_entry_pairs(codes) <= cfg.chunk_elements):
            slots = pair_slots(codes)  # all pairs at once in a fixed-size table: no host sync
            rate = slots.counts.to(slots.gram.dtype) / batch
            loss = 2 * (rate * slots.gram.abs()).sum() / divisor
            pairs = (slots.counts > 0).sum()
            mean_rate = rate.sum() / pairs.clamp(min=1)
        else:
            loss = pair_loss(codes, weigh, cfg.chunk_elements)
            pairs, mean_rate = sums["pairs"], sums["rate"] / max(sums["pairs"], 1)
        self.steps += 1
        self._last = {"loss": loss.detach(), "coactive_pairs": pairs,  # tensors: no sync
                      "mean_coactivation": mean_rate}
        return {self.name: loss}

    def stats(self) -> dict[str, Any]:
        return {"steps": self.steps, **host_values(self._last)}
