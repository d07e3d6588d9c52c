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
    """Training codes come in TopK form padded to the busiest row: [B, k_max], the padding
    being unselected (latent 0, value 0.0) entries (see featsep.codes)."""

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
        """The batch's k*B largest ReLU'd pre-activations, packed to [B, k_max].

        k_max (the busiest row's count) is read on the host: the one host sync of the step,
        kept because the padded width is what Codes and the tests pin, and any fixed width would
        be either lossy or d_sae wide. Everything else stays on the device (counts by
        index_add: bincount syncs on CUDA)."""
        batch, n = pre.shape
        if self.world.distributed:
            flat_values, flat_idx = self.select_global(pre.relu().flatten(), batch * self.world.size)
        else:
            flat_values, flat_idx = pre.relu().flatten().topk(min(self.cfg.k * batch, batch * n), sorted=False)
        rows, cols = flat_idx // n, flat_idx % n
        if self.training:
            self.update_threshold(flat_values)
        # pack into [B, k_max]: the position of each entry within its row
        counts = torch.zeros(batch, dtype=torch.long, device=pre.device).index_add_(0, rows, torch.ones_like(rows))
        order = torch.argsort(rows, stable=True)
        rows, cols, flat_values = rows[order], cols[order], flat_values[order]
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(rows.numel(), device=pre.device) - starts[rows]
        k_max = int(counts.max()) if rows.numel() else 1
        values = flat_values.new_zeros(batch, k_max).index_put((rows, slot), flat_values)
        indices = cols.new_zeros(batch, k_max).index_put((rows, slot), cols)
        selected = torch.arange(k_max, device=pre.device) < counts[:, None]
        return Codes.from_topk(values, indices, n, selected, nonnegative=True)

    def select_global(self, flat: Tensor, global_batch: int) -> tuple[Tensor, Tensor]:
        """This rank's share of the global batch's top k*B: each rank's local top-(k*B) values
        are gathered (they hold the global top k*B), the k*B-th largest of them is the cut, and
        every local value >= cut is kept. Ties at the cut are all kept (one process keeps an
        arbitrary subset); a cut of 0 (fewer than k*B positive values) keeps only the positive
        ones, where one process also selects some zeros (inactive, value 0: they change no
        reconstruction, loss or firing count)."""
        want = min(self.cfg.k * global_batch, global_batch * self.cfg.d_sae)
        with torch.no_grad():
            local_top = flat.detach().topk(min(want, flat.numel()), sorted=False).values
            cut = self.world.all_gather_rows(local_top).topk(want, sorted=False).values.min()
            keep = (flat.detach() >= cut) & (flat.detach() > 0)
        idx = keep.nonzero().squeeze(1)
        return flat[idx], idx

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
