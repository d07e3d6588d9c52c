#!/usr/bin/env bash
# One GPU, under 8 minutes (budgeted by reading, not yet measured on a GPU): every SAE
# architecture and both feature-separation penalties trained together on Gemma 3 270M's layer-8
# residual stream (the offline default model, bbc-news), then core and sparse probing; prints
# each SAE's training tokens/s, the pass's peak GPU memory, and the TopK SAE's speed against
# eai-sparsify's TopK SparseCoder on the same activations where `import sparsify` works.
#
#   benchmarks/gpu.sh [OUT_DIR]                      # default runs/gpu-bench
#   FEATSEP_GPU_SMOKE=1 benchmarks/gpu.sh /tmp/gb     # CPU-size budget: the same steps end to end
#   PYTHON=/path/to/python benchmarks/gpu.sh         # default: python
#
# Budget (GPU): harvest 2M tokens into a cache (one LM pass), 7 SAEs of 16384 latents trained in
# one pass over 4M tokens (the cache read twice), core (8 + 16 batches) and sparse probing on
# bbc-news. The model must be converted already (`featsep models`: cached yes): no network.
set -euo pipefail

PY=${PYTHON:-python}
OUT=${1:-runs/gpu-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

if [[ "${FEATSEP_GPU_SMOKE:-0}" == 1 ]]; then
  CACHE_TOKENS=4096 TOKENS=4096 BATCH=512 D_SAE=1024 K=16 CTX=64 LM_BATCH=4 PREFIXES="[128, 512, 1024]"
  CORE="n_eval_reconstruction_batches = 1
n_eval_sparsity_variance_batches = 1
context_size = 64
batch_size_prompts = 2"
  PROBE="datasets = [\"bbc-news\"]
context_length = 64
probe_train_set_size = 20
probe_test_set_size = 10
probe_epochs = 5
k_values = [1, 5]"
  DEVICE=cpu
else
  CACHE_TOKENS=2000000 TOKENS=4000000 BATCH=4096 D_SAE=16384 K=64 CTX=128 LM_BATCH=64 PREFIXES="[1024, 4096, 16384]"
  CORE="n_eval_reconstruction_batches = 8
n_eval_sparsity_variance_batches = 16"
  PROBE="datasets = [\"bbc-news\"]"
  DEVICE=auto
fi

mkdir -p "$OUT"
CONFIG="$OUT/gpu-bench.toml"
cat > "$CONFIG" <<EOF
name = "gpu-bench"
out_dir = "$OUT/sweep"

[model]
name = "gemma-3-270m"
hook = "blocks.8.hook_resid_post"
batch_size = $LM_BATCH
device = "$DEVICE"

[data]
dataset = "bbc-news"
cache = "$OUT/cache"
context_length = $CTX
shuffle_buffer = 64

[train]
tokens = $TOKENS
batch_size = $BATCH
checkpoint_every = 100000
log_every = 5
device = "$DEVICE"

[eval]
evals = ["core", "sparse_probing"]

[eval.settings.core]
$CORE

[eval.settings.sparse_probing]
$PROBE

[[methods]]
name = "topk"
sae = { architecture = "topk", d_sae = $D_SAE, k = $K }

[[methods]]
name = "batchtopk"
sae = { architecture = "batchtopk", d_sae = $D_SAE, k = $K }

[[methods]]
name = "matryoshka"
sae = { architecture = "matryoshka", d_sae = $D_SAE, k = $K, prefix_sizes = $PREFIXES }

[[methods]]
name = "jumprelu"
sae = { architecture = "jumprelu", d_sae = $D_SAE }

[[methods]]
name = "relu_l1"
sae = { architecture = "relu_l1", d_sae = $D_SAE }

[[methods]]
name = "topk+momentum"
sae = { architecture = "topk", d_sae = $D_SAE, k = $K }
penalties = [{ name = "momentum" }]

[[methods]]
name = "topk+temporal"
sae = { architecture = "topk", d_sae = $D_SAE, k = $K }
penalties = [{ name = "temporal" }]
EOF

start=$(date +%s)
"$PY" -m featsep cache "$CONFIG" --tokens "$CACHE_TOKENS"
harvested=$(date +%s)

# Train and evaluate in one process, so that its peak GPU memory can be read at the end.
"$PY" - "$CONFIG" <<'EOF'
import json, statistics, sys, time
from pathlib import Path

import torch

from featsep.config import SweepConfig, load_config
from featsep.sweep import run_sweep

cfg = load_config(sys.argv[1], [], model=SweepConfig)
cuda = torch.cuda.is_available() and cfg.train.device != "cpu"
t0 = time.perf_counter()
out = run_sweep(cfg, evaluate=False)
trained = time.perf_counter() - t0
peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
run_sweep(cfg, evaluate=True)  # the runs are trained: this evaluates them
evaluated = time.perf_counter() - t0 - trained

labels = json.loads((out / "sweep.json").read_text())["labels"]
print(f"\n{'SAE':<16} {'SAE tokens/s':>14} {'L0':>8} {'FVU':>8}")
speeds = {}
for run, label in labels.items():
    rows = [json.loads(line) for line in (out / run / "metrics.jsonl").read_text().splitlines()]
    steady = rows[1:] or rows  # the first window holds the compile/allocator warm-up
    speed = statistics.median(r["sae_tokens_per_s"] for r in steady)
    speeds[label] = speed
    last = rows[-1]
    print(f"{label:<16} {speed:>14,.0f} {last.get('l0', float('nan')):>8.1f} {last.get('fvu', float('nan')):>8.3f}")
pass_speed = statistics.median(json.loads(l)["tokens_per_s"] for l in (out / "run_0" / "metrics.jsonl").read_text().splitlines()[1:] or ["{\"tokens_per_s\": 0}"])
print(f"\none pass of {len(labels)} SAEs: {pass_speed:,.0f} tokens/s; train {trained:.0f} s, evals {evaluated:.0f} s")
print(f"peak GPU memory (training pass): {peak:.2f} GiB" if peak is not None else "peak GPU memory: no GPU (CPU run)")
Path(sys.argv[1]).with_name("featsep_topk_tokens_per_s").write_text(str(speeds["topk"]))
EOF

# eai-sparsify's TopK SparseCoder on the same cached activations (same d_sae, k, batch, Adam).
"$PY" - "$CONFIG" <<'EOF' || echo "eai-sparsify: not measured (see the error above)"
import sys, time
from pathlib import Path

import torch

try:
    import sparsify
except ImportError:
    print("eai-sparsify is not installed here: ratio not measured (pip install eai-sparsify)")
    sys.exit(0)
from featsep.config import SweepConfig, load_config
from featsep.data import ActivationStream
from featsep.sweep import expand_sweep

cfg = load_config(sys.argv[1], [], model=SweepConfig)
device = "cuda" if torch.cuda.is_available() and cfg.train.device != "cpu" else "cpu"
topk = expand_sweep(cfg)[0].sae  # run_0: the plain TopK SAE
d_sae, k = topk.d_sae, topk.k
stream = ActivationStream.from_cache(cfg.data.cache, batch_size=cfg.train.batch_size)
if hasattr(sparsify, "SparseCoder"):
    coder = sparsify.SparseCoder(stream.d_in, sparsify.SparseCoderConfig(num_latents=d_sae, k=k), device=device)
else:  # older releases
    coder = sparsify.Sae(stream.d_in, sparsify.SaeConfig(num_latents=d_sae, k=k), device=device)
opt = torch.optim.Adam(coder.parameters(), lr=2e-4)
steps = max(4, cfg.train.tokens // cfg.train.batch_size // 4)
batches = [next(stream).to(device) for _ in range(steps + 2)]
def step(x):
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
        out = coder(x)
    out.fvu.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
for x in batches[:2]:
    step(x)
if device == "cuda":
    torch.cuda.synchronize()
t0 = time.perf_counter()
for x in batches[2:]:
    step(x)
if device == "cuda":
    torch.cuda.synchronize()
theirs = steps * cfg.train.batch_size / (time.perf_counter() - t0)
ours = float(Path(sys.argv[1]).with_name("featsep_topk_tokens_per_s").read_text())
print(f"eai-sparsify TopK: {theirs:,.0f} tokens/s; featsep TopK / sparsify = {ours / theirs:.2f}")
EOF

end=$(date +%s)
echo "gpu.sh: harvest $((harvested - start)) s, total $((end - start)) s -> $OUT"
