"""Data and scoring shared by benchmarks/lr_sweep.py and benchmarks/peers.py: one synthetic
ground truth, the gemma-3-270m layer-8 cache, a held-out split, and ONE scoring function that
every SAE (featsep's or a peer's, loaded through featsep.load_sae) goes through."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch

from featsep.evals.synthetic import SyntheticSpec, make_synthetic

# d 256 like the measurements in issue #16; ~2k true features, ~20 active per row (k 32 SAEs)
SYNTHETIC = SyntheticSpec(n_features=2048, d=256, avg_active=20.0, max_firing_prob=0.3, n_parents=32,
                          children_per_parent=3, n_pairs=32, noise_std=0.01)
HELDOUT_ROWS = 16384
# Dead = never fires on this many held-out rows (SAEBench counts alive latents over ~4M eval
# tokens). 16,384 rows are too few: a latent that fires once in 20k tokens, as the latents of
# the synthetic data's rare features do, would count as dead (docs/lr-sweep.md).
DENSITY_ROWS = 1_048_576
# In the checkout (FEATSEP_BENCH_GEMMA_CACHE points elsewhere), built with all of bbc-news
# (1,093,811 tokens): featsep cache examples/offline-default.toml --tokens 1100000 --out cache/g270m-l8
GEMMA_CACHE = Path(os.environ.get("FEATSEP_BENCH_GEMMA_CACHE", Path(__file__).resolve().parents[1] / "cache" / "g270m-l8"))


def synthetic_rows(tokens: int, seed: int = 0):
    """(data, train rows [tokens, d], held-out rows [HELDOUT_ROWS, d]) from one generator."""
    data = make_synthetic(SYNTHETIC, seed=seed)
    train, _ = data.sample(tokens, torch.Generator().manual_seed(seed + 1))
    heldout, _ = data.sample(HELDOUT_ROWS, torch.Generator().manual_seed(seed + 2))
    return data, train, heldout


def synthetic_density(data, rows: int = DENSITY_ROWS, seed: int = 3, chunk: int = 65536):
    """Held-out rows for the dead count, generated in chunks (1M x 256 floats would be 1 GB)."""
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, rows, chunk):
        yield data.sample(min(chunk, rows - start), gen)[0]


def gemma_rows(tokens: int, cache: Path = GEMMA_CACHE):
    """(None, train rows, held-out rows, density rows) from the cache's shards (already
    normalised to mean ||x||^2 = d by the cache): the first `tokens` rows train; the rest are
    held out (density rows: all of them, at most DENSITY_ROWS; FVU rows: their last
    HELDOUT_ROWS). A cache too small for that is an error naming the size to build."""
    shards = sorted(p for p in cache.glob("shard_*.npy") if not p.name.endswith(".index.npy"))
    if not shards:
        raise FileNotFoundError(f"no shard_*.npy in {cache}")
    acts = torch.cat([torch.from_numpy(np.load(p, allow_pickle=False)) for p in shards]).float()
    if len(acts) < tokens + 4 * HELDOUT_ROWS:
        raise ValueError(f"{cache} holds {len(acts):,} rows; build it with --tokens {tokens + 25 * HELDOUT_ROWS}")
    density = acts[tokens:tokens + DENSITY_ROWS]
    return None, acts[:tokens].contiguous(), density[-HELDOUT_ROWS:].contiguous(), density.split(65536)


@torch.no_grad()
def score(sae, heldout: torch.Tensor, data: Optional[Any] = None, density: Optional[Iterable[torch.Tensor]] = None,
          batch: int = 4096) -> dict[str, float]:
    """FVU on the held-out rows (residual over total variance) and L0; dead fraction: latents
    never active on the `density` rows (chunks; default: synthetic_density(data) for synthetic
    data, else the held-out rows); with synthetic `data`, true-feature recovery: mean over true
    features of the best cosine to a decoder row and the fraction with best cosine >= 0.9."""
    sae = sae.cpu().float().eval()
    residual, l0 = 0.0, 0.0
    for chunk in heldout.split(batch):
        codes = sae.encode(chunk)
        residual += float((chunk - sae.decode(codes)).pow(2).sum())
        l0 += float((codes != 0).sum())
    if density is None:
        density = synthetic_density(data) if data is not None else heldout.split(batch)
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    for rows in density:
        for chunk in rows.split(batch):
            fired |= (sae.encode(chunk) != 0).any(0)
    variance = float((heldout - heldout.mean(0)).pow(2).sum())
    out = {"fvu": residual / variance, "dead": float(1 - fired.float().mean()), "l0": l0 / len(heldout)}
    if data is not None:
        W = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        best = (data.features @ W.T).max(dim=1).values
        out["mean_best_cos"] = float(best.mean())
        out["recovered_0.9"] = float((best >= 0.9).float().mean())
    return out
