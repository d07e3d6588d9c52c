"""The contract every feature-separation penalty meets, and the registry that names them.

A penalty is one file in featsep/penalties/ with its parameters (a pydantic config) and its
implementation, registered with `@register("name")`. It is a small stateful object:

    pen = make_penalty("momentum", d_sae=8192, beta=0.95)
    terms = pen(codes)      # a featsep.codes.Codes (what SAEs return), or dense codes [B, d_sae]
    loss = sum(pen.coefficients()[k] * v for k, v in terms.items())

Calling it returns named, unweighted scalar loss terms (differentiable w.r.t. the codes) and
advances its tracked state by one training step (state updates run without autograd). `stats()`
returns what it tracks (for logging), and state_dict()/load_state_dict() carry that state
through checkpoints. One object per SAE: each instance owns its state, so the trainer's
many-SAEs-per-batch mode simply builds one penalty per SAE.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional, Union

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from featsep.codes import Codes
from featsep.registry import Registry

# How a summed pair penalty is normalised: "latent" divides by n, "pair" by n (n - 1),
# "none" keeps the plain sum over ordered pairs i != j.
Normalize = Literal["latent", "pair", "none"]


def scale_divisor(normalize: Normalize, n: int) -> float:
    return {"latent": float(n), "pair": float(n * max(n - 1, 1)), "none": 1.0}[normalize]


class PenaltyConfigBase(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    d_sae: int = Field(gt=0)
    weight: float = 0.1


def as_codes(codes: Union[Codes, Tensor], d_sae: int, who: str) -> Codes:
    """The Codes a penalty works on: the SAE's Codes, or dense [B, d_sae] codes wrapped (the
    plain-tensor call of the public API). One clear error for each wrong input."""
    if not isinstance(codes, Codes):
        try:
            codes = Codes.from_dense(codes)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{who}: {e}") from None
    if codes.d_sae != d_sae:
        raise ValueError(f"{who}: the codes have {codes.d_sae} latents but the penalty was built with "
                         f"d_sae={d_sae}; build it with the SAE's d_sae")
    return codes


def state_dtype(codes: Codes) -> torch.dtype:
    """Tracked statistics are kept in at least float32 (never bf16/fp16 under autocast)."""
    return torch.promote_types(codes.dtype, torch.float32)


def check_device(state: Optional[Tensor], codes: Codes, who: str) -> None:
    if state is not None and state.device != codes.device:
        raise ValueError(f"{who}: penalty state is on {state.device} but the codes are on "
                         f"{codes.device}; call penalty.to({str(codes.device)!r}) first")


class Penalty:
    name: ClassVar[str] = ""
    config_class: ClassVar[type[PenaltyConfigBase]] = PenaltyConfigBase

    def __init__(self, cfg: PenaltyConfigBase):
        self.cfg = cfg

    def __call__(self, codes: Union[Codes, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError

    def coefficients(self) -> dict[str, float]:
        """Weight of each returned term (missing names weigh 1.0)."""
        return {self.name: self.cfg.weight}

    def stats(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def to(self, device: torch.device | str) -> "Penalty":
        return self


_REGISTRY: Registry[Penalty] = Registry("penalty", name_attribute="name")
register = _REGISTRY.register


def penalties() -> list[str]:
    return _REGISTRY.names()


def get_penalty(name: str) -> type[Penalty]:
    return _REGISTRY.get(name)


def make_penalty(name: str, d_sae: int, **params: Any) -> Penalty:
    """Build a registered penalty, e.g. make_penalty("momentum", d_sae=8192, beta=0.95)."""
    return _REGISTRY.build(name, d_sae=d_sae, **params)


def host_values(stats: dict[str, Any]) -> dict[str, Any]:
    """Detached scalar tensors kept during the step (no host sync there) as Python numbers,
    read only when stats() is asked for (at logging)."""
    return {k: v.item() if isinstance(v, Tensor) and v.numel() == 1 else v for k, v in stats.items()}
