"""The contract every SAE architecture meets, and the registry that names them.

An architecture is one file in featsep/sae/: a config class (subclass of `SAEConfigBase`)
and an implementation (subclass of `SAE`), registered with `@register("name")`.
The trainer knows nothing about architectures beyond this file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn


class SAEConfigBase(BaseModel):
    """Fields shared by every architecture; subclasses add their own hyperparameters.

    The metadata fields (hook_name, model_name, normalization_factor, ...) travel with the
    SAE into cfg.json so a saved SAE says where its activations came from.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    d_in: int
    d_sae: int
    dtype: str = "float32"
    device: str = "cpu"
    # metadata (SAELens-compatible names)
    hook_name: str = ""
    model_name: str = ""
    hook_layer: int = -1
    context_size: int = 128
    prepend_bos: bool = True
    normalize_activations: str = "none"  # "none" | "constant_norm_rescale" (then factor below)
    normalization_factor: Optional[float] = None  # x_normalised = x * factor
    dataset_path: str = ""
    seed: int = 42


@dataclass
class SAEOutput:
    """What one training forward returns to the trainer.

    terms: named, unweighted scalar loss terms; coefficients: the weight of each term at this
    step (a missing name means 1.0). The trainer minimises sum(coef * term) and logs each term.
    Latent activations come dense (`codes` [B, d_sae]) or, for TopK-like SAEs on the sparse
    path, as `top_values`/`top_indices` [B, k] with `codes` possibly None.
    """

    x_hat: Tensor
    terms: dict[str, Tensor]
    coefficients: dict[str, float] = field(default_factory=dict)
    codes: Optional[Tensor] = None
    top_values: Optional[Tensor] = None
    top_indices: Optional[Tensor] = None

    def dense_codes(self, d_sae: int) -> Tensor:
        """Codes as a dense [B, d_sae] tensor (scatters the TopK form when needed)."""
        if self.codes is not None:
            return self.codes
        assert self.top_values is not None and self.top_indices is not None
        out = self.top_values.new_zeros(self.top_values.shape[0], d_sae)
        return out.scatter(1, self.top_indices, self.top_values)

    def fired(self, d_sae: int) -> Tensor:
        """Bool [d_sae]: which latents were non-zero anywhere in the batch."""
        if self.top_indices is not None:
            mask = torch.zeros(d_sae, dtype=torch.bool, device=self.top_indices.device)
            nz = self.top_values != 0
            mask[self.top_indices[nz]] = True
            return mask
        assert self.codes is not None
        return (self.codes != 0).any(dim=0)


class SAE(nn.Module):
    """Base class. Parameters: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in]
    (unit-norm rows), b_dec [d_in]. Subclasses implement `encode` and `training_forward`.
    """

    architecture: ClassVar[str] = ""
    config_class: ClassVar[type[SAEConfigBase]] = SAEConfigBase
    topk_like: ClassVar[bool] = False  # codes have at most k non-zeros per row

    def __init__(self, cfg: SAEConfigBase):
        super().__init__()
        self.cfg = cfg
        dtype = getattr(torch, cfg.dtype)
        d, n = cfg.d_in, cfg.d_sae
        self.W_enc = nn.Parameter(torch.empty(d, n, dtype=dtype, device=cfg.device))
        self.b_enc = nn.Parameter(torch.zeros(n, dtype=dtype, device=cfg.device))
        self.W_dec = nn.Parameter(torch.empty(n, d, dtype=dtype, device=cfg.device))
        self.b_dec = nn.Parameter(torch.zeros(d, dtype=dtype, device=cfg.device))

    # --- inference -------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """x [..., d_in] -> dense codes [..., d_sae] (nonnegative for all built-ins)."""
        raise NotImplementedError

    def decode(self, codes: Tensor) -> Tensor:
        return codes @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    # --- training --------------------------------------------------------------------------
    def training_forward(self, x: Tensor, step: int, total_steps: int) -> SAEOutput:
        """One training forward on a batch x [B, d_in]: reconstruction plus named loss terms
        ("mse" always; architecture terms such as "l1", "l0", "auxk"). May update bookkeeping
        buffers (e.g. steps since each latent fired)."""
        raise NotImplementedError

    def default_lr(self) -> float:
        return 2e-4 / (self.cfg.d_sae / 16384) ** 0.5

    @torch.no_grad()
    def init_from_data(self, x: Tensor) -> None:
        """Data-dependent init before training (b_dec at the geometric median or mean)."""

    def before_optimizer_step(self) -> None:
        """Called after backward, before optimizer.step (e.g. project decoder gradients)."""

    def after_optimizer_step(self, step: int, x: Tensor, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """Called after optimizer.step (e.g. renormalise decoder rows, resample dead latents)."""

    # --- metadata --------------------------------------------------------------------------
    def to_cfg_dict(self) -> dict[str, Any]:
        """cfg.json contents: the config plus `architecture`, in SAELens-compatible names."""
        d = self.cfg.model_dump()
        d["architecture"] = self.architecture
        return d


_REGISTRY: dict[str, type[SAE]] = {}


def register(name: str):
    """Class decorator: make an architecture available to `make_sae(name, ...)`."""

    def deco(cls: type[SAE]) -> type[SAE]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"SAE architecture {name!r} registered twice")
        cls.architecture = name
        _REGISTRY[name] = cls
        return cls

    return deco


def architectures() -> list[str]:
    return sorted(_REGISTRY)


def get_architecture(name: str) -> type[SAE]:
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown SAE architecture {name!r}; choose one of: {', '.join(architectures())}"
        )
    return _REGISTRY[name]


def make_sae(name: str, d_in: int, d_sae: int, **params: Any) -> SAE:
    """Build a registered architecture, e.g. make_sae("topk", d_in=640, d_sae=8192, k=32)."""
    cls = get_architecture(name)
    from pydantic import ValidationError

    try:
        cfg = cls.config_class(d_in=d_in, d_sae=d_sae, **params)
    except ValidationError as e:
        bad = "; ".join(f"{'.'.join(map(str, er['loc']))}: {er['msg']}" for er in e.errors())
        allowed = ", ".join(sorted(cls.config_class.model_fields))
        raise ValueError(f"bad parameters for SAE {name!r}: {bad} (accepted: {allowed})") from None
    return cls(cfg)
