"""Per-step time and bytes communicated by torchrun-style training: 1 process vs N, data
parallel and SAE parallel, side by side, with the bytes each mode should send (derived below).

Every configuration trains the same M TopK SAEs (d_in d, d_sae n, k) on global batches of B
rows. N processes join through torch.distributed (gloo on CPU; NCCL, one GPU per rank, where
CUDA is available) exactly as under torchrun (RANK/WORLD_SIZE/MASTER_* and
featsep.distributed.World.from_env), and call featsep.train(..., world=...) with their slice
of each batch. Bytes are counted by wrapping torch.distributed's collectives: the payload each
rank hands in (its input tensor; for all_gather its own slice). Per-step figures are the
difference between a run of 2 + S steps and a run of 2 steps, so one-off traffic (the first
batch gathered for data-driven initialisation, the trained SAEs shared at the end, the
checkpoint's gathered RNG states) cancels out.

Derived payload per rank and step (P = 2 d n + n + d parameters of a TopK SAE, fp32):
  data parallel : M ((P + 1) x 4 + n)      per SAE one flattened fp32 all-reduce (gradients +
                                           loss) and the fired-latents mask (n bytes, uint8,
                                           "max"), which dead-latent tracking reads
  SAE parallel  : (B / N) d x 4 bytes      one all-gather of the rank's rows (no gradient
                                           traffic: each SAE lives on one rank); each rank
                                           receives (N - 1) B d / N x 4 bytes
A ring all-reduce moves about 2 (N - 1) / N times its payload over each rank's link; an
all-gather (N - 1) / N of the gathered size. Logging steps add a few scalars per SAE
(log_every is set past the run here, so none are counted).

    python benchmarks/distributed.py                           # d=256, n=2048, k=32, B=1024, M=2
    python benchmarks/distributed.py --d 640 --n 16384 --batch 4096 --steps 20   # on GPUs
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

COLLECTIVES = ("all_reduce", "all_gather", "broadcast", "all_gather_into_tensor", "reduce_scatter")


def count_collectives(counter: list[int]) -> None:
    """Wrap torch.distributed's collectives to add each call's payload (bytes) to counter[0]."""
    import torch.distributed as dist

    def size(arg) -> int:
        return arg.numel() * arg.element_size() if isinstance(arg, torch.Tensor) else 0

    for name in COLLECTIVES:
        original = getattr(dist, name)

        def wrapped(*args, _original=original, _name=name, **kwargs):
            # all_gather(out_list, tensor): the tensor is the rank's payload; others: the first tensor
            payload = args[1] if _name == "all_gather" else args[0]
            counter[0] += size(payload)
            return _original(*args, **kwargs)
        setattr(dist, name, wrapped)


def derived_bytes(mode: str, world: int, saes: int, d: int, n: int, batch: int) -> int:
    if world == 1:
        return 0
    if mode == "data":
        return saes * ((2 * d * n + n + d + 1) * 4 + n)
    return batch // world * d * 4


def worker(rank: int, world: int, port: int, args, mode: str, out) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    import featsep
    from featsep.distributed import World

    job = World.from_env() if world > 1 else World.single()
    device = f"cuda:{rank}" if torch.cuda.is_available() else "cpu"
    counter = [0]
    count_collectives(counter)

    def run(steps: int) -> tuple[float, int]:
        torch.manual_seed(0)
        saes = [featsep.make_sae("topk", d_in=args.d, d_sae=args.n, k=args.k, device=device) for _ in range(args.saes)]
        g = torch.Generator().manual_seed(1)
        batches = [torch.randn(args.batch, args.d, generator=g) for _ in range(steps)]
        mine = [job.shard_rows(b).to(device) for b in batches]
        job.barrier()
        counter[0] = 0
        start = time.perf_counter()
        featsep.train(saes, iter(mine), steps, progress=False, world=job, parallel=mode, log_every=10**9,
                      checkpoint_every=10**9, autocast_bf16=False)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start, counter[0]

    run(2)  # warm-up (allocator, process groups, kernels)
    t_short, b_short = run(2)
    t_long, b_long = run(2 + args.steps)
    per_step = ((t_long - t_short) / args.steps, (b_long - b_short) / args.steps)
    if rank == 0:
        out.put(per_step)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(world: int, mode: str, args) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, world, port, args, mode, out)) for r in range(world)]
    for p in procs:
        p.start()
    result = out.get(timeout=1800)
    for p in procs:
        p.join()
        if p.exitcode:
            raise SystemExit(f"a rank of the {world}-process {mode} run failed (exit {p.exitcode})")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--saes", type=int, default=2, help="SAEs trained together (SAE parallel needs >= ranks)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--world", type=int, default=2, help="processes of the parallel runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = parser.parse_args()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available() and torch.cuda.device_count() < args.world:
        raise SystemExit(f"--world {args.world} needs {args.world} GPUs; {torch.cuda.device_count()} visible")
    print(f"{args.saes} TopK SAE(s) d={args.d} n={args.n} k={args.k}, global batch {args.batch}, {args.steps} timed "
          f"steps, {backend}, {args.threads} thread(s) per process")
    print(f"{'processes':>9} {'mode':>5} {'ms/step':>9} {'tokens/s':>10} {'bytes/step/rank':>16} {'derived':>12} {'match':>6}")
    rows = [(1, "data")] + [(args.world, mode) for mode in ("data", "sae")]
    for world, mode in rows:
        seconds, sent = measure(world, mode, args)
        want = derived_bytes(mode, world, args.saes, args.d, args.n, args.batch)
        shown = "-" if world == 1 else mode
        print(f"{world:>9} {shown:>5} {seconds * 1e3:>9.1f} {args.batch / seconds:>10,.0f} {sent:>16,.0f} {want:>12,} "
              f"{'yes' if sent == want else 'NO':>6}")


if __name__ == "__main__":
    main()
