"""Synthetic ground truth: activations built from known feature directions, so an SAE's
dictionary can be scored against the truth (recovery, absorption) in seconds on a CPU.

The generative model (all draws from one seeded torch.Generator):
- `n_features` unit directions in R^d (random, or orthonormal when `orthogonal`).
- Each feature fires independently with a power-law probability: the feature of frequency
  rank r (1-based, ranks shuffled over features) fires with p_r = min(c * r^-exponent,
  max_firing_prob), c chosen so that sum_r p_r = avg_active.
- Co-occurring pairs (a, b): when a fires, b also fires with probability `pair_prob`.
- Hierarchy: each parent has `children_per_parent` children and fires whenever any of them
  fires (besides its own firings). Since a child's direction always comes with its parent's,
  an SAE can cut a latent by folding the parent into the child's latent: feature absorption.
- Each active feature gets a magnitude uniform in `magnitude_range`; x = sum magnitude *
  direction + Gaussian noise of std `noise_std` per coordinate.
Roles (parent, child, pair member) never overlap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor


class SyntheticSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_features: int = Field(128, gt=0)
    d: int = Field(32, gt=0, description="activation dimension")
    avg_active: float = Field(4.0, gt=0, description="expected independent firings per sample")
    power_law_exponent: float = Field(1.0, ge=0)
    max_firing_prob: float = Field(0.5, gt=0, le=1)
    magnitude_range: tuple[float, float] = (0.5, 1.5)
    n_parents: int = Field(4, ge=0)
    children_per_parent: int = Field(3, ge=1)
    n_pairs: int = Field(4, ge=0, description="co-occurring pairs")
    pair_prob: float = Field(0.8, ge=0, le=1, description="P(b fires extra | a fires)")
    noise_std: float = Field(0.01, ge=0)
    orthogonal: bool = Field(False, description="orthonormal features (needs n_features <= d)")

    @model_validator(mode="after")
    def _fits(self) -> "SyntheticSpec":
        roles = self.n_parents * (1 + self.children_per_parent) + 2 * self.n_pairs
        if roles > self.n_features:
            raise ValueError(f"{self.n_parents} parents with {self.children_per_parent} children each and "
                             f"{self.n_pairs} pairs need {roles} features but n_features={self.n_features}")
        if self.orthogonal and self.n_features > self.d:
            raise ValueError(f"orthogonal features need n_features <= d (got {self.n_features} > {self.d})")
        if self.avg_active > self.max_firing_prob * self.n_features:
            raise ValueError(f"avg_active={self.avg_active} is unreachable with max_firing_prob="
                             f"{self.max_firing_prob} over {self.n_features} features")
        lo, hi = self.magnitude_range
        if not 0 < lo <= hi:
            raise ValueError(f"magnitude_range must satisfy 0 < low <= high, got {self.magnitude_range}")
        return self


def _power_law_probs(n: int, exponent: float, total: float, cap: float) -> Tensor:
    """p_r = min(c r^-exponent, cap) for r = 1..n with sum p = total (bisection on c)."""
    shape = torch.arange(1, n + 1, dtype=torch.float64).pow(-exponent)
    lo, hi = 0.0, cap / float(shape[-1])  # at hi every p hits the cap
    for _ in range(100):
        c = (lo + hi) / 2
        lo, hi = (c, hi) if float((c * shape).clamp(max=cap).sum()) < total else (lo, c)
    return ((lo + hi) / 2 * shape).clamp(max=cap)


@dataclass
class SyntheticData:
    """A sampled generative model. features [n_features, d] (unit rows); base_probs
    [n_features] independent firing probabilities; parents[i] has children[i]; pairs (a, b)."""

    spec: SyntheticSpec
    features: Tensor
    base_probs: Tensor
    parents: list[int]
    children: list[list[int]]
    pairs: list[tuple[int, int]]

    @property
    def parent_child_pairs(self) -> list[tuple[int, int]]:
        return [(p, c) for p, kids in zip(self.parents, self.children) for c in kids]

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
        """n samples: x [n, d] float32 and which features are active [n, n_features] bool."""
        spec = self.spec
        active = torch.rand(n, spec.n_features, generator=generator, dtype=torch.float64) < self.base_probs
        if self.pairs:
            a, b = (torch.tensor(ix) for ix in zip(*self.pairs))
            extra = active[:, a] & (torch.rand(n, len(self.pairs), generator=generator) < spec.pair_prob)
            active[:, b] |= extra
        if self.parents:
            active[:, torch.tensor(self.parents)] |= active[:, torch.tensor(self.children)].any(dim=-1)
        lo, hi = spec.magnitude_range
        magnitudes = lo + (hi - lo) * torch.rand(n, spec.n_features, generator=generator)
        x = (magnitudes * active) @ self.features
        x += spec.noise_std * torch.randn(n, spec.d, generator=generator)
        return x, active

    def expected_frequencies(self) -> Tensor:
        """Exact marginal firing probability of every feature under the generative model."""
        p = self.base_probs.clone()
        for a, b in self.pairs:
            p[b] = 1 - (1 - self.base_probs[b]) * (1 - self.base_probs[a] * self.spec.pair_prob)
        for parent, kids in zip(self.parents, self.children):
            p[parent] = 1 - (1 - self.base_probs[parent]) * torch.prod(1 - self.base_probs[kids])
        return p

    def batches(self, batch_size: int, n_batches: int, seed: int = 0) -> "SyntheticBatches":
        return SyntheticBatches(self, batch_size, n_batches, seed)


class SyntheticBatches:
    """A finite, re-iterable stream of x batches; batch i depends only on (seed, i), and
    state_dict()/load_state_dict() let a resumed training run continue where it stopped."""

    def __init__(self, data: SyntheticData, batch_size: int, n_batches: int, seed: int = 0):
        self.data, self.batch_size, self.n_batches, self.seed = data, batch_size, n_batches, seed
        self.position = 0  # batches handed out by the current iteration
        self._start = 0

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[Tensor]:
        start, self._start = self._start, 0  # a loaded state applies to the next iteration only
        for i in range(start, self.n_batches):
            self.position = i + 1
            yield self.data.sample(self.batch_size, torch.Generator().manual_seed((self.seed << 32) + i))[0]

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = self._start = int(state["position"])


def make_synthetic(spec: Optional[SyntheticSpec] = None, seed: int = 0) -> SyntheticData:
    spec = spec or SyntheticSpec()
    gen = torch.Generator().manual_seed(seed)
    n, d = spec.n_features, spec.d
    if spec.orthogonal:
        q, _ = torch.linalg.qr(torch.randn(d, n, generator=gen, dtype=torch.float64))
        features = q.T.float()
    else:
        features = torch.randn(n, d, generator=gen)
        features = features / features.norm(dim=1, keepdim=True)
    rank_of = torch.randperm(n, generator=gen)  # feature i has frequency rank rank_of[i]
    base_probs = _power_law_probs(n, spec.power_law_exponent, spec.avg_active, spec.max_firing_prob)[rank_of]
    order = torch.randperm(n, generator=gen).tolist()
    n_kids = spec.n_parents * spec.children_per_parent
    parents = order[: spec.n_parents]
    kids = order[spec.n_parents : spec.n_parents + n_kids]
    children = [kids[i * spec.children_per_parent : (i + 1) * spec.children_per_parent] for i in range(spec.n_parents)]
    rest = order[spec.n_parents + n_kids : spec.n_parents + n_kids + 2 * spec.n_pairs]
    pairs = [(rest[2 * i], rest[2 * i + 1]) for i in range(spec.n_pairs)]
    return SyntheticData(spec, features, base_probs, parents, children, pairs)


@torch.no_grad()
def synthetic_metrics(
    sae: Any,
    data: SyntheticData,
    n_samples: int = 8192,
    seed: int = 0,
    recovery_threshold: float = 0.9,
    absorption_threshold: float = 0.3,
    batch_size: int = 2048,
) -> dict[str, Any]:
    """Score an SAE (anything with encode(), decode() and W_dec [d_sae, d]) against the truth.

    mean_max_cos: mean over true features of the best cosine to a decoder row.
    fraction_recovered: share of true features whose best cosine exceeds recovery_threshold.
    decoder_mean_max_cos: mean over decoder rows of the best cosine to a true feature.
    absorption_rate: mean over (parent, child) pairs of the fraction of samples where the child
        fires (hence the parent does) and the parent's best-matching latent is silent while the
        child's best-matching latent is active and its decoder row has cosine above
        absorption_threshold with the parent direction: the child's latent took over the parent.
        absorption_per_pair follows data.parent_child_pairs (None: the child never fired in the
        sample; such pairs are left out of the mean).
    parent_recall: mean over the same pairs and samples of "the parent's latent is active".
    l0, dead_fraction (latents never active on the sample), fvu (residual variance / variance).
    """
    device = sae.W_dec.device
    W = sae.W_dec.detach().float().cpu()
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = data.features @ W.T  # [n_features, d_sae]
    best_cos, best = cos.max(dim=1)

    x, active = data.sample(n_samples, torch.Generator().manual_seed(seed))
    was_training = getattr(sae, "training", False)
    if hasattr(sae, "eval"):
        sae.eval()
    fired = torch.zeros(W.shape[0], dtype=torch.bool)
    codes_parts, l0_sum, residual, variance = [], 0.0, 0.0, float((x - x.mean(0)).pow(2).sum())
    pair_latents = sorted({int(best[i]) for pair in data.parent_child_pairs for i in pair})
    for chunk in x.split(batch_size):
        xc = chunk.to(device=device, dtype=sae.W_dec.dtype)
        codes = sae.encode(xc)
        x_hat = sae.decode(codes).float().cpu()
        on = (codes != 0).cpu()
        fired |= on.any(dim=0)
        l0_sum += float(on.sum())
        residual += float((chunk - x_hat).pow(2).sum())
        codes_parts.append(on[:, pair_latents])
    if was_training and hasattr(sae, "train"):
        sae.train()
    on_pairs = torch.cat(codes_parts) if codes_parts else torch.zeros(n_samples, 0, dtype=torch.bool)
    column = {latent: j for j, latent in enumerate(pair_latents)}

    per_pair, recall = [], []
    for parent, child in data.parent_child_pairs:
        rows = active[:, child]
        if not rows.any():
            per_pair.append(None)
            continue
        lp, lc = int(best[parent]), int(best[child])
        parent_on = on_pairs[rows, column[lp]]
        child_on = on_pairs[rows, column[lc]]
        absorbs = lp != lc and float(cos[parent, lc]) > absorption_threshold
        per_pair.append(float((~parent_on & child_on).float().mean()) if absorbs else 0.0)
        recall.append(float(parent_on.float().mean()))

    def mean(values: list) -> float:
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else float("nan")

    return {
        "mean_max_cos": float(best_cos.mean()),
        "fraction_recovered": float((best_cos > recovery_threshold).float().mean()),
        "decoder_mean_max_cos": float(cos.max(dim=0).values.mean()),
        "absorption_rate": mean(per_pair),
        "absorption_per_pair": per_pair,
        "parent_recall": mean(recall),
        "l0": l0_sum / n_samples,
        "true_l0": float(active.sum()) / n_samples,
        "dead_fraction": float(1 - fired.float().mean()),
        "fvu": residual / max(variance, 1e-12),
        "n_samples": n_samples,
        "recovery_threshold": recovery_threshold,
        "absorption_threshold": absorption_threshold,
    }
