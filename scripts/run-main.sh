#!/usr/bin/env bash
# Set up on a fresh machine (if needed) and run the main job on the offline default:
# train a TopK SAE on Gemma 3 270M (layer 8) over the built-in bbc-news corpus, then evaluate it.
# Extra arguments go to `featsep train`, e.g. --set train.tokens=200000.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
featsep train examples/offline-default.toml "$@"
