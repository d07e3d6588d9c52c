#!/usr/bin/env bash
# Stand-ins for released SAEs, offline: two TopK SAEs trained briefly on the offline study's cache,
# written in SAELens and sparsify layouts by `featsep export` (what examples/baselines-offline.toml
# reads as [[baselines]]). Needs the cache of examples/separation-study-offline.toml's first line.
set -euo pipefail
cache=${CACHE:-cache/g270m-l8-bbc}
for k in 16 64; do
  featsep train examples/offline-default.toml --set out_dir=\"runs/released-src/topk-k$k\" \
    --set sae.d_sae=2048 --set sae.k=$k --set train.tokens=131072 --set data.cache=\"$cache\" \
    --set 'eval.evals=[]'
done
featsep export runs/released-src/topk-k16/sae runs/released/saelens/topk-k16 --format saelens --force
featsep export runs/released-src/topk-k64/sae runs/released/sparsify/topk-k64/blocks.8.hook_resid_post \
  --format sparsify --force
