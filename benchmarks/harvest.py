"""Harvest throughput: ActivationStream.from_lm vs a bare forward cut at the same layer.

Both paths run the same 8 x 128 batches of packed bbc-news text through the real offline
model, in alternating rounds within one process, so the ratio is measured side by side.
Target: stream / bare >= 0.9 (the stream's tokenization, packing, masking, normalisation
and shuffling must cost < 10% on top of the LM).

    python benchmarks/harvest.py [--model gemma-3-270m] [--hook blocks.8.hook_resid_post]
                                 [--batches 12] [--rounds 2]
"""

from __future__ import annotations

import argparse
import resource
import time
from itertools import islice

import torch

from featsep.data import ActivationStream, pack_tokens, text_source
from featsep.lm import load_lm


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bare(lm, hook: str, batches: list[torch.Tensor]) -> float:
    """tokens/s of forward_to_hook alone on pre-packed batches."""
    t0 = time.perf_counter()
    for ids in batches:
        lm.forward_to_hook(ids, None, hook)
    return sum(b.numel() for b in batches) / (time.perf_counter() - t0)


def streamed(lm, hook: str, n_contexts: int, dataset: str, train_batch: int) -> tuple[float, float]:
    """tokens/s of text -> packed rows -> LM -> masked, normalised, shuffled batches, and the
    fraction of that time spent inside the LM forward (robust to load from other processes)."""
    forward_time = 0.0
    original = lm.forward_to_hook

    def timed(ids, mask, h):
        nonlocal forward_time
        t = time.perf_counter()
        out = original(ids, mask, h)
        forward_time += time.perf_counter() - t
        return out

    lm.forward_to_hook = timed
    try:
        t0 = time.perf_counter()
        stream = ActivationStream.from_lm(
            lm, dataset, hook, batch_size=train_batch, context_length=128, lm_batch_size=8,
            shuffle_buffer=32, normalize=True, norm_estimate_batches=4,
        )
        while stream.source.contexts_done < n_contexts:
            next(stream)
        total = time.perf_counter() - t0
    finally:
        del lm.forward_to_hook
    return stream.source.contexts_done * 128 / total, forward_time / total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--hook", default="blocks.8.hook_resid_post")
    ap.add_argument("--dataset", default="bbc-news")
    ap.add_argument("--batches", type=int, default=12, help="LM batches (8 x 128) per measurement")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--train-batch", type=int, default=1024, help="activation rows per stream batch")
    args = ap.parse_args()

    t0 = time.perf_counter()
    lm = load_lm(args.model)
    print(f"loaded {lm} in {time.perf_counter() - t0:.1f} s; torch threads {torch.get_num_threads()}")
    rows = list(islice(pack_tokens(text_source(args.dataset), lm.tokenizer, 128, lm.bos_token_id), args.batches * 8))
    batches = [torch.stack(rows[i : i + 8]) for i in range(0, len(rows), 8)]
    bare(lm, args.hook, batches[:1])  # warm-up

    bare_rates, stream_rates, in_lm = [], [], []
    for r in range(args.rounds):
        bare_rates.append(bare(lm, args.hook, batches))
        rate, fraction = streamed(lm, args.hook, args.batches * 8, args.dataset, args.train_batch)
        stream_rates.append(rate)
        in_lm.append(fraction)
        print(f"round {r + 1}: bare {bare_rates[-1]:,.0f} tok/s, stream {rate:,.0f} tok/s, "
              f"{100 * fraction:.1f}% of stream time in the LM forward")
    b, s = sum(bare_rates) / len(bare_rates), sum(stream_rates) / len(stream_rates)
    f = sum(in_lm) / len(in_lm)
    print(
        f"harvest {args.model} {args.hook}: stream {s:,.0f} tok/s, bare forward {b:,.0f} tok/s, "
        f"ratio {s / b:.3f} (target >= 0.9); in-stream LM share {f:.3f} (the ratio without load "
        f"noise); peak RSS {peak_rss_mb():,.0f} MB"
    )


if __name__ == "__main__":
    main()
