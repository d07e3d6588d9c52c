"""Dense n x n implementations of every penalty, written literally from docs/methods.md.

They are the oracles the efficient penalties are tested against, the baseline the benchmarks
compare with, the backend of `temporal` with state="dense" (small n) and of `momentum` for
signed codes (where |N^T N| has no row-sum identity). Memory O(n^2): keep n small.
F [B, n] are the codes, A [B, n] the 0/1 firing masks.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from featsep.penalties.base import Normalize, scale_divisor

MOMENTUM_EPS = 1e-6  # the reference's column-norm epsilon
STABILITY_EPS = 1e-8  # the reference's max(cur, avg) epsilon


def off_diagonal(n: int, like: Tensor) -> Tensor:
    return 1.0 - torch.eye(n, dtype=like.dtype, device=like.device)


def orthogonality_dense(F: Tensor, A: Tensor, normalize: Normalize = "latent") -> Tensor:
    """sum_{i != j} C_ij |D_ij| / scale, C = A^T A / B (co-activation rate), D = F^T F / B."""
    B, n = F.shape
    C = A.T @ A / B
    D = F.T @ F / B
    return (C * D.abs() * off_diagonal(n, F)).sum() / scale_divisor(normalize, n)


def momentum_gram(F: Tensor) -> Tensor:
    """G = |N^T N| with N = F / (column L2 norm over the batch + 1e-6)."""
    N = F / (F.norm(dim=0, keepdim=True) + MOMENTUM_EPS)
    return (N.T @ N).abs()


class MomentumDense:
    """Per-latent momentum competition, literally. Order per step (methods.md): competition ->
    momentum update -> w from the updated momentum -> loss."""

    def __init__(self, n: int, beta: float, tau: float, mode: str, normalize: Normalize = "latent"):
        self.n, self.beta, self.tau, self.mode, self.normalize = n, beta, tau, mode, normalize
        self.m: Optional[Tensor] = None

    def competition_and_loss(self, F: Tensor, w_of_m) -> tuple[Tensor, Tensor]:
        G = momentum_gram(F)
        rowsum = G.sum(1)
        if self.mode == "reference":
            competition = rowsum - 1
        else:
            competition = rowsum - G.diagonal()
        if self.m is None:
            self.m = torch.zeros(self.n, dtype=torch.promote_types(F.dtype, torch.float32), device=F.device)
        self.m = self.beta * self.m + (1 - self.beta) * competition.detach()
        w = w_of_m(self.m).to(F.dtype)
        if self.mode == "reference":
            loss = (w * rowsum).sum()
        else:
            loss = ((w[:, None] + w[None, :]) * G * off_diagonal(self.n, F)).sum() / scale_divisor(self.normalize, self.n)
        return competition.detach(), loss

    def step(self, F: Tensor) -> Tensor:
        return self.competition_and_loss(F, lambda m: torch.where(m > self.tau, 2.0, 1.0))[1]


class TemporalDense:
    """Temporal co-activation stability with dense n x n state (window counts, averages, and in
    the specified mode cumulative pair counts). See featsep/penalties/temporal.py for the
    definitions of both modes; this is their literal form."""

    def __init__(self, n: int, mode: str, window_size: int, alpha_base: float, freq_divisor: float,
                 normalize: Normalize = "latent"):
        self.n, self.mode, self.window_size = n, mode, window_size
        self.alpha_base, self.freq_divisor, self.normalize = alpha_base, freq_divisor, normalize
        self.window: Optional[Tensor] = None
        self.avg: Optional[Tensor] = None
        self.cum: Optional[Tensor] = None
        self.count = 0
        self.windows_closed = 0
        self.last_weights: Optional[Tensor] = None  # W of the last step (n x n)
        self.last_dev: Optional[Tensor] = None  # |cur - avg| of the last step (n x n)

    def _init(self, F: Tensor) -> None:
        if self.window is None:
            dt = torch.promote_types(F.dtype, torch.float32)
            z = torch.zeros(self.n, self.n, dtype=dt, device=F.device)
            self.window, self.avg, self.cum = z.clone(), z.clone(), z.clone()

    def step(self, F: Tensor, A: Tensor) -> Tensor:
        self._init(F)
        A = A.to(self.window.dtype)
        with torch.no_grad():
            W = self._reference_weights(A) if self.mode == "reference" else self._specified_weights(A)
        D = F.T @ F / F.shape[0]
        if self.mode == "reference":
            return (W.to(F.dtype) * D ** 2).mean()
        return (W.to(F.dtype) * D.abs() * off_diagonal(self.n, F)).sum() / scale_divisor(self.normalize, self.n)

    def _weights(self, cur: Tensor, avg: Tensor, eps: Optional[float]) -> Tensor:
        dev = (cur - avg).abs()
        mx = torch.maximum(cur, avg)
        stab = dev / (mx + eps) if eps is not None else torch.where(mx > 0, dev / mx.clamp_min(1e-300), 0.0)
        self.last_dev = dev
        self.last_weights = cur * (1 + stab)
        return self.last_weights

    def _reference_weights(self, A: Tensor) -> Tensor:
        # the reference, line by line: accumulate, close the window once count >= window, weights
        self.window += A.T @ A
        self.count += A.shape[0]
        if self.count >= self.window_size:
            C = self.window / self.count
            freq = C.diagonal()
            a = torch.clamp(freq / self.freq_divisor, max=self.alpha_base)[:, None]
            self.avg = (1 - a) * self.avg + a * C
            self.window.zero_()
            self.count = 0
            self.windows_closed += 1
        cur = self.window / self.count if self.count > 0 else self.avg
        return self._weights(cur, self.avg, STABILITY_EPS)

    def _specified_weights(self, A: Tensor) -> Tensor:
        B = A.shape[0]
        cur = (self.window + A.T @ A) / (self.count + B)
        W = self._weights(cur, self.avg, None)
        start = 0
        while start < B:  # windows of exactly window_size samples: split the batch at boundaries
            take = min(B - start, self.window_size - self.count)
            part = A[start:start + take]
            self.window += part.T @ part
            self.count += take
            start += take
            if self.count == self.window_size:
                self.cum += self.window
                a = torch.clamp(self.cum / self.freq_divisor, max=self.alpha_base)
                self.avg = (1 - a) * self.avg + a * (self.window / self.window_size)
                self.window.zero_()
                self.count = 0
                self.windows_closed += 1
        return W
