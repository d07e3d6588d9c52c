"""featsep.evals.common: SAEBench's class balancing, top-k dimensions and pooling."""

from __future__ import annotations


import torch

from featsep.evals.common.context import EvalContext
from featsep.evals.common.probes import top_k_dims
from featsep.evals.common.pooling import balanced_indices, kept_positions, segment_mean
from featsep.evals.sparse_probing import SparseProbingSettings
from tests.evals.helpers import HOOK


# ---- sparse probing ------------------------------------------------------------------------------


def test_balancing_follows_saebench():
    gen = torch.Generator().manual_seed(0)
    items, labels = balanced_indices({"a": 10, "b": 6, "c": 4}, "a", gen)
    negatives = [it for it, y in zip(items, labels) if y == 0]
    assert labels.sum().item() == 10 and len(negatives) == 9  # ceil(10/2)=5 from b, all 4 of c
    assert sum(c == "b" for c, _ in negatives) == 5 and sum(c == "c" for c, _ in negatives) == 4
    assert len(set(negatives)) == 9
    items, labels = balanced_indices({"a": 10, "b": 6, "c": 4}, "c", gen)
    negatives = [c for (c, _), y in zip(items, labels) if y == 0]
    assert labels.sum().item() == 4 and sorted(negatives) == ["a", "a", "b", "b"]


def test_top_k_dims_pick_the_largest_mean_difference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 10, generator=g) * 0.1
    y = torch.tensor([1] * 20 + [0] * 20)
    x[:20, 3] += 2.0
    x[20:, 7] += 1.0
    x[:20, 5] -= 0.5
    assert top_k_dims(x, y, 1).tolist() == [3]
    assert sorted(top_k_dims(x, y, 3).tolist()) == [3, 5, 7]


def test_pooling_matches_saebench_zero_mask_mean(letters_lm):
    texts = ["x1 x2 x3", "y1 y2", "apple"]
    s = SparseProbingSettings(llm_batch_size=2, context_length=8)
    ctx = EvalContext(letters_lm, HOOK, cache_dir=None, verbose=False)
    pooled = segment_mean(**kept_positions(ctx, texts, s)).float()
    ids, mask = letters_lm.tokenize(texts, max_length=8)
    acts = letters_lm.forward_to_hook(ids, mask, HOOK)
    acts = acts * ((ids != 0) & (ids != 1) & (ids != 2))[..., None]  # SAEBench zeroes pad/eos/bos
    nonzero = acts.sum(-1) != 0
    expected = acts.sum(1) / nonzero.sum(1, keepdim=True)
    assert torch.allclose(pooled, expected, atol=1e-5)


def test_cache_keys_follow_the_contents_of_local_files(letters_lm, tmp_path):
    """Results for a local labelled file used to be keyed on its path: replace the file and a
    rerun silently returned the old results."""
    table = tmp_path / "labelled.jsonl"
    table.write_text('{"text": "a", "label": "x"}\n')
    calls = []

    def run(ctx):
        return ctx.cached("probe", {"datasets": [str(table)], "seed": 1}, lambda: calls.append(1) or len(calls))

    first = EvalContext(letters_lm, HOOK, cache_dir=tmp_path / "cache", verbose=False)
    assert run(first) == 1 and run(first) == 1  # memory
    assert run(EvalContext(letters_lm, HOOK, cache_dir=tmp_path / "cache", verbose=False)) == 1  # disk
    table.write_text('{"text": "b", "label": "y"}\n')  # same path, new contents
    fresh = EvalContext(letters_lm, HOOK, cache_dir=tmp_path / "cache", verbose=False)
    assert run(fresh) == 2 and run(first) == 2  # recomputed, in a new context and in the old one's memory
