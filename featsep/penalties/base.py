"""The contract every feature-separation penalty meets, and the registry that names them.

A penalty is one file in featsep/penalties/ with its parameters (a pydantic config) and its
implementation, registered with `@register("name")`. It is a small stateful object:

    pen = make_penalty("momentum", d_sae=8192, beta=0.95)
    terms = pen(codes)                      # dense codes [B, d_sae]
    terms = pen(values, indices=idx)        # TopK form: values/indices [B, k]
    loss = sum(pen.coefficients()[k] * v for k, v in terms.items())

Calling it returns named, unweighted scalar loss terms (differentiable w.r.t. the codes) and
advances its tracked state by one training step (state updates run without autograd). `stats()`
returns what it tracks (for logging), and state_dict()/load_state_dict() carry that state
through checkpoints. One object per SAE: each instance owns its state, so the trainer's
many-SAEs-per-batch mode simply builds one penalty per SAE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

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


@dataclass
class SparseCodes:
    """A batch of codes as (values, indices) [B, k]: the TopK form, or the non-zeros of dense
    codes. `active` marks the entries that count as firing (co-activation statistics)."""

    values: Tensor
    indices: Tensor  # int64
    active: Tensor  # bool
    d_sae: int

    @property
    def batch_size(self) -> int:
        return self.values.shape[0]

    def dense(self) -> Tensor:
        """Dense [B, d_sae] codes (differentiable w.r.t. values)."""
        out = self.values.new_zeros(self.batch_size, self.d_sae)
        return out.scatter(1, self.indices, self.values)

    def active_dense(self) -> Tensor:
        """Float 0/1 mask [B, d_sae] of the firing entries."""
        out = self.values.new_zeros(self.batch_size, self.d_sae)
        return out.scatter(1, self.indices, self.active.to(self.values.dtype).detach())


def check_codes(codes: Tensor, indices: Optional[Tensor], d_sae: int, who: str) -> None:
    """One clear error for each way a caller can hand a penalty the wrong codes."""
    if not torch.is_tensor(codes) or not codes.is_floating_point():
        raise TypeError(f"{who}: codes must be a floating-point tensor, got {type(codes).__name__} "
                        f"{getattr(codes, 'dtype', '')}; pass the SAE's latent activations")
    if codes.dim() != 2:
        raise ValueError(f"{who}: codes must be 2-D [batch, d_sae] (or [batch, k] with indices), "
                         f"got shape {tuple(codes.shape)}; flatten leading dimensions first")
    if indices is None:
        if codes.shape[1] != d_sae:
            raise ValueError(f"{who}: dense codes have {codes.shape[1]} latents but the penalty was "
                             f"built with d_sae={d_sae}; build it with the SAE's d_sae, or pass "
                             f"TopK values with indices=")
        return
    if indices.shape != codes.shape:
        raise ValueError(f"{who}: TopK values {tuple(codes.shape)} and indices {tuple(indices.shape)} "
                         f"must have the same shape [batch, k]")
    if indices.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"{who}: indices must be an integer tensor, got {indices.dtype}")
    if indices.device != codes.device:
        raise ValueError(f"{who}: values are on {codes.device} but indices on {indices.device}")


def to_sparse_codes(codes: Tensor, indices: Optional[Tensor], d_sae: int,
                    zero_values_fire: bool = False) -> SparseCodes:
    """The TopK form of either calling convention. Dense codes keep their non-zeros (k = the
    largest row L0, padded with inactive zeros). With `zero_values_fire` every listed TopK index
    counts as firing even when its value is 0 (the reference's one-hot-of-indices masks)."""
    if indices is None:
        k = int((codes != 0).sum(dim=1).max()) if codes.numel() else 0
        idx = torch.topk(codes.detach().abs(), k, dim=1).indices if k else \
            torch.zeros(codes.shape[0], 0, dtype=torch.long, device=codes.device)
        values = codes.gather(1, idx)
        return SparseCodes(values, idx, values.detach() != 0, d_sae)
    idx = indices.long()
    active = torch.ones_like(idx, dtype=torch.bool) if zero_values_fire else codes.detach() != 0
    return SparseCodes(codes, idx, active, d_sae)


def state_dtype(codes: Tensor) -> torch.dtype:
    """Tracked statistics are kept in at least float32 (never bf16/fp16 under autocast)."""
    return torch.promote_types(codes.dtype, torch.float32)


def check_device(state: Optional[Tensor], codes: Tensor, who: str) -> None:
    if state is not None and state.device != codes.device:
        raise ValueError(f"{who}: penalty state is on {state.device} but the codes are on "
                         f"{codes.device}; call penalty.to({str(codes.device)!r}) first")


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
