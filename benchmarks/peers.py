"""featsep vs eai-sparsify on the same activations, defaults vs defaults, same tokens.

For each budget the activations are written once to an .npy file; featsep trains on it
(featsep.make_sae("topk", d_sae, k) and featsep.train with their defaults), eai-sparsify trains
on it in its own virtualenv with its own Trainer and defaults (benchmarks/peers_sparsify_child.py),
then featsep.load_sae reads sparsify's folder and ONE function (benchdata.score) scores both
on the same held-out rows. Same SAE size for both (d_sae latents, k 32), same tokens per step
(4096), torch.set_num_threads(2) in both processes. tokens/s: the training call's wall time
(featsep.train / sparsify's Trainer.fit), data reading included, for both; the file is read
through once before each trainer (warm_page_cache), so neither measures the disk (a throttled
disk has read 8 MB/s on some machines here: 8k tokens/s of d 256, whoever reads first) and
the machine needs RAM for the file (10 GB at syn10m) or it says so.

    python benchmarks/peers.py --setup                 # build .bench-venvs/peers-sparsify once
    python benchmarks/peers.py                         # synthetic 1M + gemma-3-270m L8 1M
    python benchmarks/peers.py --budgets syn10m        # the long one (~10 min per trainer)

Without the virtualenv the sparsify side is skipped with a message. Activation files and
run dirs go to --work (default runs/peers, gitignored).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

import featsep  # noqa: E402
from benchdata import GEMMA_CACHE, HELDOUT_ROWS, SYNTHETIC, gemma_rows, score  # noqa: E402
from featsep.evals.synthetic import make_synthetic  # noqa: E402

VENV = ROOT / ".bench-venvs" / "peers-sparsify"
CHILD = ROOT / "benchmarks" / "peers_sparsify_child.py"
BUDGETS = {  # name: (data, tokens, d_sae)
    "syn1m": ("synthetic", 1_048_576, 4096),
    "syn10m": ("synthetic", 10_485_760, 4096),
    # bbc-news holds 1,093,811 tokens at context 128: 240 steps train, the last 110,771 are held out
    "gemma1m": ("gemma", 983_040, 4096),
}
K, BATCH, THREADS = 32, 4096, 2


def setup() -> None:
    """The sparsify virtualenv: torch==2.13.0 first, then eai-sparsify under a constraint
    pinning it, so pip never swaps in another torch."""
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    constraint = VENV / "constraints.txt"
    constraint.write_text("torch==2.13.0\n")
    subprocess.run([*pip, "-c", str(constraint), "eai-sparsify"], check=True)


def write_activations(name: str, work: Path):
    """(train .npy path, held-out rows, synthetic data or None, dead-count rows or None: the
    default, synthetic_density), the file written once."""
    data_name, tokens, _ = BUDGETS[name]
    path = work / f"{name}.npy"
    if data_name == "synthetic":
        data = make_synthetic(SYNTHETIC, seed=0)
        heldout, _ = data.sample(HELDOUT_ROWS, torch.Generator().manual_seed(2))
        if not path.exists():
            out = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", dtype=np.float32,
                                            shape=(tokens, SYNTHETIC.d))
            gen = torch.Generator().manual_seed(1)
            for start in range(0, tokens, 262_144):  # chunks: the active-feature masks are large
                rows, _ = data.sample(min(262_144, tokens - start), gen)
                out[start:start + len(rows)] = rows.numpy()
            out.flush()
            del out
            path.with_suffix(".tmp.npy").rename(path)
        return path, heldout, data, None
    _, train, heldout, density = gemma_rows(tokens)
    if not path.exists():
        np.save(path.with_suffix(".tmp.npy"), train.numpy())
        path.with_suffix(".tmp.npy").rename(path)
    return path, heldout, None, density


def warm_page_cache(path: Path, chunk: int = 1 << 26) -> float:
    """Read the file once (into the OS page cache) and return the seconds it took; warns when
    the file is larger than the memory available, since then the trainers read the disk."""
    size = path.stat().st_size
    try:
        available = int(next(line for line in Path("/proc/meminfo").read_text().splitlines()
                             if line.startswith("MemAvailable")).split()[1]) * 1024
    except (OSError, StopIteration):
        available = None
    if available is not None and size > available:
        print(f"warning: {path.name} ({size / 2**30:.1f} GiB) exceeds available memory "
              f"({available / 2**30:.1f} GiB): tokens/s will include disk reads")
    started = time.perf_counter()
    with path.open("rb", buffering=0) as f:
        while f.read(chunk):
            pass
    return time.perf_counter() - started


def run_featsep(acts: Path, d_sae: int, out: Path) -> tuple[featsep.SAE, float]:
    rows = np.load(acts, mmap_mode="r")
    starts = range(0, len(rows) - BATCH + 1, BATCH)
    batches = (torch.from_numpy(np.array(rows[i:i + BATCH])) for i in starts)  # read (copied) as it trains
    sae = featsep.make_sae("topk", d_in=rows.shape[1], d_sae=d_sae, k=K)
    started = time.perf_counter()
    featsep.train(sae, batches, steps=len(starts), out_dir=out, progress=False)
    return sae, time.perf_counter() - started


def run_sparsify(acts: Path, d_sae: int, out: Path) -> tuple[featsep.SAE, float]:
    result = subprocess.run([str(VENV / "bin" / "python"), str(CHILD), "--acts", str(acts), "--out", str(out),
                             "--num-latents", str(d_sae), "--k", str(K), "--batch-tokens", str(BATCH),
                             "--threads", str(THREADS)], capture_output=True, text=True, cwd=out.parent)
    if result.returncode != 0:
        raise RuntimeError(f"sparsify child failed:\n{result.stderr[-3000:]}")
    seconds = json.loads(result.stdout.strip().splitlines()[-1])["seconds"]
    return featsep.load_sae(out / "run" / "layers.0"), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setup", action="store_true", help=f"build {VENV.relative_to(ROOT)} (torch==2.13.0 + eai-sparsify)")
    ap.add_argument("--budgets", nargs="+", choices=list(BUDGETS), default=["syn1m", "gemma1m"])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "peers")
    ap.add_argument("--json", type=Path, help="append the result rows here")
    args = ap.parse_args()
    if args.setup:  # only the build: the benchmark is a separate, quiet run
        setup()
        return
    torch.set_num_threads(THREADS)
    have_sparsify = (VENV / "bin" / "python").exists()
    if not have_sparsify:
        print(f"eai-sparsify skipped: no virtualenv at {VENV}; build it with python benchmarks/peers.py --setup")
    rows = []
    for name in args.budgets:
        if BUDGETS[name][0] == "gemma" and not any(GEMMA_CACHE.glob("shard_*.npy")):
            print(f"{name} skipped: no cache at {GEMMA_CACHE}; build it with featsep cache "
                  f"examples/offline-default.toml --tokens 1100000 --out {GEMMA_CACHE}")
            continue
        work = args.work / name
        work.mkdir(parents=True, exist_ok=True)
        acts, heldout, data, density = write_activations(name, work)
        tokens = BATCH * (np.load(acts, mmap_mode="r").shape[0] // BATCH)
        trainers = [("featsep", run_featsep)] + ([("sparsify", run_sparsify)] if have_sparsify else [])
        for trainer, fn in trainers:
            out = work / trainer
            if out.exists():
                shutil.rmtree(out)
            warm_page_cache(acts)
            sae, seconds = fn(acts, BUDGETS[name][2], out)
            row = {"budget": name, "trainer": trainer, "tokens": tokens, "tokens_per_s": tokens / seconds,
                   **score(sae, heldout, data, density)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                with args.json.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    print("\n| budget | trainer | tokens | tok/s | ratio | FVU | dead | mean best cos | recovered >= 0.9 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        peer = next((r for r in rows if r["budget"] == row["budget"] and r["trainer"] == "sparsify"), None)
        ratio = f"{row['tokens_per_s'] / peer['tokens_per_s']:.2f}x" if peer else "-"
        syn = (f"{row['mean_best_cos']:.3f} | {100 * row['recovered_0.9']:.0f}%" if "mean_best_cos" in row else "- | -")
        print(f"| {row['budget']} | {row['trainer']} | {row['tokens'] / 1e6:.2f}M | {row['tokens_per_s'] / 1e3:.1f}k | "
              f"{ratio} | {row['fvu']:.3f} | {100 * row['dead']:.1f}% | {syn} |")


if __name__ == "__main__":
    main()
