"""BatchTopK SAE (Bussmann et al. 2024): in training keep the k*B largest activations of the
whole batch (k per token on average); at inference a single threshold replaces the batch.

The threshold is a running estimate (SAELens): an exponential moving average, with rate
`threshold_lr`, of the smallest positive activation the batch selection kept; the first
training batch sets it directly. Inference encode is then a JumpReLU with that threshold,
which is also how SAELens loads the saved SAE (architecture "jumprelu", per-latent threshold).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from featsep.codes import Codes
from featsep.sae.base import register
from featsep.sae.topk import TopKConfig, TopKSAE


class BatchTopKConfig(TopKConfig):
    threshold_lr: float = Field(0.01, gt=0, le=1, description="EMA rate of the inference threshold")


@register("batchtopk")
class BatchTopKSAE(TopKSAE):
    """Training codes come in the flat form (featsep.codes.Entries): the batch's k*B selected
    entries, grouped by row, decoded and backpropagated without padding the rows."""

    config_class = BatchTopKConfig
    saelens_architecture = "jumprelu"
    cfg: BatchTopKConfig

    def __init__(self, cfg: BatchTopKConfig):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.zeros((), dtype=self.W_dec.dtype, device=cfg.device))
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.long, device=cfg.device))

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_activations(x)
        return pre.relu() * (pre > self.threshold)

    def select(self, pre: Tensor) -> Codes:
        """The batch's k*B largest ReLU'd pre-activations, in the flat form (featsep.codes):
        topk over the flattened batch returns exactly k*B entries, so the form's size is fixed
        and the step never reads a data-dependent width on the host (padding the rows to the
        busiest one would: Codes does that only if a consumer asks for the TopK form). The
        entries are sorted by flat index, hence grouped by row (the decode's bags)."""
        batch, n = pre.shape
        flat = pre.relu().flatten()
        if self.world.distributed:
            flat_values, flat_idx, keep = self.select_global(flat, batch * self.world.size)
        else:
            flat_values, flat_idx = flat.topk(min(self.cfg.k * batch, batch * n), sorted=False)
            keep = None
        flat_idx, order = flat_idx.sort()
        keep = None if keep is None else keep[order]
        codes = Codes.from_flat(flat_values[order], flat_idx // n, flat_idx % n, batch, n, keep, nonnegative=True)
        if self.training:  # unkept candidates are zeroed in the codes: never the smallest positive
            self.update_threshold(codes.flat().values)
        return codes

    def select_global(self, flat: Tensor, global_batch: int) -> tuple[Tensor, Tensor, Tensor]:
        """This rank's share of the global batch's top k*B, as (values, flat indices, keep) of
        this rank's local top-want candidates (want = k*B of the global batch, a fixed size):
        the candidates are gathered (together they hold the global top k*B), the k*B-th largest
        of them is the cut, and a candidate is kept where its value >= cut and > 0 (Codes.from_flat
        zeroes the others). A mask instead of nonzero() keeps the size fixed: no host sync.
        Ties at the cut are all kept, among the candidates (one process keeps an arbitrary
        subset); a cut of 0 (fewer than k*B positive values) keeps only the positive ones, where
        one process also selects some zeros (inactive, value 0: they change no reconstruction,
        loss or firing count)."""
        want = min(self.cfg.k * global_batch, global_batch * self.cfg.d_sae)
        values, idx = flat.topk(min(want, flat.numel()), sorted=False)
        with torch.no_grad():
            cut = self.world.all_gather_rows(values.detach()).topk(want, sorted=False).values.min()
            keep = (values.detach() >= cut) & (values.detach() > 0)
        return values, idx, keep

    @torch.no_grad()
    def update_threshold(self, selected: Tensor) -> None:
        """EMA of the smallest positive selected activation, kept on the device (no host sync
        per step); the first update sets it, a batch with no positive value leaves it alone."""
        if selected.numel() == 0 and not self.world.distributed:  # a shape check: no sync
            return
        positive = selected.masked_fill(selected <= 0, float("inf"))
        smallest = positive.min().double() if positive.numel() else positive.new_full((), float("inf")).double()
        smallest = self.world.all_reduce(smallest, "min")  # the global batch's: every rank agrees
        has = torch.isfinite(smallest)
        lr = self.cfg.threshold_lr
        ema = (1 - lr) * self.threshold.double() + lr * smallest
        new = torch.where(self.threshold_updates == 0, smallest, ema)
        self.threshold.copy_(torch.where(has, new, self.threshold.double()))
        self.threshold_updates.add_(has.long())

    def saved_tensors(self) -> dict[str, Tensor]:
        # SAELens's JumpReLU has one threshold per latent
        return {**super().saved_tensors(), "threshold": self.threshold.expand(self.cfg.d_sae).detach()}

    @torch.no_grad()
    def load_saved_tensors(self, tensors: dict[str, Tensor]) -> None:
        super().load_saved_tensors(tensors)
        self.threshold.copy_(tensors["threshold"].reshape(-1)[0])
        self.threshold_updates.fill_(1)
