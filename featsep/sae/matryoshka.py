"""Matryoshka BatchTopK SAE (Bussmann et al. 2025; SAELens matryoshka_batchtopk).

BatchTopK whose latents are ordered into nested prefixes [0, w_1) ⊂ [0, w_2) ⊂ ... ⊂ [0, d_sae).
The batch's selected codes, restricted to each prefix, must reconstruct the input on their
own: loss = sum over prefixes of the prefix's mse (the full dictionary's is "mse"; the inner
ones together are "matryoshka_mse"). Early latents so learn general features, which is what
reduces feature absorption. Restricting the one selection (rather than re-selecting inside
each prefix as SAELens does) follows Bussmann et al.'s implementation.
"""

from __future__ import annotations

from typing import Optional

import torch
from pydantic import Field, model_validator
from torch import Tensor

from featsep.codes import Codes
from featsep.sae.base import mse_loss, register
from featsep.sae.batchtopk import BatchTopKConfig, BatchTopKSAE


class MatryoshkaConfig(BatchTopKConfig):
    prefix_sizes: Optional[list[int]] = Field(
        None,
        description="strictly increasing prefix widths; d_sae is appended when missing; "
        "None: d_sae/16, d_sae/4, d_sae",
    )

    @model_validator(mode="after")
    def _prefixes(self):
        sizes = self.prefix_sizes
        if sizes is None:
            sizes = sorted({max(1, self.d_sae // 16), max(1, self.d_sae // 4), self.d_sae})
        elif sizes and sizes[-1] != self.d_sae:
            sizes = [*sizes, self.d_sae]
        if not sizes or any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] <= 0 or sizes[-1] > self.d_sae:
            raise ValueError(
                f"prefix_sizes={self.prefix_sizes} must be strictly increasing positive widths "
                f"no larger than d_sae={self.d_sae}, e.g. [{max(1, self.d_sae // 16)}, {self.d_sae}]"
            )
        if sizes != self.prefix_sizes:
            object.__setattr__(self, "prefix_sizes", sizes)  # bypass validate_assignment recursion
        return self


@register("matryoshka")
class MatryoshkaSAE(BatchTopKSAE):
    config_class = MatryoshkaConfig
    cfg: MatryoshkaConfig

    def extra_terms(
        self, x: Tensor, x_hat: Tensor, pre: Tensor, codes: Codes, metrics: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        terms = super().extra_terms(x, x_hat, pre, codes, metrics)
        entries = codes.flat()  # BatchTopK's form (a reshape of the TopK form, if that is held)
        inner = x_hat.new_zeros((), dtype=torch.promote_types(x_hat.dtype, torch.float32))
        for width in self.cfg.prefix_sizes[:-1]:
            prefix_values = entries.values * (entries.cols < width).to(entries.values.dtype)
            mse = mse_loss(x, self.decode_flat(prefix_values, entries))
            metrics[f"mse_prefix_{width}"] = mse.detach()
            inner = inner + mse
        terms["matryoshka_mse"] = inner
        return terms
