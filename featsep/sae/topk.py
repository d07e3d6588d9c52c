"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations per token, ReLU them.

Dead latents get a training signal from AuxK: the `aux_k` largest pre-activations among dead
latents reconstruct the main reconstruction's (detached) residual, scaled by
min(n_dead / aux_k, 1) as in SAELens.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

import torch
from pydantic import Field, model_validator
from torch import Tensor

from featsep.codes import Codes, Entries
from featsep.device import host_reads_are_free
from featsep.sae.base import SAE, SAEConfigBase, SAEOutput, mse_loss, register
from featsep.sae.sparse import (dense_decode_flat_reference, dense_decode_reference, encode_columns, sparse_decode,
                                sparse_decode_flat, sparse_encode, sparse_encode_flat)

# "auto" decodes sparsely once the dictionary is this many times larger than k: below it a
# dense matmul on a small [B, d_sae] is as cheap and simpler.
_AUTO_SPARSE_RATIO = 16
# On the CPU AuxK works on the dense block of the dead latents while there are at most this
# many times aux_k of them: 9x faster than the gathers at 400 dead of 4096 (d 640, B 4096,
# 2 threads: 50 vs 463 ms forward and backward), still 1.8x at 4000 (546 vs 983 ms).
_AUX_DENSE_RATIO = 8


def _no_term(x_hat: Tensor) -> Tensor:
    """A loss term that is 0 (at least float32, like the others)."""
    return x_hat.new_zeros((), dtype=torch.promote_types(x_hat.dtype, torch.float32))


# docs/lr-sweep.md, "Dead latents": on gemma-3-270m L8 (4096 latents, k 32, 240 steps) AuxK
# from 128 firing intervals of silence (16,384 tokens) and aux_k = k (with the lr rule's d_in
# term) take the held-out dead fraction from 33.5% to 0.4-0.5% (FVU 0.047 against 0.045);
# Gao et al.'s values (10M tokens, 1/32, 512) act too late and too weakly in such runs. Its
# weight, 1/8: at 10M synthetic tokens a stronger AuxK leaves more latents dead (1 / 1/2 / 1/4
# / 1/8 / 1/16: 8.7 / 1.7 / 1.2-1.4 / 0.8-1.0 / 1.2%), and on gemma 1/8 is no worse than 1/4
# (0.37% / 0.83% against 0.54% / 0.81% dead over two seeds, FVU 0.046 both).
DEAD_AFTER_INTERVALS = 128


class TopKConfig(SAEConfigBase):
    k: int = Field(32, gt=0, description="active latents per token")
    # None (as a run config's [sae] section passes it) becomes the rule's value on validation
    aux_k: Optional[int] = Field(None, gt=0, description="dead latents used by AuxK per token (capped at d_sae); "
                                 "default: k")
    dead_tokens_threshold: Optional[int] = Field(None, gt=0, description="a latent silent for this many tokens is "
                                                 "dead; default: 128 d_sae / k (128 average firing intervals)")
    aux_coefficient: float = Field(1 / 8, ge=0, description="weight of the AuxK term")
    sparse_decoder: Union[bool, Literal["auto"]] = Field(
        "auto", description="decode from (values, indices) without dense codes; auto: when d_sae >= 16 k"
    )
    sparse_encoder: Union[bool, Literal["auto"]] = Field(
        "auto", description="backpropagate the encoder through the selected entries only (O(B k d)); "
        "False: autograd through the dense pre-activations (the reference); auto: when d_sae >= 16 k"
    )

    @model_validator(mode="after")
    def _k_fits_and_auxk_defaults_from_k(self):
        """k <= d_sae; when not given, aux_k = k and dead_tokens_threshold = DEAD_AFTER_INTERVALS
        times the tokens between an average latent's firings (d_sae / k), e.g. 16,384 at 4096
        latents, k 32. After validation, so the rule sees coerced values (d_sae "4096" or 4096.0)."""
        if self.k > self.d_sae:
            raise ValueError(f"k={self.k} exceeds d_sae={self.d_sae}; choose k <= d_sae")
        if self.aux_k is None:  # each assignment re-validates once (validate_assignment), then is a no-op
            self.aux_k = self.k
        if self.dead_tokens_threshold is None:
            self.dead_tokens_threshold = max(1, DEAD_AFTER_INTERVALS * self.d_sae // self.k)
        return self


@register("topk")
class TopKSAE(SAE):
    config_class = TopKConfig
    # docs/lr-sweep.md: Adam at 2e-3/sqrt(n/16384) beats sign-SGD schedule-free (and eai-sparsify)
    # on held-out FVU, true-feature recovery and dead latents at 1M and 10M tokens
    default_optimizer = "adam"
    saelens_architecture = "topk"
    topk_like = True
    cfg: TopKConfig

    @property
    def sparse(self) -> bool:
        mode = self.cfg.sparse_decoder
        return self.cfg.d_sae >= _AUTO_SPARSE_RATIO * self.cfg.k if mode == "auto" else bool(mode)

    @property
    def sparse_encoder(self) -> bool:
        mode = self.cfg.sparse_encoder
        return self.cfg.d_sae >= _AUTO_SPARSE_RATIO * self.cfg.k if mode == "auto" else bool(mode)

    def encode_selected(self, x: Tensor, pre: Tensor, indices: Tensor, keep: Optional[Tensor] = None) -> Tensor:
        """The pre-activations at (row, indices) [B, k'], 0 where not `keep`, differentiable
        through those entries: on the sparse path `pre` was computed without autograd and the
        backward is O(B k d); on the reference path autograd runs through the dense `pre`."""
        if self.sparse_encoder:
            return sparse_encode(x, self.W_enc, self.b_enc, self.b_dec, pre, indices, keep)
        picked = pre.gather(1, indices)
        return picked if keep is None else torch.where(keep, picked, 0)

    def decode_top(self, values: Tensor, indices: Tensor, with_bias: bool = True) -> Tensor:
        """Decode the TopK form on the configured path (sparse fast path or dense reference)."""
        decode = sparse_decode if self.sparse else dense_decode_reference
        return decode(values, indices, self.W_dec, self.b_dec if with_bias else None)

    def decode_flat(self, values: Tensor, entries: Entries, with_bias: bool = True) -> Tensor:
        """Decode `values` [m] at the flat form's entries on the configured path."""
        b_dec = self.b_dec if with_bias else None
        if self.sparse:
            return sparse_decode_flat(values, entries.cols, entries.offsets, self.W_dec, b_dec)
        return dense_decode_flat_reference(values, entries.rows, entries.cols, entries.offsets.shape[0], self.W_dec, b_dec)

    def with_sparse_backward(self, x: Tensor, pre: Tensor, codes: Codes) -> Codes:
        """The same selection, its values now carrying the sparse encoder backward (`pre` was
        computed without autograd), in the form the selection came in."""
        n = self.cfg.d_sae
        if codes.has_topk:
            values = self.encode_selected(x, pre, codes.indices, codes.selected).relu()
            return Codes.from_topk(values, codes.indices, n, codes.selected, nonnegative=True)
        e = codes.flat()
        values = sparse_encode_flat(x, self.W_enc, self.b_enc, self.b_dec, pre, e.rows, e.cols, e.offsets,
                                    e.selected).relu()
        return Codes.from_flat(values, e.rows, e.cols, codes.batch_size, n, e.selected, nonnegative=True,
                               offsets=e.offsets)

    # --- inference -------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_activations(x)
        values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, indices, values.relu())

    # --- training --------------------------------------------------------------------------
    def select(self, pre: Tensor) -> Codes:
        """Training-time selection: the active latents' (values, indices) [B, k']."""
        values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return Codes.from_topk(values.relu(), indices, self.cfg.d_sae, nonnegative=True)

    def training_forward(self, x: Tensor, step: int, total_steps: int) -> SAEOutput:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.sparse_encoder):
            pre = self.pre_activations(x)
        codes = self.select(pre)
        if self.sparse_encoder:
            codes = self.with_sparse_backward(x, pre, codes)
        if not self.sparse:  # the dense codes are built once (kept in `codes`), for the decode and any penalty
            x_hat = self.decode(codes.dense())
        elif codes.has_topk:
            x_hat = self.decode_top(codes.values, codes.indices)
        else:  # BatchTopK's selection: the flat form
            x_hat = self.decode_flat(codes.flat().values, codes.flat())
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
        """The AuxK reconstruction of the residual, scaled by min(n_dead / aux_k, 1); 0 when no
        latent is dead.

        Before any latent can be dead (a host-side bound, `may_have_dead_latents`) the term is
        a plain 0. After, on the CPU (featsep.device) the dead latents are listed on the host and
        the selection runs over them alone (nothing when none is dead). On accelerators, without
        a host sync, the number of dead latents stays on the device: the selection always takes
        min(aux_k, d_sae) latents, those that are not dead (pre-activation -inf after the mask)
        being unkept entries with value 0: the same dead latents and the same loss, at the price
        of a full-width aux selection and decode even when few or none are dead."""
        if not self.may_have_dead_latents():
            return _no_term(x_hat)
        dead = self.dead_mask()
        if host_reads_are_free(pre.device):  # CPU: select among the dead latents only, if any
            dead_ids = dead.nonzero().squeeze(1)
            if dead_ids.numel() == 0:
                return _no_term(x_hat)
            if dead_ids.numel() <= _AUX_DENSE_RATIO * self.cfg.aux_k:
                residual_hat = self._decode_dead_block(x, pre, dead_ids)
            else:
                picked = pre.detach().index_select(1, dead_ids).topk(self.cfg.aux_k, dim=-1, sorted=False).indices
                residual_hat = self._decode_aux_selection(x, pre, dead_ids[picked])
        else:
            masked = pre.detach().masked_fill(~dead, float("-inf"))
            indices = masked.topk(min(self.cfg.aux_k, self.cfg.d_sae), dim=-1, sorted=False).indices
            residual_hat = self._decode_aux_selection(x, pre, indices, dead[indices])
        mse = mse_loss((x - x_hat).detach(), residual_hat)
        return (dead.sum().to(mse.dtype) / self.cfg.aux_k).clamp(max=1.0) * mse

    def _decode_aux_selection(self, x: Tensor, pre: Tensor, indices: Tensor, keep: Optional[Tensor] = None) -> Tensor:
        """The aux reconstruction from the selected latents (B x aux_k entries), by gathers."""
        return self.decode_top(self.encode_selected(x, pre, indices, keep).relu(), indices, with_bias=False)

    def _decode_dead_block(self, x: Tensor, pre: Tensor, dead_ids: Tensor) -> Tensor:
        """The aux reconstruction from the dense [B, n_dead] block of the dead latents'
        pre-activations (the aux_k largest of each row kept when more are dead), by matmuls,
        which on the CPU beat the gathers while n_dead <= _AUX_DENSE_RATIO aux_k."""
        if self.sparse_encoder:
            block = encode_columns(x, self.W_enc, self.b_enc, self.b_dec, pre, dead_ids)
        else:
            block = pre.index_select(1, dead_ids)
        if dead_ids.numel() > self.cfg.aux_k:
            top = block.detach().topk(self.cfg.aux_k, dim=-1, sorted=False).indices
            block = torch.where(torch.zeros_like(block, dtype=torch.bool).scatter_(1, top, True), block, 0)
        return block.relu().to(self.W_dec.dtype) @ self.W_dec.index_select(0, dead_ids)

    def to_cfg_dict(self) -> dict:
        d = super().to_cfg_dict()
        d["activation_fn_kwargs"] = {"k": self.cfg.k}  # older SAELens reads k here
        return d
