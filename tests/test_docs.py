"""docs/architecture.md's worked examples run as written (a map that lies is worse than none)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"

CHECK = """
import torch
from featsep import make_penalty, make_sae
from featsep.sae import architectures
from featsep.penalties import penalties
assert "relu_sqrt" in architectures() and "decoder_cosine" in penalties()
sae = make_sae("relu_sqrt", d_in=8, d_sae=16, sparsity_coefficient=0.1)
out = sae.training_forward(torch.randn(32, 8), 0, 10)
assert set(out.terms) == {"mse", "sparsity"} and out.coefficients == {"sparsity": 0.1}
pen = make_penalty("decoder_cosine", d_sae=16)
codes = torch.relu(torch.randn(32, 16))
loss = pen(codes)["decoder_cosine"]
active = (codes != 0).float(); co = active.T @ active / 32
assert torch.allclose(loss, (co.sum() - co.diag().sum()) / 16)
print("examples ok")
"""


def test_architecture_and_penalty_examples_run(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    wanted = [b for b in blocks if "@register(" in b]
    assert len(wanted) == 2, "the architecture and penalty examples are the two @register blocks"
    script = tmp_path / "examples.py"
    script.write_text("\n\n".join(wanted) + "\n" + CHECK)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=DOC.parents[1])
    assert done.returncode == 0 and "examples ok" in done.stdout, done.stderr[-2000:]

