"""TopK SAE training-step throughput and peak memory: sparse vs dense decoder, side by side.

A step is what the trainer runs: training_forward, backward, decoder-gradient projection,
Adam, renormalisation. Each (n, decoder) configuration runs in its own fresh process so peak
memory is not polluted by the previous one.

Peak memory
- CUDA: torch.cuda.max_memory_allocated() over the timed steps, minus the memory held before
  the first step (parameters, Adam state, the batch): the step's working memory. bf16
  autocast is on, as in the trainer.
- CPU: the process's peak resident set (getrusage ru_maxrss) minus the resident set just
  before the first step; same meaning, but includes allocator slack, so read it as a ratio.

    python benchmarks/train.py                       # d=640, n=8192 and 32768, k=32, B=4096
    python benchmarks/train.py --n 8192 --steps 5 --device cuda
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(d: int, n: int, k: int, batch: int, steps: int, warmup: int, sparse: bool, device: str, threads: int) -> dict:
    if threads:
        torch.set_num_threads(threads)
    import featsep

    torch.manual_seed(0)
    sae = featsep.make_sae("topk", d_in=d, d_sae=n, k=k, sparse_decoder=sparse, device=device)
    opt = torch.optim.Adam(sae.parameters(), lr=sae.default_lr())
    x = torch.randn(batch, d, device=device)
    cuda = device.startswith("cuda")

    def one_step(i: int) -> None:
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
            out = sae.training_forward(x, i, steps + warmup)
            loss = sum(out.coefficients.get(t, 1.0) * v for t, v in out.terms.items())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.before_optimizer_step()
        opt.step()
        sae.after_optimizer_step(i, x, opt)

    for i in range(warmup):  # also creates Adam state
        one_step(i)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_mib()
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        one_step(i)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if cuda:
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {"tokens_per_s": batch * steps / seconds, "step_s": seconds / steps, "peak_mib": peak}


def run_isolated(**kwargs) -> dict:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(measure, (), kwargs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d", type=int, default=640)
    p.add_argument("--n", type=int, nargs="+", default=[8192, 32768])
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 3 on CPU, 20 on CUDA)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    a = p.parse_args()
    steps = a.steps or (20 if a.device.startswith("cuda") else 3)
    name = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"TopK training step, d={a.d} k={a.k} batch={a.batch}, {steps} timed steps, {name}")
    print(f"{'n':>7} {'decoder':>7} {'tokens/s':>10} {'step s':>8} {'peak MiB':>9}")
    for n in a.n:
        res = {}
        for sparse in (False, True):
            res[sparse] = r = run_isolated(d=a.d, n=n, k=a.k, batch=a.batch, steps=steps, warmup=a.warmup,
                                           sparse=sparse, device=a.device, threads=a.threads)
            print(f"{n:>7} {'sparse' if sparse else 'dense':>7} {r['tokens_per_s']:>10.0f} {r['step_s']:>8.3f} {r['peak_mib']:>9.0f}")
        speed = res[True]["tokens_per_s"] / res[False]["tokens_per_s"]
        mem = res[True]["peak_mib"] / max(res[False]["peak_mib"], 1e-9)
        print(f"{n:>7} sparse/dense: throughput x{speed:.2f}, step peak memory x{mem:.2f}")


if __name__ == "__main__":
    main()
