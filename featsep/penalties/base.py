"""The contract every feature-separation penalty meets, and the registry that names them.

A penalty is one file in featsep/penalties/ with its parameters (a pydantic config) and its
implementation, registered with `@register("name")`. It is a small stateful object:

    pen = make_penalty("momentum", d_sae=8192, beta=0.95)
    terms = pen(codes)                      # dense codes [B, d_sae]
    terms = pen(values, indices=idx)        # TopK form: values/indices [B, k]
    loss = sum(pen.coefficients()[k] * v for k, v in terms.items())

Calling it returns named, unweighted scalar loss terms (differentiable w.r.t. the codes) and
advances its tracked state by one training step. `stats()` returns what it tracks (for
logging), and state_dict()/load_state_dict() carry that state through checkpoints.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor


class PenaltyConfigBase(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    d_sae: int
    weight: float = 0.1


class Penalty:
    name: ClassVar[str] = ""
    config_class: ClassVar[type[PenaltyConfigBase]] = PenaltyConfigBase

    def __init__(self, cfg: PenaltyConfigBase):
        self.cfg = cfg

    def __call__(self, codes: Tensor, indices: Optional[Tensor] = None) -> dict[str, Tensor]:
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


_REGISTRY: dict[str, type[Penalty]] = {}


def register(name: str):
    def deco(cls: type[Penalty]) -> type[Penalty]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"penalty {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def penalties() -> list[str]:
    return sorted(_REGISTRY)


def make_penalty(name: str, d_sae: int, **params: Any) -> Penalty:
    if name not in _REGISTRY:
        raise ValueError(f"unknown penalty {name!r}; choose one of: {', '.join(penalties())}")
    cls = _REGISTRY[name]
    from pydantic import ValidationError

    try:
        cfg = cls.config_class(d_sae=d_sae, **params)
    except ValidationError as e:
        bad = "; ".join(f"{'.'.join(map(str, er['loc']))}: {er['msg']}" for er in e.errors())
        allowed = ", ".join(sorted(cls.config_class.model_fields))
        raise ValueError(f"bad parameters for penalty {name!r}: {bad} (accepted: {allowed})") from None
    return cls(cfg)
