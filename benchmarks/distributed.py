"""Step time and collective payload of distributed training, against one process (CPU, gloo).

A sweep of `--saes` TopK SAEs (momentum penalty on every other one) trains on global batches of
`--batch` rows in three layouts: one process; data parallel on `--ranks` ranks (each holding
batch / ranks rows); SAE parallel on `--ranks` ranks (one group each). Each rank counts the
bytes of the tensors it hands to torch.distributed (the payload; a ring all-reduce moves about
twice that over the wire). Prints seconds and payload per step and rank (medians over the steps
after the first, which also initialises from data). docs/architecture.md, "Distributed training", derives the payloads.

    python benchmarks/distributed.py --quick
    python benchmarks/distributed.py --d-in 2304 --d-sae 16384 --k 64 --batch 4096 --saes 4
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as tmp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def _saes(args):
    import featsep
    saes = [featsep.make_sae("topk", d_in=args.d_in, d_sae=args.d_sae, k=args.k, seed=i) for i in range(args.saes)]
    pens = [featsep.make_penalty("momentum", d_sae=args.d_sae) if i % 2 == 0 else None for i in range(args.saes)]
    return saes, pens


class _Timed:
    """The batches, with the wall time and payload count at which each is asked for (a step
    ends when the next starts), so one-off traffic (init gather, final broadcast) stays out."""

    def __init__(self, batches, count):
        self.batches, self.count, self.marks = batches, count, []

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for x in self.batches:
            self.marks.append((time.perf_counter(), self.count[0]))
            yield x
        self.marks.append((time.perf_counter(), self.count[0]))


def _payload_counter():
    """Wrap the torch.distributed calls World makes; returns the running byte count."""
    count = [0]
    for name in ("all_reduce", "all_gather", "broadcast"):
        original = getattr(dist, name)

        def counted(*a, _original=original, _name=name, **kw):
            t = a[1] if _name == "all_gather" else a[0]
            count[0] += t.numel() * t.element_size()
            return _original(*a, **kw)
        setattr(dist, name, counted)
    return count


def _run(rank: int, ranks: int, layout: str, args, port: int, out: dict) -> None:
    import featsep
    from featsep.distributed import World
    torch.set_num_threads(1)
    if ranks > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                          WORLD_SIZE=str(ranks))
    world = World.from_env(backend="gloo") if ranks > 1 else World.single()
    count = _payload_counter()
    gen = torch.Generator().manual_seed(0)
    batches = _Timed([world.shard_rows(torch.randn(args.batch, args.d_in, generator=gen)) for _ in range(args.steps)],
                     count)
    saes, pens = _saes(args)
    featsep.train(saes, batches, args.steps, penalties=pens, world=world, progress=False,
                  parallel="sae" if layout == "sae" else "data", log_every=10**6)
    steps = list(zip(batches.marks, batches.marks[1:]))[1:]  # the first step inits from data
    if rank == 0:
        out[layout] = {"s_per_step": statistics.median(b[0] - a[0] for a, b in steps),
                       "payload_MB_per_step": statistics.median(b[1] - a[1] for a, b in steps) / 1e6}


def _spawned(rank, ranks, layout, args, port, path):
    out: dict = {}
    _run(rank, ranks, layout, args, port, out)
    if rank == 0:
        torch.save(out, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-in", type=int, default=512)
    p.add_argument("--d-sae", type=int, default=8192)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--saes", type=int, default=4)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--quick", action="store_true", help="d_in 128, d_sae 2048, batch 512, 4 steps")
    args = p.parse_args()
    if args.quick:
        args.d_in, args.d_sae, args.batch, args.steps = 128, 2048, 512, 4
    results: dict = {}
    _run(0, 1, "one process", args, 0, results)
    for layout in ("data", "sae"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        path = Path(f"/tmp/featsep-bench-dist-{os.getpid()}.pt")
        tmp.start_processes(_spawned, args=(args.ranks, layout, args, port, str(path)), nprocs=args.ranks,
                            start_method="spawn")
        results[f"{layout} parallel, {args.ranks} ranks"] = torch.load(path, weights_only=True)[layout]
        path.unlink()
    print(f"{args.saes} TopK SAEs d_in {args.d_in} d_sae {args.d_sae} k {args.k}, global batch {args.batch}, "
          f"momentum on every other SAE, 1 thread per rank")
    for name, r in results.items():
        print(f"  {name:26s} {r['s_per_step']:.3f} s/step   collective payload {r['payload_MB_per_step']:.2f} MB/step/rank")


if __name__ == "__main__":
    main()
