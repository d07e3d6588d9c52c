"""ReLU SAE with an L1 sparsity term: the reference runs' "standard" SAE.

loss = mse + l1_coefficient(step) * l1, where l1 = sum_i f_i (optionally f_i ||W_dec_i||),
averaged over tokens, and the coefficient ramps linearly over `l1_warmup_steps`. Optional
Anthropic-style resampling of dead latents every `resample_every` steps.
"""

from __future__ import annotations

from typing import Optional

import torch
from pydantic import Field
from torch import Tensor

from featsep.codes import Codes
from featsep.sae.base import SAE, SAEConfigBase, SAEOutput, linear_warmup, lr_rule, register


class ReLUL1Config(SAEConfigBase):
    l1_coefficient: float = Field(0.04, ge=0, description="weight of the L1 term (the reference: 0.04)")
    l1_warmup_steps: int = Field(1000, ge=0, description="steps over which the L1 weight ramps from 0")
    l1_weight_by_decoder_norm: bool = Field(False, description="L1 of f_i * ||W_dec_i|| (SAELens option)")
    resample_every: int = Field(0, ge=0, description="steps between dead-latent resamplings; 0 = off")


@register("relu_l1")
class ReLUL1SAE(SAE):
    config_class = ReLUL1Config
    saelens_architecture = "standard"
    cfg: ReLUL1Config

    def encode(self, x: Tensor) -> Tensor:
        return self.pre_activations(x).relu()

    def default_lr(self, optimizer: str = "adam") -> float:
        return lr_rule(optimizer, {"adam": 3e-4, "signsgd_schedulefree": 2e-3})

    def l1_coefficient_at(self, step: int) -> float:
        return linear_warmup(self.cfg.l1_coefficient, step, self.cfg.l1_warmup_steps)

    def training_forward(self, x: Tensor, step: int, total_steps: int) -> SAEOutput:
        codes = self.encode(x)
        weighted = codes * self.W_dec.norm(dim=1) if self.cfg.l1_weight_by_decoder_norm else codes
        out = SAEOutput(
            x_hat=self.decode(codes),
            terms={"l1": weighted.sum(dim=-1).mean()},
            coefficients={"l1": self.l1_coefficient_at(step)},
            codes=Codes.from_dense(codes, nonnegative=True),
        )
        return self.finish_output(x, out, (codes != 0).sum(dim=-1).float().mean())

    @torch.no_grad()
    def after_optimizer_step(self, step: int, x: Tensor, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        super().after_optimizer_step(step, x, optimizer)
        every = self.cfg.resample_every
        if every and (step + 1) % every == 0:
            # sampled from the global batch (same rows, same seed: every rank resamples alike)
            self.resample_dead_latents(self.world.all_gather_rows(x), optimizer, seed=self.cfg.seed + step)
