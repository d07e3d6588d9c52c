"""Data and scoring shared by benchmarks/lr_sweep.py and benchmarks/peers.py: one synthetic
ground truth, the gemma-3-270m layer-8 cache, a held-out split, and ONE scoring function that
every SAE (featsep's or a peer's, loaded through featsep.load_sae) goes through."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from featsep.evals.synthetic import SyntheticSpec, make_synthetic

# d 256 like the measurements in issue #16; ~2k true features, ~20 active per row (k 32 SAEs)
SYNTHETIC = SyntheticSpec(n_features=2048, d=256, avg_active=20.0, max_firing_prob=0.3, n_parents=32,
                          children_per_parent=3, n_pairs=32, noise_std=0.01)
HELDOUT_ROWS = 16384
# featsep cache examples/offline-default.toml --tokens 1200000 --out /work/cache/g270m-l8, stopped
# after its first full shard (262,144 rows) on a CPU too busy to finish: the shards are read directly
GEMMA_CACHE = Path("/work/cache/g270m-l8")


def synthetic_rows(tokens: int, seed: int = 0):
    """(data, train rows [tokens, d], held-out rows [HELDOUT_ROWS, d]) from one generator."""
    data = make_synthetic(SYNTHETIC, seed=seed)
    train, _ = data.sample(tokens, torch.Generator().manual_seed(seed + 1))
    heldout, _ = data.sample(HELDOUT_ROWS, torch.Generator().manual_seed(seed + 2))
    return data, train, heldout


def gemma_rows(tokens: int, cache: Path = GEMMA_CACHE):
    """(None, train rows, held-out rows) from the cache's full shards (already normalised to
    mean ||x||^2 = d by the cache): the last HELDOUT_ROWS rows are held out; the rest repeat
    (epochs, in the same order) up to `tokens` train rows."""
    shards = sorted(p for p in cache.glob("shard_*.npy") if not p.name.endswith(".index.npy"))
    if not shards:
        raise FileNotFoundError(f"no shard_*.npy in {cache}")
    acts = torch.cat([torch.from_numpy(np.load(p, allow_pickle=False)) for p in shards]).float()
    train, heldout = acts[:-HELDOUT_ROWS], acts[-HELDOUT_ROWS:]
    epochs = -(-tokens // len(train))
    return None, train.repeat(epochs, 1)[:tokens].contiguous(), heldout.contiguous()


@torch.no_grad()
def score(sae, heldout: torch.Tensor, data: Optional[Any] = None, batch: int = 4096) -> dict[str, float]:
    """FVU on the held-out rows (residual over total variance), dead fraction (latents never
    active on them), L0; with synthetic `data`, true-feature recovery: mean over true features
    of the best cosine to a decoder row and the fraction with best cosine >= 0.9."""
    sae = sae.cpu().float().eval()
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    residual, l0 = 0.0, 0.0
    for chunk in heldout.split(batch):
        codes = sae.encode(chunk)
        residual += float((chunk - sae.decode(codes)).pow(2).sum())
        on = codes != 0
        fired |= on.any(0)
        l0 += float(on.sum())
    variance = float((heldout - heldout.mean(0)).pow(2).sum())
    out = {"fvu": residual / variance, "dead": float(1 - fired.float().mean()), "l0": l0 / len(heldout)}
    if data is not None:
        W = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        best = (data.features @ W.T).max(dim=1).values
        out["mean_best_cos"] = float(best.mean())
        out["recovered_0.9"] = float((best >= 0.9).float().mean())
    return out
