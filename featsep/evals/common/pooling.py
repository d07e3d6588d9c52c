"""Pooled text activations (SAEBench's probing pipeline), shared by sparse probing and TPP.

`s` is any eval's settings with llm_batch_size and context_length (dataset_activations also:
seed, text_column, label_column, local_copies).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from tqdm.auto import tqdm

from featsep.data.probing import LOADERS_VERSION, load_probing_dataset
from featsep.evals.common.context import EvalContext, encode, not_special


# ---- activations ---------------------------------------------------------------------------------


@torch.no_grad()
def kept_positions(ctx: EvalContext, texts: list[str], s) -> dict[str, Tensor]:
    """Activations at the non-special positions of every text, packed: rows [n_kept, d] (the
    model's dtype) and lengths [n_texts]. Positions whose activation sums to 0 are dropped too,
    as SAEBench's pooling ignores them."""
    rows, lengths = [], []
    for start in range(0, len(texts), s.llm_batch_size):
        ids, mask = ctx.lm.tokenize(texts[start : start + s.llm_batch_size], max_length=s.context_length)
        acts = ctx.lm.forward_to_hook(ids, mask, ctx.hook).cpu()
        keep = mask.bool() & not_special(ctx.lm, ids)
        keep &= acts.float().sum(-1) != 0
        rows.append(acts[keep])
        lengths.append(keep.sum(1))
    return {"rows": torch.cat(rows), "lengths": torch.cat(lengths)}


def segment_mean(rows: Tensor, lengths: Tensor) -> Tensor:
    """[n_texts, d]: the mean of each text's rows (zero for a text with no kept position)."""
    seg = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    sums = torch.zeros(len(lengths), rows.shape[1], dtype=torch.float32).index_add_(0, seg, rows.float())
    return sums / lengths.clamp(min=1)[:, None].float()


@torch.no_grad()
def sae_pooled(sae, packed: dict[str, Tensor], batch_size_rows: int = 4096) -> Tensor:
    codes = torch.cat(
        [encode(sae, packed["rows"][i : i + batch_size_rows].float()).float().cpu()
         for i in range(0, packed["rows"].shape[0], batch_size_rows)]
    )
    return segment_mean(codes, packed["lengths"])


def dataset_activations(ctx: EvalContext, name: str, s, n_train: int, n_test: int) -> dict:
    """{"classes": [...], "train"/"test": {class: packed activations}} of a labelled dataset, cached
    per dataset under sparse probing's key (TPP reads the same entries)."""
    key = {
        "dataset": name, "n_train": n_train, "n_test": n_test, "seed": s.seed, "context_length": s.context_length,
        "text_column": s.text_column, "label_column": s.label_column, "local_copies": s.local_copies,
        "loaders_version": LOADERS_VERSION,
    }

    def compute():
        ds = load_probing_dataset(name, n_train, n_test, s.seed, s.text_column, s.label_column, s.local_copies)
        out = {"classes": ds.classes, "train": {}, "test": {}}
        for split in ("train", "test"):
            for cls in tqdm(ds.classes, desc=f"sparse_probing: {name} {split}", disable=not ctx.verbose):
                out[split][cls] = kept_positions(ctx, getattr(ds, split)[cls], s)
        return out

    return ctx.cached("sparse_probing_acts", key, compute, memory=False)


# ---- balancing -----------------------------------------------------------------------------------


def balanced_indices(counts: dict[str, int], positive: str, gen: torch.Generator) -> tuple[list[tuple[str, int]], Tensor]:
    """SAEBench's one-vs-rest set: all positives; ceil(n_pos / (C - 1)) random rows of every other
    class, of which n_pos are kept; shuffled. Returns ([(class, index)], labels)."""
    n_pos = counts[positive]
    others = [c for c in counts if c != positive]
    per_class = math.ceil(n_pos / len(others))
    negatives = []
    for c in others:
        negatives += [(c, int(i)) for i in torch.randperm(counts[c], generator=gen)[:per_class]]
    negatives = [negatives[int(i)] for i in torch.randperm(len(negatives), generator=gen)[:n_pos]]
    items = [(positive, i) for i in range(n_pos)] + negatives
    labels = torch.tensor([1] * n_pos + [0] * len(negatives))
    order = torch.randperm(len(items), generator=gen)
    return [items[int(i)] for i in order], labels[order]


def gather(features: dict[str, Tensor], items: list[tuple[str, int]]) -> Tensor:
    return torch.stack([features[c][i] for c, i in items])
