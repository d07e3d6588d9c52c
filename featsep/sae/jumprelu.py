"""JumpReLU SAE (Rajamanoharan et al. 2024; SAELens JumpReLUTrainingSAE).

f_i = z_i * H(z_i - theta_i) with a learnable per-latent threshold theta = exp(log_threshold).
The step has zero gradient almost everywhere, so theta learns through straight-through
pseudo-derivatives with a rectangle kernel K(u) = 1[|u| < 1/2] of width `bandwidth` (eps):
    d f_i / d theta_i  = -(theta_i / eps) K((z_i - theta_i) / eps)
    d H_i / d theta_i  = -(1 / eps)       K((z_i - theta_i) / eps)
while d f_i / d z_i = H(z_i - theta_i) exactly. Sparsity is the "l0" term sum_i H(z_i - theta_i),
averaged over tokens.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from featsep.codes import Codes
from featsep.sae.base import SAE, SAEConfigBase, SAEOutput, linear_warmup, lr_rule, register


def rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLUFunction(torch.autograd.Function):
    """z * H(z - theta) with the straight-through threshold gradient."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor):
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = (z > theta).to(grad.dtype) * grad
        grad_theta = (-(theta / eps) * rectangle((z - theta) / eps) * grad).sum(dim=0)
        return grad_z, grad_theta, None


class StepFunction(torch.autograd.Function):
    """H(z - theta) with the straight-through threshold gradient (no gradient to z)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor):
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = (-(1.0 / eps) * rectangle((z - theta) / eps) * grad).sum(dim=0)
        return None, grad_theta, None


class JumpReLUConfig(SAEConfigBase):
    init_threshold: float = Field(0.001, gt=0, description="initial theta (SAELens default)")
    bandwidth: float = Field(0.001, gt=0, description="width eps of the rectangle kernel")
    l0_coefficient: float = Field(1.0, ge=0, description="weight of the l0 term")
    l0_warmup_steps: int = Field(0, ge=0, description="steps over which the l0 weight ramps from 0")


@register("jumprelu")
class JumpReLUSAE(SAE):
    config_class = JumpReLUConfig
    saelens_architecture = "jumprelu"
    cfg: JumpReLUConfig

    def __init__(self, cfg: JumpReLUConfig):
        super().__init__(cfg)
        self.log_threshold = nn.Parameter(
            torch.full((cfg.d_sae,), math.log(cfg.init_threshold), dtype=self.W_dec.dtype, device=cfg.device)
        )

    @property
    def threshold(self) -> Tensor:
        return self.log_threshold.exp()

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_activations(x)
        return pre * (pre > self.threshold).to(pre.dtype)

    def default_lr(self, optimizer: str = "adam") -> float:
        return lr_rule(optimizer, {"adam": 7e-5, "signsgd_schedulefree": 1e-3})

    def training_forward(self, x: Tensor, step: int, total_steps: int) -> SAEOutput:
        pre = self.pre_activations(x)
        theta = self.threshold
        codes = JumpReLUFunction.apply(pre, theta, self.cfg.bandwidth)
        l0 = StepFunction.apply(pre, theta, self.cfg.bandwidth).sum(dim=-1).mean()
        out = SAEOutput(
            x_hat=self.decode(codes),
            terms={"l0": l0},
            coefficients={"l0": linear_warmup(self.cfg.l0_coefficient, step, self.cfg.l0_warmup_steps)},
            codes=Codes.from_dense(codes, nonnegative=True),  # theta > 0
        )
        return self.finish_output(x, out, l0.detach())

    def saved_tensors(self) -> dict[str, Tensor]:
        return {**super().saved_tensors(), "threshold": self.threshold.detach()}

    @torch.no_grad()
    def load_saved_tensors(self, tensors: dict[str, Tensor]) -> None:
        super().load_saved_tensors(tensors)
        self.log_threshold.copy_(tensors["threshold"].log())
