"""LR x d_sae x optimiser sweep: fits the default-LR rules of featsep/sae/* (docs/lr-sweep.md).

Every SAE of one (data, architecture, optimiser) group trains on the same batches in one
featsep.train call (each with its own lr), then is scored on held-out rows by
benchdata.score (FVU, dead fraction; recovery of the true features on synthetic data).
lr is given as c = lr * sqrt(d_sae / 16384), the constant of the rule lr = c / sqrt(d_sae / 16384).

    python benchmarks/lr_sweep.py                           # synthetic, TopK/BatchTopK/Matryoshka
    python benchmarks/lr_sweep.py --data gemma --archs topk # the gemma-3-270m layer-8 cache
    python benchmarks/lr_sweep.py --plot docs/lr-sweep.png --from results.json
    python benchmarks/lr_sweep.py --penalty-check          # penalties under each optimiser

--penalty-check: for each optimiser, TopK SAEs on the same synthetic batches with a momentum or
temporal penalty at its default weight, at 30x it, and at weight 0 (the penalty only watches: its
term and statistics without any effect on training). A penalty works under an optimiser when its
term ends lower with the weight on than with it at 0, and its statistics move the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

import featsep  # noqa: E402
from benchdata import gemma_rows, score, synthetic_rows  # noqa: E402

GRID = {"adam": [5e-4, 1e-3, 2e-3, 4e-3], "signsgd_schedulefree": [1.25e-3, 2.5e-3, 5e-3, 1e-2]}


def sweep(data_name: str, arch: str, optimizer: str, d_saes: list[int], cs: list[float], tokens: int,
          batch: int, k: int) -> list[dict]:
    data, train, heldout, density = (*synthetic_rows(tokens), None) if data_name == "synthetic" else gemma_rows(tokens)
    batches = list(train.split(batch))
    saes, lrs, keys = [], [], []
    for n in d_saes:
        for c in cs:
            torch.manual_seed(0)
            saes.append(featsep.make_sae(arch, d_in=train.shape[1], d_sae=n, k=k))
            lrs.append(c / (n / 16384) ** 0.5)
            keys.append((n, c))
    started = time.perf_counter()
    featsep.train(saes, batches, lr=lrs, optimizer=optimizer, progress=False, seed=0)
    seconds = time.perf_counter() - started
    rows = []
    for (n, c), lr, sae in zip(keys, lrs, saes):
        row = {"data": data_name, "arch": arch, "optimizer": optimizer, "d_sae": n, "c": c, "lr": lr,
               "tokens": len(train), **score(sae, heldout, data, density)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"# {data_name} {arch} {optimizer}: {len(saes)} SAEs in {seconds:.0f} s", flush=True)
    return rows


CHECKED_PENALTIES, WEIGHT_FACTORS = ("momentum", "temporal"), (0.0, 1.0, 30.0)


def penalty_check(optimizer: str, tokens: int, batch: int, d_sae: int, k: int, out: Path,
                  penalties=CHECKED_PENALTIES, factors=WEIGHT_FACTORS) -> list[dict]:
    import tempfile

    from featsep.rundir import RunDir

    data, train, _ = synthetic_rows(tokens)
    saes, pens, names = [], [], []
    for pen in penalties:
        default = featsep.make_penalty(pen, d_sae=d_sae).cfg.weight
        for factor in factors:
            torch.manual_seed(0)
            saes.append(featsep.make_sae("topk", d_in=train.shape[1], d_sae=d_sae, k=k))
            pens.append([featsep.make_penalty(pen, d_sae=d_sae, weight=default * factor)])
            names.append(f"{pen}_x{factor:g}")
    with tempfile.TemporaryDirectory() as tmp:
        featsep.train(saes, list(train.split(batch)), penalties=pens, names=names, optimizer=optimizer,
                      progress=False, seed=0, out_dir=tmp, log_every=5)
        rows = []
        for name, plist in zip(names, pens):
            metrics = RunDir(Path(tmp) / name).read_metrics()
            pen = plist[0]
            term = f"loss/{pen.name}"
            stats = {k: v for k, v in pen.stats().items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            row = {"optimizer": optimizer, "run": name, "first_term": metrics[0][term], "last_term": metrics[-1][term],
                   "fvu": metrics[-1]["fvu"], **{f"stat/{k}": v for k, v in stats.items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    with out.open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return rows


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["data"], r["arch"]) for r in rows})
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.6), squeeze=False)
    for ax, (data, arch) in zip(axes[0], groups):
        for opt, style in (("adam", "--"), ("signsgd_schedulefree", "-")):
            for n in sorted({r["d_sae"] for r in rows}):
                pts = sorted((r["c"], r["fvu"]) for r in rows
                             if (r["data"], r["arch"], r["optimizer"], r["d_sae"]) == (data, arch, opt, n))
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", label=f"{'SF' if opt != 'adam' else 'Adam'} n={n}")
        ax.set_xscale("log")
        ax.set_xlabel("c = lr * sqrt(d_sae / 16384)")
        ax.set_ylabel("held-out FVU")
        ax.set_title(f"{data} {arch}")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def table(rows: list[dict]) -> str:
    """The Markdown table of docs/lr-sweep.md: one line per result, best FVU of each group in bold."""
    best = {}
    for r in rows:
        key = (r["data"], r["arch"], r["optimizer"], r["d_sae"])
        best[key] = min(best.get(key, 9.0), r["fvu"])
    lines = ["| data | arch | optimizer | d_sae | c | lr | FVU | dead | mean best cos | recovered >= 0.9 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fvu = f"{r['fvu']:.3f}"
        if r["fvu"] == best[(r["data"], r["arch"], r["optimizer"], r["d_sae"])]:
            fvu = f"**{fvu}**"
        syn = f"{r['mean_best_cos']:.3f} | {100 * r['recovered_0.9']:.1f}%" if "mean_best_cos" in r else "- | -"
        lines.append(f"| {r['data']} | {r['arch']} | {r['optimizer']} | {r['d_sae']} | {r['c']:g} | {r['lr']:.2e} | "
                     f"{fvu} | {100 * r['dead']:.1f}% | {syn} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=["synthetic", "gemma"], default="synthetic")
    ap.add_argument("--archs", nargs="+", default=["topk", "batchtopk", "matryoshka"])
    ap.add_argument("--optimizers", nargs="+", default=list(GRID))
    ap.add_argument("--d-sae", type=int, nargs="+", default=[2048, 4096, 8192])
    ap.add_argument("--tokens", type=int, default=300_000)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--c-adam", type=float, nargs="+", default=GRID["adam"], help="the grid of c for adam")
    ap.add_argument("--c-sf", type=float, nargs="+", default=GRID["signsgd_schedulefree"],
                    help="the grid of c for signsgd_schedulefree")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="append the result rows (JSON lines) here")
    ap.add_argument("--penalty-check", type=Path, help="run the penalty check, rows appended to this file")
    ap.add_argument("--penalties", nargs="+", default=list(CHECKED_PENALTIES), help="penalties the check runs")
    ap.add_argument("--factors", nargs="+", type=float, default=list(WEIGHT_FACTORS),
                    help="multiples of each penalty's default weight the check runs")
    ap.add_argument("--plot", type=Path, help="draw the figure from --from's rows and print their table")
    ap.add_argument("--from", dest="source", type=Path, nargs="+", help="JSON-lines result files to plot")
    args = ap.parse_args()
    if args.plot:
        rows = [json.loads(line) for f in args.source for line in f.read_text().splitlines() if line.startswith("{")]
        plot(rows, args.plot)
        print(table(rows))
        return
    torch.set_num_threads(args.threads)
    if args.penalty_check:
        for opt in args.optimizers:
            penalty_check(opt, args.tokens, 1024, 2048, args.k, args.penalty_check, args.penalties, args.factors)
        return
    grid = {"adam": args.c_adam, "signsgd_schedulefree": args.c_sf}
    for arch in args.archs:
        for opt in args.optimizers:
            rows = sweep(args.data, arch, opt, args.d_sae, grid[opt], args.tokens, args.batch, args.k)
            if args.out:
                with args.out.open("a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
