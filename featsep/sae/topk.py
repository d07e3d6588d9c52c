"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations per token, ReLU them.

Dead latents get a training signal from AuxK: the `aux_k` largest pre-activations among dead
latents reconstruct the main reconstruction's (detached) residual, scaled by
min(n_dead / aux_k, 1) as in SAELens.
"""

from __future__ import annotations

from typing import Literal, Union

import torch
from pydantic import Field, model_validator
from torch import Tensor

from featsep.codes import Codes
from featsep.sae.base import SAE, SAEConfigBase, SAEOutput, mse_loss, register
from featsep.sae.sparse import dense_decode_reference, sparse_decode

# "auto" decodes sparsely once the dictionary is this many times larger than k: below it a
# dense matmul on a small [B, d_sae] is as cheap and simpler.
_AUTO_SPARSE_RATIO = 16


class TopKConfig(SAEConfigBase):
    k: int = Field(32, gt=0, description="active latents per token")
    aux_k: int = Field(512, gt=0, description="dead latents used by AuxK (capped at d_sae)")
    aux_coefficient: float = Field(1 / 32, ge=0, description="weight of the AuxK term")
    sparse_decoder: Union[bool, Literal["auto"]] = Field(
        "auto", description="decode from (values, indices) without dense codes; auto: when d_sae >= 16 k"
    )

    @model_validator(mode="after")
    def _k_fits(self):
        if self.k > self.d_sae:
            raise ValueError(f"k={self.k} exceeds d_sae={self.d_sae}; choose k <= d_sae")
        return self


@register("topk")
class TopKSAE(SAE):
    config_class = TopKConfig
    # docs/lr-sweep.md: at matched tokens it beats Adam at the reference rule (2e-4/sqrt(n/16384))
    default_optimizer = "signsgd_schedulefree"
    saelens_architecture = "topk"
    topk_like = True
    cfg: TopKConfig

    @property
    def sparse(self) -> bool:
        mode = self.cfg.sparse_decoder
        return self.cfg.d_sae >= _AUTO_SPARSE_RATIO * self.cfg.k if mode == "auto" else bool(mode)

    def decode_top(self, values: Tensor, indices: Tensor, with_bias: bool = True) -> Tensor:
        """Decode the TopK form on the configured path (sparse fast path or dense reference)."""
        decode = sparse_decode if self.sparse else dense_decode_reference
        return decode(values, indices, self.W_dec, self.b_dec if with_bias else None)

    # --- inference -------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_activations(x)
        values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, indices, values.relu())

    # --- training --------------------------------------------------------------------------
    def select(self, pre: Tensor) -> Codes:
        """Training-time selection: the active latents' (values, indices) [B, k']."""
        values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return Codes.from_topk(values.relu(), indices, self.cfg.d_sae)

    def training_forward(self, x: Tensor, step: int, total_steps: int) -> SAEOutput:
        pre = self.pre_activations(x)
        codes = self.select(pre)
        if self.sparse:
            x_hat = self.decode_top(codes.values, codes.indices)
        else:  # the dense codes are built once (kept in `codes`), for the decode and any penalty
            x_hat = self.decode(codes.dense())
        metrics: dict[str, Tensor] = {}
        out = SAEOutput(
            x_hat=x_hat,
            terms=self.extra_terms(x, x_hat, pre, codes, metrics),
            coefficients={"auxk": self.cfg.aux_coefficient},
            codes=codes,
            metrics=metrics,
        )
        return self.finish_output(x, out, codes.l0())

    def extra_terms(
        self, x: Tensor, x_hat: Tensor, pre: Tensor, codes: Codes, metrics: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Loss terms besides "mse" (subclasses add theirs, and diagnostics to `metrics`)."""
        return {"auxk": self.auxk_loss(x, x_hat, pre)}

    def auxk_loss(self, x: Tensor, x_hat: Tensor, pre: Tensor) -> Tensor:
        """0 when no latent is dead; else the AuxK reconstruction of the residual."""
        dead = self.dead_mask()
        n_dead = int(dead.sum())
        if n_dead == 0:
            return x_hat.new_zeros((), dtype=torch.promote_types(x_hat.dtype, torch.float32))
        scale = min(n_dead / self.cfg.aux_k, 1.0)
        k_aux = min(self.cfg.aux_k, n_dead)
        values, indices = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1, sorted=False)
        residual_hat = self.decode_top(values.relu(), indices, with_bias=False)
        return scale * mse_loss((x - x_hat).detach(), residual_hat)

    def to_cfg_dict(self) -> dict:
        d = super().to_cfg_dict()
        d["activation_fn_kwargs"] = {"k": self.cfg.k}  # older SAELens reads k here
        return d
