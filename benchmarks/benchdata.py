"""Data and scoring shared by benchmarks/lr_sweep.py and benchmarks/peers.py: one synthetic
ground truth, the gemma-3-270m layer-8 cache, a held-out split, and ONE scoring function that
every SAE (featsep's or a peer's, loaded through featsep.load_sae) goes through."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from featsep.evals.synthetic import SyntheticSpec, make_synthetic

# d 256 like the measurements in issue #16; ~2k true features, ~20 active per row (k 32 SAEs)
SYNTHETIC = SyntheticSpec(n_features=2048, d=256, avg_active=20.0, max_firing_prob=0.3, n_parents=32,
                          children_per_parent=3, n_pairs=32, noise_std=0.01)
HELDOUT_ROWS = 16384
GEMMA_CACHE = Path("/work/cache/g270m-l8")  # featsep cache examples/offline-default.toml --tokens 1200000 --out ...


def synthetic_rows(tokens: int, seed: int = 0):
    """(data, train rows [tokens, d], held-out rows [HELDOUT_ROWS, d]) from one generator."""
    data = make_synthetic(SYNTHETIC, seed=seed)
    train, _ = data.sample(tokens, torch.Generator().manual_seed(seed + 1))
    heldout, _ = data.sample(HELDOUT_ROWS, torch.Generator().manual_seed(seed + 2))
    return data, train, heldout


def gemma_rows(tokens: int, cache: Path = GEMMA_CACHE):
    """(None, train rows, held-out rows): the cache's last HELDOUT_ROWS rows are held out, the
    train rows are the first `tokens` of the rest (fewer when the cache is shorter). Scaled so
    mean ||x||^2 = d, as featsep's stream normalises (both trainers read the same rows)."""
    from featsep.data.cache import ActivationCache

    acts, _ = ActivationCache(cache).to_tensor()
    scale = (acts.shape[1] / acts[:65536].pow(2).sum(1).mean()).sqrt()
    acts = acts * scale
    train, heldout = acts[:-HELDOUT_ROWS], acts[-HELDOUT_ROWS:]
    return None, train[:tokens].contiguous(), heldout.contiguous()


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
