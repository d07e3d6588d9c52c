"""`Codes`: the one type for a batch of SAE latent activations, from the SAE's training forward
through the trainer to the penalties and the evals.

A Codes holds one or more of three forms, and builds a missing one on first use (then keeps it):
- TopK form: values / indices [B, k] (row b's k' entries in row b);
- flat (coordinate) form, `Entries`: values / rows / cols [m], grouped by row (rows
  non-decreasing), with per-row `offsets` [B] into them. BatchTopK selects k B entries of the
  whole batch, unevenly spread over the rows: m is fixed (k B in one process), where the TopK
  form's width would be the busiest row's count, a host value (a sync per step);
- dense form [B, d_sae].
Each side pays for the others: densifying costs O(B d_sae) a step; listing a dense form's
non-zeros, or packing the flat form into rows, needs a host sync (the widest row) a step. So
nothing is converted unless a consumer asks, and consumers that can work on several forms use
`has_topk` / `has_flat` to take the one already there; `flat()` is free for the TopK form (a
reshape), so per-entry consumers (dense(), fired(), l0(), momentum) use it and never sync.

The entries (in both sparse forms):
- `selected`: the entry is a real selection. Padding (the TopK form of BatchTopK codes, padded
  to the busiest row, or a rank's unkept candidates in the flat form under torchrun) is a
  (latent 0 or any, value 0.0) entry that is not selected.
- `active`: selected and non-zero: the entry fires (co-activation statistics, `fired()`).
Padding has value 0 and is never active, so it adds nothing to sums, and `dense()` /
`active_dense()` accumulate (scatter_add / index_add): a padded (0, 0.0) entry can never
overwrite latent 0's real value (a plain scatter with repeated indices keeps an arbitrary one of
them). For dense codes the TopK form lists each row's non-zeros (k = the largest row L0, padded
with inactive zeros), and selected == active.

context_ids / position_ids [B] (int64, optional) say which text context and position each row
came from (ActivationStream in sequence mode), for penalties that care about token order.
"""

from __future__ import annotations

import copy
from typing import NamedTuple, Optional

import torch
from torch import Tensor

_INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8)


def scatter_dense(values: Tensor, indices: Tensor, d_sae: int) -> Tensor:
    """Dense codes [B, d_sae] from the TopK form (differentiable w.r.t. values); scatter_add so
    padded (index, 0.0) entries never overwrite a real value."""
    return values.new_zeros(values.shape[0], d_sae).scatter_add(1, indices, values)


def flat_dense(values: Tensor, rows: Tensor, cols: Tensor, batch: int, d_sae: int) -> Tensor:
    """Dense [batch, d_sae] from flat entries: values [m] at (rows, cols) [m], repeats adding."""
    return values.new_zeros(batch * d_sae).index_add(0, rows * d_sae + cols, values).view(batch, d_sae)


def _checked_selected(selected: Optional[Tensor], values: Tensor) -> Tensor:
    """`selected` (default: all of `values`' entries), refused unless a bool mask of its shape."""
    if selected is None:
        return torch.ones_like(values, dtype=torch.bool)
    if selected.shape != values.shape or selected.dtype != torch.bool:
        raise ValueError(f"selected must be a bool tensor of shape {tuple(values.shape)}, got "
                         f"{selected.dtype} {tuple(selected.shape)}")
    return selected


def row_offsets(rows: Tensor, batch: int) -> Tensor:
    """Where each row's entries start in `rows` (grouped by row, non-decreasing): [B] int64,
    from a per-row count on the device (bincount would sync on CUDA)."""
    counts = torch.zeros(batch, dtype=torch.long, device=rows.device).index_add_(0, rows, torch.ones_like(rows))
    return torch.cumsum(counts, 0) - counts


class Entries(NamedTuple):
    """The flat form: entry e is `values[e]` at (rows[e], cols[e]); entries grouped by row with
    rows non-decreasing, row b's entries at offsets[b] .. offsets[b + 1] - 1 (embedding_bag's
    bags); selected / active as in the module docstring. values [m] is differentiable."""

    values: Tensor
    rows: Tensor
    cols: Tensor
    selected: Tensor
    active: Tensor
    offsets: Tensor

    def to(self, device) -> "Entries":
        return Entries(*(t.to(device) for t in self))


class Codes:
    """A batch of codes; build with `Codes.from_dense`, `Codes.from_topk` or `Codes.from_flat`
    (see the module docstring for the forms and what `selected` / `active` mean)."""

    __slots__ = ("d_sae", "nonnegative", "_dense", "_values", "_indices", "_selected", "_active", "_entries",
                 "_batch", "_width_from_data", "context_ids", "position_ids")

    def __init__(self, d_sae: int, *, dense: Optional[Tensor] = None, values: Optional[Tensor] = None,
                 indices: Optional[Tensor] = None, selected: Optional[Tensor] = None,
                 active: Optional[Tensor] = None, entries: Optional[Entries] = None, batch: Optional[int] = None,
                 nonnegative: bool = False):
        self.d_sae = d_sae
        # the producer guarantees no negative value (ReLU-like SAEs): consumers that treat
        # signed codes differently skip checking, which would be a host sync per step
        self.nonnegative = nonnegative
        self._dense, self._values, self._indices = dense, values, indices
        self._selected, self._active = selected, active
        self._entries = entries
        self._width_from_data = False  # set when the TopK form is packed to the busiest row
        self._batch = batch if batch is not None else (dense if dense is not None else values).shape[0]
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
        nonnegative: the producer guarantees values >= 0. The width k is the producer's setting
        (an SAE's k), the same on every rank of a job: gathering reads none (`width_from_data`)."""
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
        selected = _checked_selected(selected, values)
        return cls(d_sae, values=values, indices=indices.long(), selected=selected,
                   active=selected & (values.detach() != 0), nonnegative=nonnegative)

    @classmethod
    def from_flat(cls, values: Tensor, rows: Tensor, cols: Tensor, batch_size: int, d_sae: int,
                  selected: Optional[Tensor] = None, nonnegative: bool = False,
                  offsets: Optional[Tensor] = None) -> "Codes":
        """The flat form: values [m] (float) at (rows [m], cols [m]) of a [batch_size, d_sae]
        batch, entries grouped by row with rows non-decreasing (not checked: a check would
        sync); `selected` (bool [m], default all) marks the real selections, the values of the
        others are zeroed; offsets (optional): each row's first entry, if the caller has them."""
        if not torch.is_tensor(values) or not values.is_floating_point() or values.dim() != 1:
            raise TypeError(f"flat values must be a 1-D floating-point tensor [m], got "
                            f"{type(values).__name__} {tuple(getattr(values, 'shape', ()))}")
        for name, t in (("rows", rows), ("cols", cols)):
            if not torch.is_tensor(t) or t.shape != values.shape or t.dtype not in _INDEX_DTYPES:
                raise ValueError(f"flat {name} must be an integer tensor of shape {tuple(values.shape)} "
                                 f"(one per value), got {getattr(t, 'dtype', type(t).__name__)} "
                                 f"{tuple(getattr(t, 'shape', ()))}")
            if t.device != values.device:
                raise ValueError(f"flat values are on {values.device} but {name} on {t.device}")
        given = selected is not None
        selected = _checked_selected(selected, values)
        if given:
            values = torch.where(selected, values, 0)
        rows, cols = rows.long(), cols.long()
        if offsets is None:
            offsets = row_offsets(rows, batch_size)
        entries = Entries(values, rows, cols, selected, selected & (values.detach() != 0), offsets)
        return cls(d_sae, entries=entries, batch=batch_size, nonnegative=nonnegative)

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
        topk = self._values is not None and self._selected is not self._active
        flat = self._entries is not None and self._entries.selected is not self._entries.active
        if not (topk or flat):
            return self
        out = copy.copy(self)
        if topk:
            out._active = self._selected
        if flat:
            out._entries = self._entries._replace(active=self._entries.selected)
        return out

    # --- the three forms -------------------------------------------------------------------
    @property
    def has_topk(self) -> bool:
        """Whether the TopK form is held (or was built already): reading it costs nothing."""
        return self._values is not None

    @property
    def has_flat(self) -> bool:
        """Whether the flat form is held (or was built already). `flat()` is also free when
        `has_topk` (a reshape); from dense codes it lists their non-zeros (a host sync)."""
        return self._entries is not None

    @property
    def has_dense(self) -> bool:
        """Whether the dense form is held (or was built already)."""
        return self._dense is not None

    @property
    def width_from_data(self) -> bool:
        """Whether the TopK form's width was read from the data (the busiest row, when packed
        from the flat or dense form), so that it may differ between the ranks of a job."""
        return self._width_from_data

    def _list_nonzeros(self) -> None:
        codes = self._dense
        self._width_from_data = True
        k = int((codes != 0).sum(dim=1).max()) if codes.numel() else 0
        idx = torch.topk(codes.detach().abs(), k, dim=1).indices if k else \
            torch.zeros(codes.shape[0], 0, dtype=torch.long, device=codes.device)
        self._values = codes.gather(1, idx)
        self._indices = idx
        self._active = self._values.detach() != 0
        self._selected = self._active

    def _pack_rows(self) -> None:
        """The flat form packed into [B, k_max], k_max being the busiest row's count: a host
        sync, so nothing on the training path asks for it (the flat form serves decode,
        encoder backward, dense(), fired(), l0(), momentum and the gathers)."""
        e, batch = self._entries, self._batch
        self._width_from_data = True
        counts = torch.diff(e.offsets, append=e.offsets.new_tensor([e.rows.numel()]))
        slot = torch.arange(e.rows.numel(), device=e.rows.device) - e.offsets[e.rows]
        k_max = int(counts.max()) if batch and e.rows.numel() else 0
        # unselected flat entries (value 0) become padding too: at (row, latent 0), not selected
        self._values = e.values.new_zeros(batch, k_max).index_put((e.rows, slot), e.values)
        self._indices = e.cols.new_zeros(batch, k_max).index_put((e.rows, slot), torch.where(e.selected, e.cols, 0))
        self._selected = torch.zeros(batch, k_max, dtype=torch.bool, device=e.rows.device).index_put(
            (e.rows, slot), e.selected)
        self._active = torch.zeros_like(self._selected).index_put((e.rows, slot), e.active)

    def _topk_form(self) -> "Codes":
        """These codes with the TopK form built (from the flat or the dense form, once)."""
        if self._values is None:
            self._pack_rows() if self._entries is not None else self._list_nonzeros()
        return self

    def flat(self) -> Entries:
        """The flat form (built once): free from the TopK form (a reshape, rows in order), a
        host sync from dense codes (their non-zeros are listed first)."""
        if self._entries is None:
            self._topk_form()
            batch, k = self._values.shape
            rows = torch.arange(batch, device=self._values.device)
            self._entries = Entries(self._values.reshape(-1), rows.repeat_interleave(k), self._indices.reshape(-1),
                                    self._selected.reshape(-1), self._active.reshape(-1), rows * k)
        return self._entries

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
            if self._values is not None:
                self._dense = scatter_dense(self._values, self._indices, self.d_sae)
            else:
                e = self._entries
                self._dense = flat_dense(e.values, e.rows, e.cols, self._batch, self.d_sae)
        return self._dense

    def active_dense(self) -> Tensor:
        """Float 0/1 mask [B, d_sae] (detached, the codes' dtype) of the firing entries."""
        if self._values is not None:
            return scatter_dense(self._active.to(self._values.dtype), self._indices, self.d_sae)
        if self._entries is not None:
            e = self._entries
            return flat_dense(e.active.to(e.values.dtype), e.rows, e.cols, self._batch, self.d_sae)
        return (self._dense.detach() != 0).to(self._dense.dtype)

    # --- summaries (no host sync) ----------------------------------------------------------
    def fired(self) -> Tensor:
        """Bool [d_sae]: which latents fired anywhere in the batch."""
        return self.firing_per_latent() > 0

    def firing_per_latent(self) -> Tensor:
        """Int64 [d_sae]: how many rows each latent fires in."""
        if self._values is None and self._entries is None:
            return (self._dense.detach() != 0).sum(dim=0)
        e = self.flat()
        return torch.zeros(self.d_sae, dtype=torch.long, device=self.device).index_add_(0, e.cols, e.active.long())

    def firing_per_row(self) -> Tensor:
        """Int64 [B]: how many latents fire in each row."""
        if self._values is None and self._entries is None:
            return (self._dense.detach() != 0).sum(dim=1)
        e = self.flat()
        return torch.zeros(self._batch, dtype=torch.long, device=self.device).index_add_(0, e.rows, e.active.long())

    def l0(self) -> Tensor:
        """Mean number of firing latents per row (a detached scalar)."""
        return self.firing_per_row().float().mean()

    # --- plumbing --------------------------------------------------------------------------
    def _held(self) -> Tensor:
        if self._values is not None:
            return self._values
        return self._entries.values if self._entries is not None else self._dense

    @property
    def batch_size(self) -> int:
        return self._batch

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
            if torch.is_tensor(value) or isinstance(value, Entries):
                setattr(out, name, value.to(device))
        return out

    def __repr__(self) -> str:
        forms = [f for f, held in (("topk", self._values is not None), ("flat", self._entries is not None),
                                   ("dense", self._dense is not None)) if held]
        k = f", k={self._values.shape[1]}" if self._values is not None else ""
        ids = ", with context ids" if self.context_ids is not None else ""
        return f"Codes(batch={self.batch_size}, d_sae={self.d_sae}{k}, held={'+'.join(forms)}{ids})"
