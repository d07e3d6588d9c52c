"""benchmarks/gpu.sh at CPU size (FEATSEP_GPU_SMOKE=1): until a GPU runs it, this keeps the
one-GPU benchmark working end to end (harvest, the 7-SAE sweep, core and sparse probing, the
printed table). Needs the real offline Gemma and about a minute: slow."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SAES = ["topk", "batchtopk", "matryoshka", "jumprelu", "relu_l1", "topk+momentum", "topk+temporal"]
K_SMOKE = 16


def test_gpu_benchmark_runs_end_to_end_at_cpu_size(tmp_path):
    env = {**os.environ, "FEATSEP_GPU_SMOKE": "1", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(tmp_path / "gb")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {m.group(1): (float(m.group(2).replace(",", "")), float(m.group(3)), float(m.group(4)))
            for m in re.finditer(r"^(\S+)\s+([\d,]+)\s+([\d.]+)\s+([\d.]+)$", done.stdout, re.MULTILINE)}
    assert sorted(rows) == sorted(SAES)
    for name, (tokens_per_s, l0, fvu) in rows.items():
        assert tokens_per_s > 0 and 0 < fvu < 1.5, (name, rows[name])
        if name.split("+")[0] in ("topk", "batchtopk", "matryoshka"):
            assert l0 == pytest.approx(K_SMOKE, abs=0.05), name  # BatchTopK keeps k per token on average
    assert "peak GPU memory: no GPU (CPU run)" in done.stdout
    sweep = tmp_path / "gb" / "sweep"
    for run in sorted(sweep.glob("run_*")):
        assert (run / "eval_results" / "core_eval_results.json").is_file(), run
        assert (run / "eval_results" / "sparse_probing_eval_results.json").is_file(), run
    assert len(list(sweep.glob("run_*"))) == len(SAES)
