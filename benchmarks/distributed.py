"""Per-step time and bytes communicated by torchrun-style training: 1 process vs N, data
parallel and SAE parallel, side by side, with the bytes each mode should send (derived below).

Every configuration trains the same M TopK SAEs (d_in d, d_sae n, k; the momentum penalty on
every other one, unless --no-penalties) on global batches of B rows. N processes join through torch.distributed (gloo on CPU; NCCL, one GPU per rank, where
CUDA is available) exactly as under torchrun (RANK/WORLD_SIZE/MASTER_* and
featsep.distributed.World.from_env), and call featsep.train(..., world=...) with their slice
of each batch. Bytes are counted by wrapping torch.distributed's collectives: the payload each
rank hands in (its input tensor; for all_gather its own slice). Per-step figures are the
difference between a run of 2 + S steps and a run of 2 steps, so one-off traffic (the first
batch gathered for data-driven initialisation, the trained SAEs shared at the end, the
checkpoint's gathered RNG states) cancels out.

Derived payload per rank and step (P = 2 d n + n + d parameters of a TopK SAE, fp32; the
full derivation, every architecture: docs/architecture.md, "Distributed training"):
  data parallel : M ((P + 1) x 4 + n)      per SAE one flattened fp32 all-reduce (gradients +
                  + M_pen (8 + (B/N) k 12  and loss) and the fired-latents mask (n bytes, uint8);
                           + B k 4)        per SAE with a penalty the codes gathered (k, then
                                           values fp32 and indices int64 of the rank's rows)
                                           and, backward, the gathered values' gradient
  SAE parallel  : (B / N) d x 4 bytes      one all-gather of the rank's rows (no gradient
                                           traffic: each SAE lives on one rank); each rank
                                           receives (N - 1) B d / N x 4 bytes
A ring all-reduce moves about 2 (N - 1) / N times its payload over each rank's link; an
all-gather (N - 1) / N of the gathered size. Logging steps add a few scalars per SAE
(log_every is set past the run here, so none are counted).

    python benchmarks/distributed.py --quick                   # d_in 128, d_sae 2048, B 512
    python benchmarks/distributed.py --d-in 256 --d-sae 4096 --batch 1024
    python benchmarks/distributed.py --d-in 640 --d-sae 16384 --batch 4096 --ranks 8 --steps 20   # 8 GPUs
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


def penalised(saes: int, penalties: bool) -> int:
    return (saes + 1) // 2 if penalties else 0  # SAEs 0, 2, 4, ... carry the momentum penalty


def derived_bytes(mode: str, world: int, saes: int, d: int, n: int, k: int, batch: int, penalties: bool) -> int:
    if world == 1:
        return 0
    if mode == "data":
        codes = 8 + batch // world * k * (4 + 8) + batch * k * 4
        return saes * ((2 * d * n + n + d + 1) * 4 + n) + penalised(saes, penalties) * codes
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
        saes = [featsep.make_sae("topk", d_in=args.d_in, d_sae=args.d_sae, k=args.k, device=device, seed=i)
                for i in range(args.saes)]
        pens = [featsep.make_penalty("momentum", d_sae=args.d_sae) if args.penalties and i % 2 == 0 else None
                for i in range(args.saes)]
        g = torch.Generator().manual_seed(1)
        batches = [torch.randn(args.batch, args.d_in, generator=g) for _ in range(steps)]
        mine = [job.shard_rows(b).to(device) for b in batches]
        job.barrier()
        counter[0] = 0
        start = time.perf_counter()
        featsep.train(saes, iter(mine), steps, penalties=pens, progress=False, world=job, parallel=mode,
                      log_every=10**9, checkpoint_every=10**9, autocast_bf16=False)
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
    parser.add_argument("--d-in", type=int, default=512)
    parser.add_argument("--d-sae", type=int, default=8192)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--saes", type=int, default=4, help="SAEs trained together (SAE parallel needs >= ranks)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps")
    parser.add_argument("--ranks", type=int, default=2, help="processes of the parallel runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--no-penalties", dest="penalties", action="store_false",
                        help="no momentum penalty (default: on every other SAE)")
    parser.add_argument("--quick", action="store_true", help="d_in 128, d_sae 2048, batch 512, 4 steps")
    args = parser.parse_args()
    if args.quick:
        args.d_in, args.d_sae, args.batch, args.steps = 128, 2048, 512, 4
    args.world = args.ranks
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available() and torch.cuda.device_count() < args.world:
        raise SystemExit(f"--ranks {args.world} needs {args.world} GPUs; {torch.cuda.device_count()} visible")
    momentum = f", momentum on {penalised(args.saes, args.penalties)}" if args.penalties else ""
    print(f"{args.saes} TopK SAE(s) d_in={args.d_in} d_sae={args.d_sae} k={args.k}{momentum}, global batch "
          f"{args.batch}, {args.steps} timed steps, {backend}, {args.threads} thread(s) per process")
    print(f"{'processes':>9} {'mode':>5} {'ms/step':>9} {'tokens/s':>10} {'bytes/step/rank':>16} {'derived':>12} {'match':>6}")
    rows = [(1, "data")] + [(args.world, mode) for mode in ("data", "sae")]
    for world, mode in rows:
        seconds, sent = measure(world, mode, args)
        want = derived_bytes(mode, world, args.saes, args.d_in, args.d_sae, args.k, args.batch, args.penalties)
        shown = "-" if world == 1 else mode
        print(f"{world:>9} {shown:>5} {seconds * 1e3:>9.1f} {args.batch / seconds:>10,.0f} {sent:>16,.0f} {want:>12,} "
              f"{'yes' if sent == want else 'NO':>6}")


if __name__ == "__main__":
    main()
