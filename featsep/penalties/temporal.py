"""Temporal co-activation stability ("efficient temporal SAE"), docs/methods.md section 2.

Notation per step: F [B, n] codes, A [B, n] firing masks, D = F^T F / B. A window collects
co-activation counts A^T A over samples; when it closes its rate C = counts / samples updates the
history avg. Weights W = cur * (1 + |cur - avg| / max(cur, avg)) weigh the pairs of D.

mode="reference" (the reference code exactly, defect included):
    A = one-hot of the selected TopK indices, zero values included (dense codes: F != 0;
        BatchTopK's padding is not selected, see featsep.codes)
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
  One step streams the batch's pairs in key ranges (pairs.pair_loss): for each range it reads
  the range's window and history, weighs its pairs and brings the range's state through the
  step (window merges and closes), so no step ever holds all the batch's pairs or a full copy of
  a closing window beside the store; the stores are re-joined once per step.
  Pairs whose avg drops below prune_below are dropped whenever the store has doubled since the
  last prune (the specified mode prunes during the step's window closes, which every stored pair
  passes through, when the last step's growth says the store doubles in this step);
  max_pairs caps the store by keeping the largest averages. Both are the only approximations:
  prune_below=0 and no max_pairs are exact (the reference mode's default, whose store therefore
  only grows, towards n^2 / 2 pairs: set max_pairs for long runs at large n).
state="dense" keeps n x n matrices (reference.TemporalDense); "auto" picks dense for n <= 1024.
Above that the sparse state is faster even when the pairs fill most of n^2 (n 4096, k 160,
batch 4096: 5.1 s vs 5.4 s a step, benchmarks/penalties.py), at twice the dense memory.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

import torch
from pydantic import Field, model_validator
from torch import Tensor

from featsep.codes import Codes
from featsep.penalties.base import (Normalize, host_values, Penalty, PenaltyConfigBase, as_codes, check_device, register,
                                    scale_divisor, state_dtype)
from featsep.penalties.pairs import (DEFAULT_CHUNK_ELEMENTS, PairChunk, diagonal_gram, gather_or, lookup,
                                     merge_sorted, merge_sorted_add, pair_loss, split_keys, tensor_bytes)
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


class _Rebuild:
    """The next version of sorted-key stores (name -> (keys, *columns)), built in one pass in
    increasing key order: take(name, hi) hands over the old entries with keys below hi not yet
    taken, put() appends their replacement, finish() joins the pieces and the untaken rest."""

    def __init__(self, **stores: tuple[Tensor, ...]):
        self.old = stores
        self.cursor = {name: 0 for name in stores}
        self.pieces: dict[str, list[tuple[Tensor, ...]]] = {name: [] for name in stores}

    def _end(self, name: str, hi: Optional[int]) -> int:
        keys = self.old[name][0]
        if hi is None:
            return keys.numel()
        return int(torch.searchsorted(keys, torch.tensor(hi, dtype=keys.dtype, device=keys.device)))

    def take(self, name: str, hi: Optional[int]) -> tuple[Tensor, ...]:
        start, end = self.cursor[name], self._end(name, hi)
        self.cursor[name] = end
        return tuple(t[start:end] for t in self.old[name])

    def put(self, name: str, *columns: Tensor) -> None:
        self.pieces[name].append(columns)

    def finish(self, name: str) -> tuple[Tensor, ...]:
        pieces = self.pieces[name] + [self.take(name, None)]
        return tuple(torch.cat(cols) for cols in zip(*pieces))


class _StepStats:
    """Means of |cur - avg| and of the stability factor over the batch's pairs, summed chunk by
    chunk as tensors (no host sync during the step)."""

    def __init__(self):
        self.pairs = 0
        self.dev_sum = self.dev_n = self.stab_sum = self.tracked = 0.0

    def add(self, dev: Tensor, weights: Tensor, cur: Tensor) -> None:
        tracked = cur > 0
        self.pairs += cur.shape[0]
        self.dev_sum = self.dev_sum + dev.sum()
        self.dev_n += dev.numel()
        self.stab_sum = self.stab_sum + ((weights / cur.clamp_min(1e-300) - 1) * tracked).sum()
        self.tracked = self.tracked + tracked.sum()

    def values(self, loss: Tensor) -> dict[str, Any]:
        tracked = self.tracked.clamp_min(1) if torch.is_tensor(self.tracked) else 1
        return {"loss": loss.detach(), "batch_pairs": self.pairs,
                "mean_abs_dev": self.dev_sum / max(self.dev_n, 1), "mean_stability": self.stab_sum / tracked}


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
        self.last_growth = -1  # pairs the store gained in the last step without a prune (-1: none yet)
        self.window_keys: Optional[Tensor] = None
        self.last: dict[str, float] = {}

    # --- state -------------------------------------------------------------------------------
    def _init(self, codes: Codes) -> None:
        if self.window_keys is not None:
            return
        dev, dt, n = codes.device, state_dtype(codes), self.n
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
                 "pairs_after_prune": torch.tensor(self.pairs_after_prune),
                 "last_growth": torch.tensor(self.last_growth)}
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
        self.last_growth = int(state.get("last_growth", -1))
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
    def step(self, codes: Codes) -> Tensor:
        self._init(codes)
        check_device(self.window_keys, codes, "temporal penalty")
        return self._step_reference(codes) if self.reference else self._step_specified(codes)

    def _stores(self) -> _Rebuild:
        avg = (self.avg_keys, self.avg_vals) if self.reference else (
            self.avg_keys, self.avg_vals, self.avg_freq, self.avg_stamp)
        return _Rebuild(window=(self.window_keys, self.window_counts), avg=avg)

    def _finish(self, stores: _Rebuild, stats: _StepStats, loss: Tensor, count: int, closes: int,
                pruned: bool = False) -> None:
        size_before = self.avg_keys.numel()
        self.window_keys, self.window_counts = stores.finish("window")
        if self.reference:
            self.avg_keys, self.avg_vals = stores.finish("avg")
        else:
            self.avg_keys, self.avg_vals, self.avg_freq, self.avg_stamp = stores.finish("avg")
        self.count = count
        self.windows_closed += closes
        self.last = stats.values(loss)
        if pruned:
            self.pairs_after_prune = self.avg_keys.numel()
        else:
            self.last_growth = max(self.avg_keys.numel() - size_before, 0)
        if closes and (self._over_cap() or (self.reference and self._store_doubled())):
            self._keep(self.avg_vals.max(dim=1).values if self.reference else self._stored_avg_now())

    # specified ---------------------------------------------------------------------------------
    def _rate(self, freq: Tensor) -> Tensor:
        return torch.clamp(freq.to(self.avg_vals.dtype) / self.cfg.freq_divisor, max=self.cfg.alpha_base)

    def _decay(self, vals: Tensor, freq: Tensor, stamp: Tensor, now: int) -> Tensor:
        """History last updated before window `stamp`, seen at window index `now`: each window
        the pair missed multiplied it by (1 - a) (the lazy decay)."""
        return vals * (1 - self._rate(freq)) ** (now - stamp).to(vals.dtype)

    def _decayed(self, avg: tuple[Tensor, ...], keys: Tensor, now: int) -> Tensor:
        """History of `keys` at window index `now` from a store slice (keys, vals, freq, stamp);
        0 for untracked pairs."""
        avg_keys, vals, freq, stamp = avg
        if avg_keys.numel() == 0:
            return torch.zeros(keys.shape, dtype=vals.dtype, device=keys.device)
        pos, found = lookup(avg_keys, keys)
        got = self._decay(vals[pos], freq[pos], stamp[pos], now)
        return torch.where(found, got, torch.zeros_like(got))

    def _stored_avg_now(self) -> Tensor:
        """The history of every stored pair at the current window index."""
        return self._decay(self.avg_vals, self.avg_freq, self.avg_stamp, self.windows_closed)

    def _step_specified(self, codes: Codes) -> Tensor:
        cfg, B = self.cfg, codes.batch_size
        ends, closes, start, filled = [], [], 0, self.count
        while start < B:  # split the batch where windows close
            take = min(B - start, cfg.window_size - filled)
            start, filled = start + take, (filled + take) % cfg.window_size
            ends.append(start)
            closes.append(filled == 0)
        t0, seen = self.windows_closed, self.count + B
        prune = any(closes) and self._doubles_this_step(codes)  # every stored pair passes a close this step
        stores, stats = self._stores(), _StepStats()
        divisor = scale_divisor(cfg.normalize or "latent", self.n)

        def advance(window: tuple[Tensor, Tensor], avg: tuple[Tensor, ...], segments: list[tuple[Tensor, Tensor]]) -> None:
            """Bring taken store slices through this step: add each segment to the window, close
            it into the history where a window ends; put the results back."""
            w_keys, w_counts = window
            closed = []
            for (seg_keys, seg_counts), close in zip(segments, closes):
                w_keys, w_counts = merge_sorted_add(w_keys, w_counts, seg_keys, seg_counts)
                if close:
                    closed.append((w_keys, w_counts))
                    w_keys, w_counts = w_keys[:0], w_counts[:0]
            stores.put("window", w_keys, w_counts)
            stores.put("avg", *(self._close_specified(avg, closed, t0, prune) if closed else avg))

        def weigh(chunk: PairChunk) -> tuple[Tensor, Tensor]:
            # weighed with the open window and history before this step, then brought through it
            (w_keys, w_counts), history = stores.take("window", chunk.hi), stores.take("avg", chunk.hi)
            cur = (gather_or(w_counts, w_keys, chunk.keys) + chunk.counts).to(self.avg_vals.dtype) / seen
            avg = self._decayed(history, chunk.keys, t0)
            weights = _stability_weights(cur, avg, None)
            stats.add((cur - avg).abs(), weights, cur)
            advance((w_keys, w_counts), history, chunk.segments)
            weights = weights.to(chunk.gram.dtype)
            return 2 * (weights * chunk.gram.abs()).sum() / divisor, 2 * weights * chunk.gram.sign() / divisor

        loss = pair_loss(codes, weigh, cfg.chunk_elements, boundaries=ends)
        with torch.no_grad():
            empty = self.window_keys[:0], self.window_counts[:0]
            if any(closes):  # pairs absent from the batch still close their windows
                advance(stores.take("window", None), stores.take("avg", None), [empty] * len(closes))
            self._finish(stores, stats, loss, filled, sum(closes), pruned=prune)
        return loss

    def _close_specified(self, avg: tuple[Tensor, ...], closed: list[tuple[Tensor, Tensor]], t0: int,
                         prune: bool) -> tuple[Tensor, ...]:
        """A store slice after the windows closed in this step (the first one is window t0),
        applied in order: the closed windows' keys join the slice by one sorted merge (no
        re-sort of the store). With prune, pairs whose history after the last close is at most
        prune_below leave in the same pass (no separate whole-store pass)."""
        avg_keys, avg_vals, avg_freq, avg_stamp = avg
        if len(closed) == 1:
            union, in_union = closed[0][0], None
        else:
            union, in_union = torch.unique(torch.cat([k for k, _ in closed]), sorted=True, return_inverse=True)
        keys, at_old, at_union = merge_sorted(avg_keys, union)
        offset = 0
        vals = avg_vals.new_zeros(keys.numel())
        freq = torch.zeros(keys.numel(), dtype=torch.int32, device=keys.device)
        stamp = torch.full((keys.numel(),), t0, dtype=torch.int32, device=keys.device)
        vals[at_old], freq[at_old], stamp[at_old] = avg_vals, avg_freq, avg_stamp
        for t, (window_keys, window_counts) in enumerate(closed, start=t0):
            pos = at_union if in_union is None else at_union[in_union[offset:offset + window_keys.numel()]]
            offset += window_keys.numel()
            history = self._decay(vals[pos], freq[pos], stamp[pos], t)
            new_freq = freq[pos].long() + window_counts
            a = self._rate(new_freq)
            vals[pos] = (1 - a) * history + a * (window_counts.to(vals.dtype) / self.cfg.window_size)
            freq[pos] = new_freq.clamp(max=self.freq_cap).to(torch.int32)
            stamp[pos] = t + 1
        if prune:
            current = self._decay(vals, freq, stamp, t0 + len(closed))
            keep = (current > self.prune_below).nonzero().squeeze(1)
            keys, vals, freq, stamp = (x.index_select(0, keep) for x in (keys, vals, freq, stamp))
        return keys, vals, freq, stamp

    # reference ---------------------------------------------------------------------------------
    def _step_reference(self, codes: Codes) -> Tensor:
        cfg, n, B = self.cfg, self.n, codes.batch_size
        seen = self.count + B
        window_diag = self.window_diag + codes.firing_per_latent()
        close = seen >= cfg.window_size
        rate = None
        if close:  # one rate per row, from the closing window's diagonal
            C_diag = window_diag.to(self.avg_vals.dtype) / seen
            rate = torch.clamp(C_diag / cfg.freq_divisor, max=cfg.alpha_base)
            self.avg_diag = (1 - rate) * self.avg_diag + rate * C_diag
            window_diag = torch.zeros_like(window_diag)
        count = 0 if close else seen
        stores, stats = self._stores(), _StepStats()

        def advance(hi: Optional[int], keys: Tensor, counts: Tensor) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
            """The stores' keys below hi after this step (window += batch; close if full)."""
            (w_keys, w_counts), (a_keys, a_vals) = stores.take("window", hi), stores.take("avg", hi)
            w_keys, w_counts = merge_sorted_add(w_keys, w_counts, keys, counts)
            if close:
                i, j = split_keys(a_keys, n)
                decayed = a_vals * torch.stack([1 - rate[i], 1 - rate[j]], dim=1)
                C = w_counts.to(a_vals.dtype) / seen
                wi, wj = split_keys(w_keys, n)
                a_keys, a_vals = merge_sorted_add(a_keys, decayed, w_keys, torch.stack([rate[wi] * C, rate[wj] * C], dim=1))
                w_keys, w_counts = w_keys[:0], w_counts[:0]
            stores.put("window", w_keys, w_counts)
            stores.put("avg", a_keys, a_vals)
            return (w_keys, w_counts), (a_keys, a_vals)

        def weigh(chunk: PairChunk) -> tuple[Tensor, Tensor]:
            # the reference weighs with the state after this step's update
            (w_keys, w_counts), (a_keys, a_vals) = advance(chunk.hi, chunk.keys, chunk.counts)
            avg = gather_or(a_vals, a_keys, chunk.keys)  # [P, 2]: avg_ij, avg_ji
            cur = avg if count == 0 else (gather_or(w_counts, w_keys, chunk.keys).to(avg.dtype) / count)[:, None].expand_as(avg)
            pair_weights = _stability_weights(cur, avg, STABILITY_EPS)
            stats.add((cur - avg).abs(), pair_weights, cur)
            weights = pair_weights.sum(1).to(chunk.gram.dtype)
            return (weights * chunk.gram ** 2).sum() / (n * n), 2 * weights * chunk.gram / (n * n)

        pair_part = pair_loss(codes, weigh, cfg.chunk_elements)
        with torch.no_grad():
            empty = self.window_keys[:0]
            if close:  # the history of pairs absent from the batch decays too
                advance(None, empty, self.window_counts[:0])
            cur_diag = self.avg_diag if count == 0 else window_diag.to(self.avg_diag.dtype) / count
            weights_diag = _stability_weights(cur_diag, self.avg_diag, STABILITY_EPS)
        diag = diagonal_gram(codes)
        loss = pair_part + (weights_diag.to(diag.dtype) * diag ** 2).sum() / (n * n)
        with torch.no_grad():
            self.window_diag = window_diag
            self._finish(stores, stats, loss, count, int(close))
        return loss


    # pruning -----------------------------------------------------------------------------------
    def _store_doubled(self) -> bool:
        return self.avg_keys.numel() >= max(2 * self.pairs_after_prune, MIN_PAIRS_BEFORE_PRUNE)

    def _doubles_this_step(self, codes: Codes) -> bool:
        """Whether the store will have doubled by the end of this step, predicted from the last
        step's growth (before any: the batch's entry pairs, a bound): the specified mode prunes
        inside the step, before the final size is known, and must not lag a step behind (at
        n = 65536, k = 160 that costs ~1 GB of peak memory)."""
        growth = self.last_growth
        if growth < 0:
            firing = codes.firing_per_row()
            growth = int((firing * (firing - 1) // 2).sum())
        return self.avg_keys.numel() + growth >= max(2 * self.pairs_after_prune, MIN_PAIRS_BEFORE_PRUNE)

    def _over_cap(self) -> bool:
        return self.cfg.max_pairs is not None and self.avg_keys.numel() > self.cfg.max_pairs

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

    def step(self, codes: Codes) -> Tensor:
        check_device(self.impl.window, codes, "temporal penalty")
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

    def __call__(self, codes: Union[Codes, Tensor]) -> dict[str, Tensor]:
        codes = as_codes(codes, self.cfg.d_sae, "temporal penalty")
        if self.cfg.mode == "reference":  # the reference's one-hot masks: every selected index fires
            codes = codes.with_selected_firing()
        loss = self.backend.step(codes)
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
