"""Where a TopK training step spends its time, and tokens/s of the encoder/decoder paths.

Paths, measured interleaved in one process (A, B, C, A, B, C, ...; medians), so a shared
machine's load hits each alike:
  reference      sparse_encoder=False, sparse_decoder=False: autograd through dense [B, d_sae]
  dense-encoder  sparse_encoder=False, sparse_decoder=True: the step before the sparse encoder
  sparse         sparse_encoder=True,  sparse_decoder=True: the default for d_sae >= 16 k
A step is the trainer's: training_forward (+ penalties), the weighted loss, backward, the
decoder-gradient projection, Adam, renormalisation. The profile splits one step of each path
into those phases (wall ms, % of the step) and lists the costliest torch ops (self CPU ms).
"trainer" is a step through featsep.train (data checks, bookkeeping) for its overhead.

    python benchmarks/step_profile.py                              # the issue's sizes, 2 threads
    python benchmarks/step_profile.py --size 256,4096,32 --reps 5 --penalty momentum
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import featsep  # noqa: E402
from featsep.rundir import RunDir, run_dirs  # noqa: E402

PATHS = {"reference": (False, False), "dense-encoder": (False, True), "sparse": (True, True)}
PHASES = ["forward", "loss", "backward", "project", "adam", "renorm"]


def build(d: int, n: int, k: int, path: str, penalty: str):
    enc, dec = PATHS[path]
    sae = featsep.make_sae("topk", d_in=d, d_sae=n, k=k, sparse_encoder=enc, sparse_decoder=dec)
    opt = torch.optim.Adam(sae.parameters(), lr=sae.default_lr())
    pens = [featsep.make_penalty(penalty, d_sae=n)] if penalty else []
    return sae, opt, pens


def step(sae, opt, pens, x: torch.Tensor, i: int, times: dict) -> None:
    """One trainer step, each phase timed into `times` (ms)."""
    t = [time.perf_counter()]
    out = sae.training_forward(x, i, 1000)
    terms, coefs = dict(out.terms), dict(out.coefficients)
    for pen in pens:
        terms.update(pen(out.codes))
        coefs.update(pen.coefficients())
    t.append(time.perf_counter())
    loss = sum(coefs.get(name, 1.0) * v.float() for name, v in terms.items())
    t.append(time.perf_counter())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    t.append(time.perf_counter())
    sae.before_optimizer_step()
    t.append(time.perf_counter())
    opt.step()
    t.append(time.perf_counter())
    sae.after_optimizer_step(i, x, opt)
    t.append(time.perf_counter())
    for name, a, b in zip(PHASES, t, t[1:]):
        times.setdefault(name, []).append(1e3 * (b - a))


def trainer_ms(d: int, n: int, k: int, x: torch.Tensor, steps: int) -> tuple[float, float]:
    """(ms per step of featsep.train, of which in the SAE's own step) on the default (sparse)
    path, from the trainer's second metrics window (the first holds the data-dependent init)."""
    sae = featsep.make_sae("topk", d_in=d, d_sae=n, k=k)
    with tempfile.TemporaryDirectory() as tmp:
        featsep.train([sae], [x] * (2 * steps), progress=False, log_every=steps, checkpoint_every=10**9,
                      out_dir=tmp, names=["bench"])
        row = [json.loads(line) for line in RunDir(run_dirs(tmp, ["bench"])[0]).metrics_file.read_text().splitlines()][-1]
    return 1e3 * x.shape[0] / row["tokens_per_s"], 1e3 * x.shape[0] / row["sae_tokens_per_s"]


def run_size(d: int, n: int, k: int, batch: int, reps: int, penalty: str, top_ops: int) -> None:
    print(f"\n== d_in={d} d_sae={n} k={k} batch={batch} threads={torch.get_num_threads()} "
          f"penalty={penalty or 'none'} ==")
    x = torch.randn(batch, d, generator=torch.Generator().manual_seed(0))
    built = {p: build(d, n, k, p, penalty) for p in PATHS}
    times: dict[str, dict] = {p: {} for p in PATHS}
    for p, (sae, opt, pens) in built.items():  # warm-up: Adam state, allocator
        step(sae, opt, pens, x, 0, {})
    for r in range(reps):
        for p, (sae, opt, pens) in built.items():
            step(sae, opt, pens, x, r + 1, times[p])
    totals = {p: [sum(v[r] for v in times[p].values()) for r in range(reps)] for p in PATHS}
    for p in PATHS:
        med = statistics.median(totals[p])
        print(f"{p:>14}: {med:8.1f} ms/step  {batch / med * 1e3:10.0f} tokens/s   (median of {reps})")
    base = statistics.median(totals["dense-encoder"])
    print(f"speed-up sparse vs dense-encoder: {base / statistics.median(totals['sparse']):.2f}x, "
          f"vs reference: {statistics.median(totals['reference']) / statistics.median(totals['sparse']):.2f}x")
    print("phases (median ms, % of the step):")
    print(f"{'':>14} " + " ".join(f"{ph:>15}" for ph in PHASES))
    for p in PATHS:
        total = statistics.median(totals[p])
        cells = [f"{statistics.median(times[p][ph]):7.1f} ({100 * statistics.median(times[p][ph]) / total:4.1f}%)"
                 for ph in PHASES]
        print(f"{p:>14} " + " ".join(f"{c:>15}" for c in cells))
    whole, own = trainer_ms(d, n, k, x, reps)
    print(f"trainer (featsep.train, sparse path): {whole:.1f} ms/step, of which the SAE step {own:.1f} "
          f"(trainer overhead {whole - own:.1f} ms, {100 * (whole - own) / whole:.1f}%)")
    for p in ("dense-encoder", "sparse"):
        sae, opt, pens = built[p]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(sae, opt, pens, x, reps + 1, {})
        print(f"top ops, {p} (self CPU ms of one step):")
        ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top_ops]
        step_ms = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e3
        for e in ops:
            print(f"    {e.key:<40} {e.self_cpu_time_total / 1e3:8.1f} ms {100 * e.self_cpu_time_total / 1e3 / step_ms:5.1f}%"
                  f"  x{e.count}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", action="append", help="d_in,d_sae,k (repeatable); default 256,4096,32 and 640,16384,32")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--penalty", default="", help="a penalty on the step, e.g. momentum")
    ap.add_argument("--top-ops", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for size in args.size or ["256,4096,32", "640,16384,32"]:
        d, n, k = map(int, size.split(","))
        run_size(d, n, k, args.batch, args.reps, args.penalty, args.top_ops)


if __name__ == "__main__":
    main()
