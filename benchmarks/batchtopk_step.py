"""A BatchTopK / Matryoshka training step, the flat form against padded rows, interleaved.

"flat" is the SAE as it trains: the batch's k B selections in the flat form (featsep.codes),
decoded and backpropagated without padding, no host sync. "padded" is the same selection packed
into rows padded to the busiest one (Codes' lazy TopK form; the implementation before the flat
form, which read that width on the host every step). A step is training_forward, the weighted
loss, backward and Adam; the variants run interleaved in one process (medians), so a shared
machine's load hits each alike.

    python benchmarks/batchtopk_step.py                    # d 256, d_sae 4096, k 32, batch 4096, 2 threads
    python benchmarks/batchtopk_step.py --arch batchtopk matryoshka --reps 9
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import featsep  # noqa: E402

PATHS = {"sparse": (True, True), "dense-encoder": (False, True), "reference": (False, False)}


def padded(sae):
    """sae's selection, packed into padded rows (a host sync) before the step uses it."""
    select = type(sae).select

    def select_padded(pre):
        codes = select(sae, pre)
        return featsep.Codes.from_topk(codes.values, codes.indices, sae.cfg.d_sae, codes.selected, nonnegative=True)
    return select_padded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", nargs="+", default=["batchtopk"], choices=["batchtopk", "matryoshka"])
    ap.add_argument("--size", default="256,4096,32", help="d_in,d_sae,k")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    d, n, k = map(int, args.size.split(","))
    x = torch.randn(args.batch, d, generator=torch.Generator().manual_seed(0))
    cases = {}
    for arch in args.arch:
        for path, (enc, dec) in PATHS.items():
            for form in ("flat", "padded"):
                torch.manual_seed(0)
                sae = featsep.make_sae(arch, d_in=d, d_sae=n, k=k, sparse_encoder=enc, sparse_decoder=dec)
                if form == "padded":
                    sae.select = padded(sae)
                cases[(arch, path, form)] = (sae, torch.optim.Adam(sae.parameters(), lr=1e-4))
    times = {c: [] for c in cases}
    for r in range(args.reps + 1):  # the first round warms up (Adam state, allocator)
        for c, (sae, opt) in cases.items():
            start = time.perf_counter()
            out = sae.training_forward(x, r, 1000)
            loss = sum(out.coefficients.get(name, 1.0) * v for name, v in out.terms.items())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if r:
                times[c].append(1e3 * (time.perf_counter() - start))
    print(f"d_in={d} d_sae={n} k={k} batch={args.batch} threads={torch.get_num_threads()}, median of {args.reps}")
    for arch in args.arch:
        for path in PATHS:
            flat, pad = (statistics.median(times[(arch, path, f)]) for f in ("flat", "padded"))
            print(f"{arch:>10} {path:>13}: flat {flat:8.1f} ms  padded {pad:8.1f} ms  ({pad / flat:.2f}x)")


if __name__ == "__main__":
    main()
