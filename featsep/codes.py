"""`Codes`: the one type for a batch of SAE latent activations, from the SAE's training forward
through the trainer to the penalties and the evals.

A Codes holds the TopK form (values / indices [B, k]), the dense form [B, d_sae], or both, and
builds the missing one on first use (then keeps it). Both forms are kept because each side
pays for the other: TopK-like SAEs select (values, indices), and densifying costs O(B d_sae) a
step; dense SAEs (ReLU, JumpReLU) produce [B, d_sae], and listing its non-zeros costs a top-k
and a host sync (the largest row L0) a step, which e.g. momentum never needs. So nothing is
converted unless a consumer asks, and consumers that can work on either form use
`has_topk` to take the one already there.

The TopK form's entries:
- `selected`: the entry is a real selection. BatchTopK pads every row to the busiest row's
  length with (latent 0, value 0.0) entries, which are not selected.
- `active`: selected and non-zero: the entry fires (co-activation statistics, `fired()`).
Padding has value 0 and is never active, so it adds nothing to sums, and `dense()` /
`active_dense()` accumulate with scatter_add: a padded (0, 0.0) entry can never overwrite latent
0's real value (a plain scatter with repeated indices keeps an arbitrary one of them). For dense
codes the TopK form lists each row's non-zeros (k = the largest row L0, padded with inactive
zeros), and selected == active.

context_ids / position_ids [B] (int64, optional) say which text context and position each row
came from (ActivationStream in sequence mode), for penalties that care about token order.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import Tensor

_INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8)


def scatter_dense(values: Tensor, indices: Tensor, d_sae: int) -> Tensor:
    """Dense codes [B, d_sae] from the TopK form (differentiable w.r.t. values); scatter_add so
    padded (index, 0.0) entries never overwrite a real value."""
    return values.new_zeros(values.shape[0], d_sae).scatter_add(1, indices, values)


class Codes:
    """A batch of codes; build with `Codes.from_dense` or `Codes.from_topk` (see the module
    docstring for the two forms and what `selected` / `active` mean)."""

    __slots__ = ("d_sae", "nonnegative", "_dense", "_values", "_indices", "_selected", "_active", "context_ids", "position_ids")

    def __init__(self, d_sae: int, *, dense: Optional[Tensor] = None, values: Optional[Tensor] = None,
                 indices: Optional[Tensor] = None, selected: Optional[Tensor] = None,
                 active: Optional[Tensor] = None, nonnegative: bool = False):
        self.d_sae = d_sae
        # the producer guarantees no negative value (ReLU-like SAEs): consumers that treat
        # signed codes differently skip checking, which would be a host sync per step
        self.nonnegative = nonnegative
        self._dense, self._values, self._indices = dense, values, indices
        self._selected, self._active = selected, active
        self.context_ids: Optional[Tensor] = None  # set by with_positions
        self.position_ids: Optional[Tensor] = None

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def from_dense(cls, codes: Tensor, nonnegative: bool = False) -> "Codes":
        """Dense codes [B, d_sae]; the TopK form is listed only if asked for. nonnegative: the
        producer guarantees codes >= 0."""
        if not torch.is_tensor(codes) or not codes.is_floating_point():
            raise TypeError(f"codes must be a floating-point tensor, got {type(codes).__name__} "
                            f"{getattr(codes, 'dtype', '')}; pass the SAE's latent activations")
        if codes.dim() != 2:
            raise ValueError(f"codes must be 2-D [batch, d_sae], got shape {tuple(codes.shape)}; "
                             "flatten leading dimensions first")
        return cls(codes.shape[1], dense=codes, nonnegative=nonnegative)

    @classmethod
    def from_topk(cls, values: Tensor, indices: Tensor, d_sae: int, selected: Optional[Tensor] = None,
                  nonnegative: bool = False) -> "Codes":
        """The TopK form: values [B, k] (float) at latents indices [B, k]; `selected` (bool
        [B, k], default all) marks the real selections, the rest being padding (value 0);
        nonnegative: the producer guarantees values >= 0."""
        if not torch.is_tensor(values) or not values.is_floating_point() or values.dim() != 2:
            raise TypeError(f"TopK values must be a 2-D floating-point tensor [batch, k], got "
                            f"{type(values).__name__} {tuple(getattr(values, 'shape', ()))}")
        if not torch.is_tensor(indices) or indices.shape != values.shape:
            raise ValueError(f"TopK values {tuple(values.shape)} and indices "
                             f"{tuple(getattr(indices, 'shape', ()))} must have the same shape [batch, k]")
        if indices.dtype not in _INDEX_DTYPES:
            raise TypeError(f"TopK indices must be an integer tensor, got {indices.dtype}")
        if indices.device != values.device:
            raise ValueError(f"TopK values are on {values.device} but indices on {indices.device}")
        if selected is None:
            selected = torch.ones_like(indices, dtype=torch.bool)
        elif selected.shape != values.shape or selected.dtype != torch.bool:
            raise ValueError(f"selected must be a bool tensor of shape {tuple(values.shape)}, got "
                             f"{selected.dtype} {tuple(selected.shape)}")
        return cls(d_sae, values=values, indices=indices.long(), selected=selected,
                   active=selected & (values.detach() != 0), nonnegative=nonnegative)

    def with_positions(self, context_ids: Optional[Tensor], position_ids: Optional[Tensor]) -> "Codes":
        """These codes with the text context and position of each row attached (int64 [B])."""
        out = copy.copy(self)
        for name, ids in (("context_ids", context_ids), ("position_ids", position_ids)):
            if ids is not None:
                if ids.shape != (self.batch_size,):
                    raise ValueError(f"{name} must have shape [{self.batch_size}] (one per row of the batch), "
                                     f"got {tuple(ids.shape)}")
                ids = ids.to(device=self.device, dtype=torch.long)
            setattr(out, name, ids)
        return out

    def with_selected_firing(self) -> "Codes":
        """These codes with every selected entry counted as firing, zero values included (the
        reference code's one-hot-of-the-TopK-indices masks). Dense codes list only non-zeros,
        so for them this is the same codes."""
        if self._values is None or self._selected is self._active:
            return self
        out = copy.copy(self)
        out._active = self._selected
        return out

    # --- the two forms ---------------------------------------------------------------------
    @property
    def has_topk(self) -> bool:
        """Whether the TopK form is held (or was built already): reading it costs nothing."""
        return self._values is not None

    @property
    def has_dense(self) -> bool:
        """Whether the dense form is held (or was built already)."""
        return self._dense is not None

    def _list_nonzeros(self) -> None:
        codes = self._dense
        k = int((codes != 0).sum(dim=1).max()) if codes.numel() else 0
        idx = torch.topk(codes.detach().abs(), k, dim=1).indices if k else \
            torch.zeros(codes.shape[0], 0, dtype=torch.long, device=codes.device)
        self._values = codes.gather(1, idx)
        self._indices = idx
        self._active = self._values.detach() != 0
        self._selected = self._active

    def _topk_form(self) -> "Codes":
        """These codes with the TopK form listed (from the dense form, once)."""
        if self._values is None:
            self._list_nonzeros()
        return self

    @property
    def values(self) -> Tensor:
        """[B, k] (differentiable)."""
        return self._topk_form()._values

    @property
    def indices(self) -> Tensor:
        """[B, k] int64."""
        return self._topk_form()._indices

    @property
    def selected(self) -> Tensor:
        """Bool [B, k]: real selections (not padding)."""
        return self._topk_form()._selected

    @property
    def active(self) -> Tensor:
        """Bool [B, k]: the entries that fire."""
        return self._topk_form()._active

    def dense(self) -> Tensor:
        """Dense [B, d_sae] codes (differentiable w.r.t. the values); built once."""
        if self._dense is None:
            self._dense = scatter_dense(self._values, self._indices, self.d_sae)
        return self._dense

    def active_dense(self) -> Tensor:
        """Float 0/1 mask [B, d_sae] (detached, the codes' dtype) of the firing entries."""
        if self._values is None:
            return (self._dense.detach() != 0).to(self._dense.dtype)
        return scatter_dense(self._active.to(self._values.dtype), self._indices, self.d_sae)

    # --- summaries (no host sync) ----------------------------------------------------------
    def fired(self) -> Tensor:
        """Bool [d_sae]: which latents fired anywhere in the batch."""
        if self._values is None:
            return (self._dense.detach() != 0).any(dim=0)
        counts = torch.zeros(self.d_sae, device=self.device).index_add_(
            0, self._indices.flatten(), self._active.flatten().float())
        return counts > 0

    def l0(self) -> Tensor:
        """Mean number of firing latents per row (a detached scalar)."""
        firing = (self._dense.detach() != 0) if self._values is None else self._active
        return firing.float().sum(dim=-1).mean()

    # --- plumbing --------------------------------------------------------------------------
    def _held(self) -> Tensor:
        return self._values if self._values is not None else self._dense

    @property
    def batch_size(self) -> int:
        return self._held().shape[0]

    @property
    def device(self) -> torch.device:
        return self._held().device

    @property
    def dtype(self) -> torch.dtype:
        return self._held().dtype

    def to(self, device: torch.device | str) -> "Codes":
        out = copy.copy(self)
        for name in self.__slots__[1:]:
            value = getattr(self, name)
            if torch.is_tensor(value):
                setattr(out, name, value.to(device))
        return out

    def __repr__(self) -> str:
        forms = [f for f, held in (("topk", self._values is not None), ("dense", self._dense is not None)) if held]
        k = f", k={self._values.shape[1]}" if self._values is not None else ""
        ids = ", with context ids" if self.context_ids is not None else ""
        return f"Codes(batch={self.batch_size}, d_sae={self.d_sae}{k}, held={'+'.join(forms)}{ids})"
