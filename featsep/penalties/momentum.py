"""Per-latent momentum competition ("feature momentum SAE"), docs/methods.md section 1.

Per step, with F [B, n] the codes, N = F / (column L2 norm of F over the batch + 1e-6) and
G = |N^T N| (G_ij: the normalised co-activation, i.e. competition, of latents i and j):

  mode="reference"  (the reference code exactly)
      competition_i = rowsum_i(G) - 1
      m <- beta m + (1 - beta) competition;  w = where(m > tau, 2, 1)
      loss = sum_i w_i rowsum_i(G)                     (diagonal included, unnormalised)
  mode="specified"  (the idea: pairs i != j, weights w_i + w_j, normalised scale)
      competition_i = sum_{j != i} G_ij = rowsum_i(G) - G_ii   (0 for a latent silent in the batch)
      m, w as above
      loss = sum_{i != j} (w_i + w_j) G_ij / s,  s = n ("latent", default), n(n-1) ("pair"), 1 ("none")

Order (methods.md): the momentum is updated with this step's competition first, and the
updated momentum's w weighs this step's loss. w and the momentum carry no gradient; the loss is
differentiable through G, column norms included.

Cost: for nonnegative codes G = N^T N, so rowsum(G) = N^T (N 1) and
sum_i w_i rowsum_i(G) = sum_b (N_b . w)(N_b . 1): exact in O(B n) time and O(n) memory, O(B k)
in the TopK form (column norms by index_add over the indices). Signed codes have no such
identity (|N^T N| != N^T N): they use the dense formula (O(n^2) memory, reference.py).
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

import torch
from pydantic import Field, model_validator
from torch import Tensor

from featsep.codes import Codes
from featsep.penalties.base import (Normalize, Penalty, PenaltyConfigBase, as_codes, check_device, register,
                                    scale_divisor, state_dtype)
from featsep.penalties.reference import MOMENTUM_EPS, MomentumDense

HISTOGRAM_BINS = 20
TOP_LATENTS = 10


class MomentumConfig(PenaltyConfigBase):
    weight: float = 0.3
    beta: float = Field(0.95, ge=0.0, lt=1.0, description="momentum rate")
    tau: float = Field(0.4, description="momentum above which a latent's weight is 2")
    mode: Literal["specified", "reference"] = "specified"
    normalize: Optional[Normalize] = Field(
        None, description='loss scale of mode="specified" (None: "latent"); the reference is unnormalised')

    @model_validator(mode="after")
    def _normalize_only_specified(self) -> "MomentumConfig":
        if self.mode == "reference" and self.normalize is not None:
            raise ValueError('normalize only applies to mode="specified"; the reference loss is '
                             'unnormalised: drop normalize or use mode="specified"')
        return self


def _safe_sqrt(x: Tensor) -> Tensor:
    """sqrt with a zero (not infinite) gradient at 0, like torch's norm for dead columns."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def normalised_rowsums(codes: Codes):
    """For nonnegative codes: rowsum(G) [n], diag(G) [n], and w -> sum_i w_i rowsum_i(G),
    all without forming G. Uses the entries when the codes hold a sparse form (the flat form,
    a reshape of the TopK form: O(B k), per-row sums by index_add over the rows, so BatchTopK's
    uneven rows need no padding), else the dense form (O(B n)); unselected entries have value
    0 and add nothing."""
    n = codes.d_sae
    if not (codes.has_topk or codes.has_flat):
        F = codes.dense()
        N = F / (F.norm(dim=0) + MOMENTUM_EPS)
        ones_dot = N.sum(1)
        return N.T @ ones_dot, (N * N).sum(0), lambda w: ((N @ w) * ones_dot).sum()
    e = codes.flat()
    values, rows, cols, batch = e.values, e.rows, e.cols, codes.batch_size
    colnorm = _safe_sqrt(values.new_zeros(n).index_add(0, cols, values * values))
    N = values / (colnorm[cols] + MOMENTUM_EPS)
    ones_dot = values.new_zeros(batch).index_add(0, rows, N)
    rowsum = values.new_zeros(n).index_add(0, cols, N * ones_dot[rows])
    diag = values.new_zeros(n).index_add(0, cols, N * N)
    return rowsum, diag, lambda w: (values.new_zeros(batch).index_add(0, rows, N * w[cols]) * ones_dot).sum()


@register("momentum")
class MomentumPenalty(Penalty):
    config_class = MomentumConfig

    def __init__(self, cfg: MomentumConfig):
        super().__init__(cfg)
        self.momentum: Optional[Tensor] = None
        self.steps = 0
        self._last_competition: Optional[Tensor] = None
        self._last_loss = 0.0

    def _weights(self, m: Tensor) -> Tensor:
        return torch.where(m > self.cfg.tau, 2.0, 1.0).to(m.dtype)

    def __call__(self, codes: Union[Codes, Tensor]) -> dict[str, Tensor]:
        cfg, n = self.cfg, self.cfg.d_sae
        codes = as_codes(codes, n, "momentum penalty")
        check_device(self.momentum, codes, "momentum penalty")
        if self.momentum is None:
            self.momentum = torch.zeros(n, dtype=state_dtype(codes), device=codes.device)
        held = codes.flat().values if codes.has_topk or codes.has_flat else codes.dense()
        if not codes.nonnegative and bool((held.detach() < 0).any()):
            loss = self._signed(codes.dense())
        else:
            rowsum, diag, weighted_rowsum = normalised_rowsums(codes)
            competition = (rowsum - 1 if cfg.mode == "reference" else rowsum - diag).detach()
            with torch.no_grad():
                self.momentum = cfg.beta * self.momentum + (1 - cfg.beta) * competition.to(self.momentum.dtype)
            w = self._weights(self.momentum).to(held.dtype)
            if cfg.mode == "reference":
                loss = weighted_rowsum(w)
            else:
                loss = 2 * (weighted_rowsum(w) - (w * diag).sum()) / scale_divisor(cfg.normalize or "latent", n)
            self._last_competition = competition
        self.steps += 1
        self._last_loss = loss.detach()  # read in stats(): no host sync per step
        return {self.name: loss}

    def _signed(self, F: Tensor) -> Tensor:
        dense = MomentumDense(self.cfg.d_sae, self.cfg.beta, self.cfg.tau, self.cfg.mode, self.cfg.normalize or "latent")
        dense.m = self.momentum
        self._last_competition, loss = dense.competition_and_loss(F, self._weights)
        self.momentum = dense.m
        return loss

    def stats(self) -> dict[str, Any]:
        if self.momentum is None:
            return {"steps": 0}
        m = self.momentum.detach().float().cpu()
        lo, hi = float(m.min()), float(m.max())
        counts = torch.histc(m, bins=HISTOGRAM_BINS, min=lo, max=hi if hi > lo else lo + 1)
        top = torch.topk(m, min(TOP_LATENTS, m.numel()))
        comp = self._last_competition
        return {
            "steps": self.steps,
            "loss": float(self._last_loss),
            "share_over_tau": float((m > self.cfg.tau).float().mean()),
            "momentum_mean": float(m.mean()),
            "momentum_max": hi,
            "competition_mean": float(comp.float().mean()) if comp is not None else 0.0,
            "momentum_histogram": {"counts": counts.tolist(), "min": lo, "max": hi},
            "top_competing_latents": top.indices.tolist(),
            "top_competing_momentum": top.values.tolist(),
        }

    def state_dict(self) -> dict[str, Any]:
        state = {"steps": torch.tensor(self.steps)}
        if self.momentum is not None:
            state["momentum"] = self.momentum.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        m = state.get("momentum")
        if m is not None and m.shape != (self.cfg.d_sae,):
            raise ValueError(f"momentum penalty state has {tuple(m.shape)} latents but d_sae={self.cfg.d_sae}; "
                             f"load the checkpoint into a penalty built for the same SAE")
        self.momentum = None if m is None else m.clone()
        self.steps = int(state.get("steps", 0))

    def to(self, device: torch.device | str) -> "MomentumPenalty":
        if self.momentum is not None:
            self.momentum = self.momentum.to(device)
        return self
