"""Optimisers by name: "adam" and "signsgd_schedulefree" (eai-sparsify's default).

`make_optimizer(name, params, lr, cfg)` builds one from the [train] settings. Each entry also
says whether the LR schedule should decay by default (`decays`): schedule-free averaging
replaces the decay, so it runs with warm-up only unless lr_decay_fraction is set.

Sign-SGD with schedule-free averaging (Defazio et al. 2024, "The Road Less Scheduled"),
written here rather than through the `schedulefree` package's wrapper so that the state is
one plain tensor per parameter (checkpoints load with weights_only=True) and the averaged
weights can be read without switching train/eval modes. With g the gradient at y:

    z <- z - lr * sign(g)
    x <- (1 - c) x + c z,    c = lr_max^2 / sum of lr_max^2 over the steps so far
    y <- beta x + (1 - beta) z

The parameters hold y (where gradients are taken); the state holds z; x is recovered from
them, x = (y - (1 - beta) z) / beta, as the `schedulefree` wrapper does. So an edit of the
parameters between steps (decoder renormalisation, dead-latent resampling) lands in x, the
weights that are saved and evaluated (`averaged_parameters`). `naive_reference` keeps x, y, z
explicitly in float64: the test's yardstick.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from featsep.registry import Registry


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    build: Callable[..., torch.optim.Optimizer]  # (params, lr, cfg) -> optimizer
    decays: bool  # whether the LR schedule decays by default (lr_decay_fraction None)


_REGISTRY: Registry[OptimizerSpec] = Registry("optimizer")


def register_optimizer(name: str, decays: bool):
    def deco(build: Callable[..., torch.optim.Optimizer]):
        _REGISTRY.add(name, OptimizerSpec(name, build, decays))
        return build

    return deco


def optimizer_names() -> list[str]:
    return _REGISTRY.names()


def optimizer_spec(name: str) -> OptimizerSpec:
    """The entry; an unknown name raises one line listing the valid ones."""
    return _REGISTRY.get(name)


def make_optimizer(name: str, params: Iterable[Tensor], lr: float, cfg: Any) -> torch.optim.Optimizer:
    return optimizer_spec(name).build(params, lr, cfg)


class SignSGDScheduleFree(torch.optim.Optimizer):
    """Sign-SGD steps on z, schedule-free averaging into x; the parameters hold y (see the
    module docstring). LR warm-up enters through the weights lr_max^2 (`weight_lr_power`)."""

    def __init__(self, params: Iterable[Tensor], lr: float, beta: float = 0.95, weight_lr_power: float = 2.0):
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"schedule_free_beta={beta} must lie in (0, 1]")
        super().__init__(params, dict(lr=lr, beta=beta, weight_lr_power=weight_lr_power, lr_max=0.0, weight_sum=0.0))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            lr, beta = group["lr"], group["beta"]
            group["lr_max"] = max(group["lr_max"], lr)
            weight = group["lr_max"] ** group["weight_lr_power"]
            group["weight_sum"] += weight
            c = weight / group["weight_sum"] if group["weight_sum"] > 0 else 0.0
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "z" not in state:
                    state["z"] = p.detach().clone()
                z = state["z"]
                update = p.grad.sign()
                p.lerp_(z, 1.0 - 1.0 / beta)  # y -> x
                z.add_(update, alpha=-lr)
                p.lerp_(z, c)  # x <- (1 - c) x + c z
                p.lerp_(z, 1.0 - beta)  # x -> y
        return loss

    @torch.no_grad()
    def averaged_parameters(self) -> dict[Tensor, Tensor]:
        """{parameter: x}, the averaged weights, for every parameter that has taken a step."""
        out = {}
        for group in self.param_groups:
            for p in group["params"]:
                z = self.state[p].get("z")
                if z is not None:
                    out[p] = p.detach().lerp(z, 1.0 - 1.0 / group["beta"])
        return out


@torch.no_grad()
def use_averaged_parameters(optimizer: torch.optim.Optimizer) -> None:
    """Put the weights an optimiser averages (schedule-free's x) into its parameters; a no-op
    for optimisers that average nothing. The training iterates (y) are gone afterwards: call it
    once training is over and the checkpoint that resumes it is written."""
    averaged = getattr(optimizer, "averaged_parameters", None)
    if averaged is not None:
        for p, x in averaged().items():
            p.copy_(x)


def naive_reference(y0: list[Tensor], grad_fn: Callable[[list[Tensor]], list[Tensor]], lrs: list[float],
                    beta: float = 0.95, weight_lr_power: float = 2.0) -> tuple[list[Tensor], list[Tensor]]:
    """Sign-SGD schedule-free by the paper's formulas, x, y, z kept explicitly in float64;
    `grad_fn(y)` gives the gradients at y, `lrs` the LR of each step. Returns (x, y)."""
    z = [t.double().clone() for t in y0]
    x = [t.double().clone() for t in y0]
    y = [t.double().clone() for t in y0]
    lr_max, weight_sum = 0.0, 0.0
    for lr in lrs:
        grads = grad_fn([t.clone() for t in y])
        lr_max = max(lr_max, lr)
        weight_sum += lr_max ** weight_lr_power
        c = lr_max ** weight_lr_power / weight_sum
        for i, g in enumerate(grads):
            z[i] = z[i] - lr * torch.sign(g.double())
            x[i] = (1 - c) * x[i] + c * z[i]
            y[i] = beta * x[i] + (1 - beta) * z[i]
    return x, y


@register_optimizer("adam", decays=True)
def _adam(params: Iterable[Tensor], lr: float, cfg: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, betas=tuple(cfg.adam_betas))


@register_optimizer("signsgd_schedulefree", decays=False)
def _signsgd_schedulefree(params: Iterable[Tensor], lr: float, cfg: Any) -> torch.optim.Optimizer:
    return SignSGDScheduleFree(params, lr=lr, beta=cfg.schedule_free_beta)
