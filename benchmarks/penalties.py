"""Cost of each feature-separation penalty on a TopK SAE training step, as ratios to plain TopK.

One step = TopK SAE forward (training_forward) + penalty + backward + Adam. For each dictionary
size n and k, every variant runs in its own fresh process (so its peak memory is its own):
  topk                 no penalty (the baseline of every ratio)
  +momentum            efficient row-sum identity, O(B k)
  +temporal            sparse pair state (mode="specified")
  +temporal-reference  sparse pair state (mode="reference")
  +orthogonality       co-activation-weighted baseline
  +pairs-floor         only finds and sums the batch's co-active pairs (pairs.coactive_pairs), no
                       state and no loss: the floor any exact pair penalty pays at this k
  +momentum-dense      the dense n x n reference (reference.MomentumDense), only n <= --dense-max
  +temporal-dense      the dense n x n reference (reference.TemporalDense), only n <= --dense-max
Prints median step time and peak memory (CUDA: max allocated; CPU: peak RSS of the process),
each as a ratio to topk measured in the same run. Targets: momentum <= 1.10x step time;
temporal <= 1.30x at n = 16384; temporal at n = 65536 within 4 GB of extra memory.

    python benchmarks/penalties.py --quick
    python benchmarks/penalties.py --sizes 4096 16384 65536 --ks 32 160 --batch 4096 --steps 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

VARIANTS = ["topk", "momentum", "temporal", "temporal-reference", "orthogonality", "pairs-floor", "momentum-dense",
            "temporal-dense"]
DENSE_VARIANTS = {"momentum-dense", "temporal-dense"}


def _penalty(variant: str, n: int):
    """A callable (values, indices) -> loss for the variant, or None for plain TopK."""
    from featsep.penalties import make_penalty
    from featsep.codes import Codes
    from featsep.penalties.reference import MomentumDense, TemporalDense

    if variant == "topk":
        return None
    if variant == "pairs-floor":
        from featsep.penalties.pairs import coactive_pairs

        def floor(v, i):
            coactive_pairs(Codes.from_topk(v.detach(), i, n))
            return v.new_zeros(())
        return floor, None
    if variant == "temporal-reference":
        pen = make_penalty("temporal", d_sae=n, mode="reference", state="sparse")
        return lambda v, i: pen(Codes.from_topk(v, i, n))["temporal"] * 0.1, pen
    if variant in ("momentum", "temporal", "orthogonality"):
        pen = make_penalty(variant, d_sae=n, **({"state": "sparse"} if variant == "temporal" else {}))
        return lambda v, i: pen(Codes.from_topk(v, i, n))[variant] * pen.cfg.weight, pen

    def dense(v, i):
        return torch.zeros(v.shape[0], n, dtype=v.dtype, device=v.device).scatter(1, i, v)

    if variant == "momentum-dense":
        ref = MomentumDense(n, 0.95, 0.4, "specified")
        return lambda v, i: ref.step(dense(v, i)) * 0.3, None
    ref = TemporalDense(n, "specified", 1000, 0.1, 1000.0)
    return lambda v, i: ref.step(dense(v, i), (dense(v, i) != 0).to(v.dtype).detach()) * 0.1, None


def _make_sae(d: int, n: int, k: int, device: str):
    try:
        import featsep

        return featsep.make_sae("topk", d_in=d, d_sae=n, k=k, device=device), "featsep.sae topk"
    except Exception as e:  # the SAE package is optional for this benchmark
        print(f"  (featsep.make_sae('topk') unavailable: {e}; using a minimal TopK step)", file=sys.stderr)
        return None, "minimal TopK"


def _measure(variant: str, n: int, k: int, batch: int, d: int, steps: int, device: str) -> dict:
    torch.manual_seed(0)
    x = torch.randn(batch, d, device=device)
    sae, sae_kind = _make_sae(d, n, k, device)
    if sae is None:
        W_enc = torch.nn.Parameter(torch.randn(d, n, device=device) / d ** 0.5)
        W_dec = torch.nn.Parameter(torch.randn(n, d, device=device) / d ** 0.5)
        params = [W_enc, W_dec]

        def forward(step):
            values, indices = (x @ W_enc).topk(k, dim=1)
            values = values.relu()
            x_hat = torch.zeros(batch, n, device=device).scatter(1, indices, values) @ W_dec
            return ((x_hat - x) ** 2).mean(), values, indices
    else:
        params = list(sae.parameters())

        def forward(step):
            out = sae.training_forward(x, step, steps + 1)
            loss = sum(out.coefficients.get(name, 1.0) * term for name, term in out.terms.items())
            return loss, out.codes.values, out.codes.indices

    opt = torch.optim.Adam(params, lr=1e-4)
    made = _penalty(variant, n)
    pen_fn, pen = (made if made is not None else (None, None))
    times = []
    for step in range(steps + 1):  # the first step warms up
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss, values, indices = forward(step)
        if pen_fn is not None:
            loss = loss + pen_fn(values, indices)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    state_bytes = pen.stats().get("state_bytes", 0) if pen is not None and hasattr(pen, "stats") else 0
    if pen is not None and variant == "momentum":
        state_bytes = pen.momentum.numel() * pen.momentum.element_size()
    return {"time": statistics.median(times), "peak": peak, "state_bytes": state_bytes, "sae": sae_kind}


def _child(queue, *args):
    torch.set_num_threads(args[-1])
    try:
        queue.put(_measure(*args[:-1]))
    except Exception as e:  # report, e.g. out of memory, instead of dying silently
        queue.put({"error": f"{type(e).__name__}: {e}"[:200]})


def run_isolated(*args, threads: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, *args, threads))
    proc.start()
    proc.join()
    return queue.get() if not queue.empty() else {"error": f"process exited with code {proc.exitcode}"}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 65536], help="dictionary sizes n")
    ap.add_argument("--ks", type=int, nargs="+", default=[32, 160])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--d", type=int, default=640, help="SAE input width")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up)")
    ap.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    ap.add_argument("--dense-max", type=int, default=4096, help="largest n for the dense n x n references")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--quick", action="store_true", help="n=2048, k=32, batch 1024, 2 steps")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.ks, args.batch, args.steps = [2048], [32], 1024, 2
    if "topk" not in args.variants:
        args.variants = ["topk"] + args.variants
    print(f"device={args.device} threads={args.threads} batch={args.batch} d={args.d} steps={args.steps}")
    print(f"{'n':>6} {'k':>4} {'variant':<20} {'step s':>8} {'x topk':>7} {'peak MB':>9} "
          f"{'extra MB':>9} {'state MB':>9}")
    results = []
    for n in args.sizes:
        for k in args.ks:
            base = None
            for variant in args.variants:
                if variant in DENSE_VARIANTS and n > args.dense_max:
                    continue
                r = run_isolated(variant, n, k, args.batch, args.d, args.steps, args.device, threads=args.threads)
                r.update(n=n, k=k, variant=variant)
                results.append(r)
                if "error" in r:
                    print(f"{n:>6} {k:>4} {variant:<20} failed: {r['error']}")
                    continue
                if variant == "topk":
                    base = r
                ratio = r["time"] / base["time"] if base else float("nan")
                extra = (r["peak"] - base["peak"]) / 2**20 if base else float("nan")
                r.update(time_ratio=ratio, extra_mb=extra)
                print(f"{n:>6} {k:>4} {variant:<20} {r['time']:>8.3f} {ratio:>7.2f} {r['peak'] / 2**20:>9.0f} "
                      f"{extra:>9.0f} {r['state_bytes'] / 2**20:>9.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
