"""Temporal co-activation stability ("efficient temporal SAE"), docs/methods.md section 2.

Notation per step: F [B, n] codes, A [B, n] firing masks, D = F^T F / B. A window collects
co-activation counts A^T A over samples; when it closes its rate C = counts / samples updates the
history avg. Weights W = cur * (1 + |cur - avg| / max(cur, avg)) weigh the pairs of D.

mode="reference" (the reference code exactly, defect included):
    A = one-hot of the TopK indices (dense codes: F != 0)
    window += A^T A; count += B
    if count >= window_size: C = window / count; a_i = min(alpha_base, C_ii / freq_divisor)
        (one rate per row i); avg = (1 - a) avg + a C; window = 0; count = 0
    cur = window / count if count > 0 else avg
    W = cur * (1 + |cur - avg| / (max(cur, avg) + 1e-8))
    loss = mean over all n^2 entries (diagonal included) of W * D^2
  With batch >= window_size the window closes every step, so cur == avg and the stability
  factor is 1: plain history-weighted orthogonality.

mode="specified" (the idea, with the defect fixed):
    A = 1[code != 0]; pairs i != j only.
    Windows hold exactly window_size samples across steps: a batch that crosses a boundary is
    split there, the samples before it close the window (and update avg), the rest open the next
    one; a batch may close several windows.
    cur_ij = co-activation rate over the open window extended to the end of this batch
             ((open window counts + this batch's A^T A) / (open samples + B)), taken before any
             window closes, so every pair firing together in this batch has cur > 0;
    avg_ij = the history before this step;  W = cur * (1 + |cur - avg| / max(cur, avg)) (0 if both 0)
    loss = sum_{i != j} W_ij |D_ij| / s,  s = n ("latent", default), n(n-1) ("pair"), 1 ("none")
    At each window close: freq_ij = samples so far in which i and j fired together (the cap
    alpha_base only binds if freq is a count: the reference's rate C_ii kept a <= 0.001),
    a_ij = min(alpha_base, freq_ij / freq_divisor), avg = (1 - a) avg + a C.

Cost. D_ij != 0 only for pairs firing together in the batch, so only their weights are read.
state="sparse" keeps pairs that ever fired together as sorted int64 keys i * n + j (i < j):
  - specified: avg, freq (saturated where a saturates) and the window index of its last update;
    a pair absent from a window decays by the constant factor (1 - a), applied lazily on access
    as (1 - a)^(windows since last update); exact.
  - reference: avg_ij and avg_ji (row-dependent rates make avg asymmetric) plus a diagonal
    vector; the rates change every window, so decay is applied eagerly at each window close
    (one vectorised pass over the stored pairs).
  Pairs whose avg drops below prune_below are dropped (checked whenever the store doubled);
  max_pairs caps the store by keeping the largest averages. Both are the only approximations:
  prune_below=0 and no max_pairs are exact (the reference mode's default).
state="dense" keeps n x n matrices (reference.TemporalDense); "auto" picks dense for n <= 1024.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
from pydantic import Field, model_validator
from torch import Tensor

from featsep.penalties.base import (Normalize, host_values, Penalty, PenaltyConfigBase, SparseCodes, check_codes,
                                    check_device, register, scale_divisor, state_dtype, to_sparse_codes)
from featsep.penalties.pairs import (DEFAULT_CHUNK_ELEMENTS, coactive_pairs, gather_or, lookup, merge_sorted_add,
                                     pair_gram, split_keys, tensor_bytes)
from featsep.penalties.reference import STABILITY_EPS, TemporalDense, off_diagonal

DENSE_STATE_MAX_LATENTS = 1024
SPECIFIED_PRUNE_BELOW = 1e-6
MIN_PAIRS_BEFORE_PRUNE = 4096


class TemporalConfig(PenaltyConfigBase):
    weight: float = 0.1
    mode: Literal["specified", "reference"] = "specified"
    window_size: int = Field(1000, gt=0, description="samples per co-activation window")
    alpha_base: float = Field(0.1, gt=0.0, le=1.0, description="largest history update rate")
    freq_divisor: float = Field(1000.0, gt=0.0, description="a = min(alpha_base, freq / freq_divisor)")
    normalize: Optional[Normalize] = Field(
        None, description='loss scale of mode="specified" (None: "latent"); the reference takes the mean over n^2')
    state: Literal["auto", "sparse", "dense"] = "auto"
    prune_below: Optional[float] = Field(
        None, ge=0.0, description="drop tracked pairs whose avg falls below (None: 0 for reference, 1e-6 for specified)")
    max_pairs: Optional[int] = Field(None, gt=0, description="cap on tracked pairs (None: no cap)")
    chunk_elements: int = Field(DEFAULT_CHUNK_ELEMENTS, gt=0, description="pair entries per temporary chunk")

    @model_validator(mode="after")
    def _normalize_only_specified(self) -> "TemporalConfig":
        if self.mode == "reference" and self.normalize is not None:
            raise ValueError('normalize only applies to mode="specified"; the reference takes the mean '
                             'over n^2: drop normalize or use mode="specified"')
        return self


def _stability_weights(cur: Tensor, avg: Tensor, eps: Optional[float]) -> Tensor:
    """W = cur (1 + |cur - avg| / max(cur, avg)), with the reference's +eps or 0 where both are 0."""
    dev = (cur - avg).abs()
    mx = torch.maximum(cur, avg)
    if eps is not None:
        return cur * (1 + dev / (mx + eps))
    return cur * (1 + torch.where(mx > 0, dev / mx.clamp_min(1e-300), torch.zeros_like(mx)))


class _SparseState:
    """Pair-keyed state and step for both modes (see the module docstring)."""

    TENSORS = ["window_keys", "window_counts", "window_diag", "avg_keys", "avg_vals", "avg_diag",
               "avg_freq", "avg_stamp"]

    def __init__(self, cfg: TemporalConfig):
        self.cfg = cfg
        self.n = cfg.d_sae
        self.reference = cfg.mode == "reference"
        self.prune_below = cfg.prune_below if cfg.prune_below is not None else (
            0.0 if self.reference else SPECIFIED_PRUNE_BELOW)
        self.freq_cap = int(torch.tensor(cfg.alpha_base * cfg.freq_divisor).ceil())
        self.count = 0
        self.windows_closed = 0
        self.pairs_after_prune = 0
        self.window_keys: Optional[Tensor] = None
        self.last: dict[str, float] = {}

    # --- state -------------------------------------------------------------------------------
    def _init(self, codes: SparseCodes) -> None:
        if self.window_keys is not None:
            return
        dev, dt, n = codes.values.device, state_dtype(codes.values), self.n
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        self.window_keys, self.window_counts = empty, empty.clone()
        self.window_diag = torch.zeros(n, dtype=torch.long, device=dev)
        self.avg_keys = empty.clone()
        self.avg_vals = torch.zeros((0, 2) if self.reference else (0,), dtype=dt, device=dev)
        self.avg_diag = torch.zeros(n, dtype=dt, device=dev)
        self.avg_freq = torch.zeros(0, dtype=torch.int32, device=dev)
        self.avg_stamp = torch.zeros(0, dtype=torch.int32, device=dev)

    def state_dict(self) -> dict[str, Any]:
        state = {"count": torch.tensor(self.count), "windows_closed": torch.tensor(self.windows_closed),
                 "pairs_after_prune": torch.tensor(self.pairs_after_prune)}
        if self.window_keys is not None:
            state.update({name: getattr(self, name).clone() for name in self.TENSORS})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "window" in state:
            raise ValueError('temporal penalty: this checkpoint holds dense state; build the penalty '
                             'with state="dense" (or the same d_sae) to load it')
        self.count = int(state.get("count", 0))
        self.windows_closed = int(state.get("windows_closed", 0))
        self.pairs_after_prune = int(state.get("pairs_after_prune", 0))
        if "window_keys" not in state:
            self.window_keys = None
            return
        for name in self.TENSORS:
            setattr(self, name, state[name].clone())

    def to(self, device) -> None:
        for name in self.TENSORS:
            value = getattr(self, name, None)
            if torch.is_tensor(value):
                setattr(self, name, value.to(device))

    def nbytes(self) -> int:
        return tensor_bytes(*(getattr(self, name, None) for name in self.TENSORS))

    # --- one step ------------------------------------------------------------------------------
    def step(self, codes: SparseCodes) -> Tensor:
        self._init(codes)
        check_device(self.window_keys, codes.values, "temporal penalty")
        return self._step_reference(codes) if self.reference else self._step_specified(codes)

    def _add_to_window(self, keys: Tensor, counts: Tensor, samples: int) -> None:
        self.window_keys, self.window_counts = merge_sorted_add(self.window_keys, self.window_counts, keys, counts)
        self.count += samples

    def _clear_window(self) -> None:
        self.window_keys = self.window_keys[:0]
        self.window_counts = self.window_counts[:0]
        self.window_diag.zero_()
        self.count = 0
        self.windows_closed += 1

    def _record(self, loss: Tensor, dev: Tensor, weights: Tensor, cur: Tensor, pairs: int) -> None:
        tracked = cur > 0  # masked means as tensors: no host sync per step (read in stats())
        stability = ((weights / cur.clamp_min(1e-300) - 1) * tracked).sum() / tracked.sum().clamp_min(1)
        self.last = {
            "loss": loss.detach(), "batch_pairs": pairs,
            "mean_abs_dev": dev.mean() if dev.numel() else 0.0,
            "mean_stability": stability,
        }

    # specified ---------------------------------------------------------------------------------
    def _rate(self, freq: Tensor) -> Tensor:
        return torch.clamp(freq.to(self.avg_vals.dtype) / self.cfg.freq_divisor, max=self.cfg.alpha_base)

    def _avg_now(self, keys: Tensor) -> Tensor:
        """History at the current window index, lazily decayed (0 for untracked pairs)."""
        pos, found = lookup(self.avg_keys, keys)
        if self.avg_keys.numel() == 0:
            return torch.zeros(keys.shape, dtype=self.avg_vals.dtype, device=keys.device)
        decay = (1 - self._rate(self.avg_freq[pos])) ** (self.windows_closed - self.avg_stamp[pos]).to(self.avg_vals.dtype)
        return torch.where(found, self.avg_vals[pos] * decay, torch.zeros_like(decay))

    def _step_specified(self, codes: SparseCodes) -> Tensor:
        cfg, B = self.cfg, codes.batch_size
        segments, start, filled = [], 0, self.count
        while start < B:  # split the batch where windows close
            take = min(B - start, cfg.window_size - filled)
            segments.append((start, start + take))
            start, filled = start + take, (filled + take) % cfg.window_size
        pairs = coactive_pairs(codes, cfg.chunk_elements, boundaries=[e for _, e in segments])
        keys, counts = pairs.keys, pairs.counts
        with torch.no_grad():
            cur = (gather_or(self.window_counts, self.window_keys, keys) + counts).to(self.avg_vals.dtype) / (self.count + B)
            avg = self._avg_now(keys)
            weights = _stability_weights(cur, avg, None)
        gram, _ = pair_gram(codes, pairs)
        loss = 2 * (weights.to(gram.dtype) * gram.abs()).sum() / scale_divisor(cfg.normalize or "latent", self.n)
        with torch.no_grad():
            self._record(loss, (cur - avg).abs(), weights, cur, keys.numel())
            closed = []
            for (s, e), (seg_keys, seg_counts) in zip(segments, pairs.segments):
                self._add_to_window(seg_keys, seg_counts, e - s)
                if self.count == cfg.window_size:
                    closed.append((self.window_keys, self.window_counts))
                    self._clear_window()
            if closed:
                self._close_specified(closed)
        return loss

    def _close_specified(self, closed: list[tuple[Tensor, Tensor]]) -> None:
        """Apply the windows closed in this step, in order, with one merge into the store."""
        t0, old = self.windows_closed - len(closed), self.avg_keys.numel()
        keys, inverse = torch.unique(torch.cat([self.avg_keys] + [k for k, _ in closed]), sorted=True, return_inverse=True)
        vals = self.avg_vals.new_zeros(keys.numel())
        freq = torch.zeros(keys.numel(), dtype=torch.int32, device=keys.device)
        stamp = torch.full((keys.numel(),), t0, dtype=torch.int32, device=keys.device)
        vals[inverse[:old]], freq[inverse[:old]], stamp[inverse[:old]] = self.avg_vals, self.avg_freq, self.avg_stamp
        offset = old
        for t, (window_keys, window_counts) in enumerate(closed, start=t0):
            pos = inverse[offset:offset + window_keys.numel()]
            offset += window_keys.numel()
            history = vals[pos] * (1 - self._rate(freq[pos])) ** (t - stamp[pos]).to(vals.dtype)
            new_freq = freq[pos].long() + window_counts
            a = self._rate(new_freq)
            vals[pos] = (1 - a) * history + a * (window_counts.to(vals.dtype) / self.cfg.window_size)
            freq[pos] = new_freq.clamp(max=self.freq_cap).to(torch.int32)
            stamp[pos] = t + 1
        self.avg_keys, self.avg_vals, self.avg_freq, self.avg_stamp = keys, vals, freq, stamp
        if self._prune_due():
            self._keep(self._avg_now(self.avg_keys))

    # reference ---------------------------------------------------------------------------------
    def _step_reference(self, codes: SparseCodes) -> Tensor:
        cfg, n = self.cfg, self.n
        pairs = coactive_pairs(codes, cfg.chunk_elements)
        keys, counts = pairs.keys, pairs.counts
        with torch.no_grad():
            self._add_to_window(keys, counts, codes.batch_size)
            self.window_diag += torch.bincount(codes.indices[codes.active], minlength=n)
            if self.count >= cfg.window_size:
                self._close_reference()
            avg = gather_or(self.avg_vals, self.avg_keys, keys)  # [P, 2]: avg_ij, avg_ji
            if self.count > 0:
                cur = (gather_or(self.window_counts, self.window_keys, keys).to(avg.dtype) / self.count)[:, None].expand_as(avg)
                cur_diag = self.window_diag.to(avg.dtype) / self.count
            else:
                cur, cur_diag = avg, self.avg_diag
            pair_weights = _stability_weights(cur, avg, STABILITY_EPS)  # [P, 2]
            weights = pair_weights.sum(1)
            weights_diag = _stability_weights(cur_diag, self.avg_diag, STABILITY_EPS)
        gram, diag = pair_gram(codes, pairs)
        loss = ((weights.to(gram.dtype) * gram ** 2).sum() + (weights_diag.to(diag.dtype) * diag ** 2).sum()) / (n * n)
        with torch.no_grad():
            self._record(loss, (cur - avg).abs(), pair_weights, cur, keys.numel())
        return loss

    def _close_reference(self) -> None:
        C_pairs = self.window_counts.to(self.avg_vals.dtype) / self.count
        C_diag = self.window_diag.to(self.avg_vals.dtype) / self.count
        a = torch.clamp(C_diag / self.cfg.freq_divisor, max=self.cfg.alpha_base)  # one rate per row
        i, j = split_keys(self.avg_keys, self.n)
        decayed = self.avg_vals * torch.stack([1 - a[i], 1 - a[j]], dim=1)
        wi, wj = split_keys(self.window_keys, self.n)
        added = torch.stack([a[wi] * C_pairs, a[wj] * C_pairs], dim=1)
        self.avg_keys, self.avg_vals = merge_sorted_add(self.avg_keys, decayed, self.window_keys, added)
        self.avg_diag = (1 - a) * self.avg_diag + a * C_diag
        self._clear_window()
        if self._prune_due():
            self._keep(self.avg_vals.max(dim=1).values)

    # pruning -----------------------------------------------------------------------------------
    def _prune_due(self) -> bool:
        size = self.avg_keys.numel()
        over_cap = self.cfg.max_pairs is not None and size > self.cfg.max_pairs
        return over_cap or size >= max(2 * self.pairs_after_prune, MIN_PAIRS_BEFORE_PRUNE)

    def _keep(self, current: Tensor) -> None:
        """Drop pairs whose current average is <= prune_below, then cap at max_pairs."""
        keep = current > self.prune_below
        cap = self.cfg.max_pairs
        if cap is not None and int(keep.sum()) > cap:
            top = torch.topk(torch.where(keep, current, torch.full_like(current, -1.0)), cap).indices
            keep = torch.zeros_like(keep)
            keep[top] = True
        self.avg_keys, self.avg_vals = self.avg_keys[keep], self.avg_vals[keep]
        if not self.reference:
            self.avg_freq, self.avg_stamp = self.avg_freq[keep], self.avg_stamp[keep]
        self.pairs_after_prune = self.avg_keys.numel()

    def stats(self) -> dict[str, Any]:
        return {"tracked_pairs": 0 if self.window_keys is None else int(self.avg_keys.numel()),
                "window_pairs": 0 if self.window_keys is None else int(self.window_keys.numel()),
                "state_bytes": self.nbytes(), "windows_closed": self.windows_closed,
                "window_fill": self.count / self.cfg.window_size, **host_values(self.last)}


class _DenseState:
    """n x n state: the literal implementation in reference.py (fast for small n)."""

    def __init__(self, cfg: TemporalConfig):
        self.cfg = cfg
        self.impl = TemporalDense(cfg.d_sae, cfg.mode, cfg.window_size, cfg.alpha_base, cfg.freq_divisor,
                                  cfg.normalize or "latent")
        self.last: dict[str, float] = {}

    def step(self, codes: SparseCodes) -> Tensor:
        check_device(self.impl.window, codes.values, "temporal penalty")
        A = codes.active_dense()
        loss = self.impl.step(codes.dense(), A)
        with torch.no_grad():
            pairs = ((A.T @ A) > 0) & (off_diagonal(self.cfg.d_sae, A) > 0)
            n_pairs = pairs.sum()
            self.last = {"loss": loss.detach(), "batch_pairs": n_pairs,
                         "mean_abs_dev": (self.impl.last_dev * pairs).sum() / n_pairs.clamp_min(1)}
        return loss

    def state_dict(self) -> dict[str, Any]:
        impl = self.impl
        state = {"count": torch.tensor(impl.count), "windows_closed": torch.tensor(impl.windows_closed)}
        if impl.window is not None:
            state.update(window=impl.window.clone(), avg=impl.avg.clone(), cum=impl.cum.clone())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "window_keys" in state:
            raise ValueError('temporal penalty: this checkpoint holds sparse state; build the penalty '
                             'with state="sparse" to load it')
        impl = self.impl
        impl.count, impl.windows_closed = int(state.get("count", 0)), int(state.get("windows_closed", 0))
        if "window" in state:
            impl.window, impl.avg, impl.cum = state["window"].clone(), state["avg"].clone(), state["cum"].clone()

    def to(self, device) -> None:
        for name in ("window", "avg", "cum"):
            value = getattr(self.impl, name)
            if value is not None:
                setattr(self.impl, name, value.to(device))

    def stats(self) -> dict[str, Any]:
        impl = self.impl
        nbytes = tensor_bytes(impl.window, impl.avg, impl.cum)
        return {"tracked_pairs": self.cfg.d_sae ** 2 if impl.window is not None else 0, "state_bytes": nbytes,
                "windows_closed": impl.windows_closed, "window_fill": impl.count / self.cfg.window_size,
                **host_values(self.last)}


_STATE_BACKENDS = {"sparse": _SparseState, "dense": _DenseState}


@register("temporal")
class TemporalPenalty(Penalty):
    config_class = TemporalConfig

    def __init__(self, cfg: TemporalConfig):
        super().__init__(cfg)
        backend = cfg.state if cfg.state != "auto" else ("dense" if cfg.d_sae <= DENSE_STATE_MAX_LATENTS else "sparse")
        self.backend_name = backend
        self.backend = _STATE_BACKENDS[backend](cfg)
        self.steps = 0

    def __call__(self, codes: Tensor, indices: Optional[Tensor] = None) -> dict[str, Tensor]:
        check_codes(codes, indices, self.cfg.d_sae, "temporal penalty")
        sparse = to_sparse_codes(codes, indices, self.cfg.d_sae, zero_values_fire=self.cfg.mode == "reference")
        loss = self.backend.step(sparse)
        self.steps += 1
        return {self.name: loss}

    def stats(self) -> dict[str, Any]:
        return {"steps": self.steps, "state": self.backend_name, **self.backend.stats()}

    def state_dict(self) -> dict[str, Any]:
        return {"steps": torch.tensor(self.steps), **self.backend.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))
        self.backend.load_state_dict(state)

    def to(self, device: torch.device | str) -> "TemporalPenalty":
        self.backend.to(device)
        return self
