"""kill -9 at the points that matter, then `featsep train --resume`: the resumed run ends with
the same weights, bit for bit, as one that was never interrupted, and leaves no temp files.

The run goes in a child process that SIGKILLs itself at the chosen point (no handler runs, no
`finally`, as with a real kill -9); the resume runs through the CLI as a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from featsep.cli import app

ROOT = Path(__file__).resolve().parents[1]

# The child: patches one write path to kill the process at the chosen point, then trains.
CHILD = r'''
import os, signal, sys
from pathlib import Path
import featsep.io as fio
from featsep.rundir import RunDir

point, config = sys.argv[1], sys.argv[2]
calls = {"metrics": 0, "ckpt": 0}

if point == "after-first-metrics-row":
    append = RunDir.append_metrics
    def append_then_die(self, row):
        append(self, row)
        os.kill(os.getpid(), signal.SIGKILL)
    RunDir.append_metrics = append_then_die
else:
    target = fio.atomic_target
    class Dying:
        def __init__(self, path):
            self.path, self.inner = Path(path), target(path)
        def __enter__(self):
            return self.inner.__enter__()
        def __exit__(self, *exc):
            is_ckpt = self.path.name.startswith("step_") and self.path.suffix == ".pt"
            if is_ckpt:
                calls["ckpt"] += 1
            if is_ckpt and calls["ckpt"] == 2 and point == "during-second-checkpoint-write":
                os.kill(os.getpid(), signal.SIGKILL)  # temp file written, never renamed
            out = self.inner.__exit__(*exc)
            if is_ckpt and calls["ckpt"] == 2 and point == "after-second-checkpoint":
                os.kill(os.getpid(), signal.SIGKILL)
            return out
    fio.atomic_target = Dying

from featsep.cli import app
app(["train", config], standalone_mode=False)
print("finished without being killed")
'''


def _config(tmp_path: Path, model_dir, corpus, out: Path) -> str:
    path = tmp_path / f"{out.name}.toml"
    path.write_text("\n".join([
        f'out_dir = "{out}"',
        "[model]", f'name = "{model_dir}"', 'hook = "blocks.1.hook_resid_post"', "batch_size = 4",
        "[data]", f'dataset = "{corpus}"', "context_length = 16", "shuffle_buffer = 8", "norm_estimate_batches = 2",
        "[sae]", 'architecture = "topk"', "d_sae = 64", "k = 4",
        "[[penalties]]", 'name = "temporal"', 'mode = "specified"', "window_size = 200",
        "[train]", "tokens = 1024", "batch_size = 128", "checkpoint_every = 2", "log_every = 1", "lr = 1e-3",
    ]) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_llama_dir, checkpoint_corpus):
    tmp = tmp_path_factory.mktemp("whole")
    out = tmp / "run"
    result = CliRunner().invoke(app, ["train", _config(tmp, tiny_llama_dir, checkpoint_corpus, out)])
    assert result.exit_code == 0, result.output
    return out


def _rows(run: Path) -> list[dict]:
    timing = ("tokens_per_s", "sae_tokens_per_s", "state_memory_bytes")
    return [{k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("point", ["after-first-metrics-row", "during-second-checkpoint-write", "after-second-checkpoint"])
def test_kill_9_then_resume_equals_an_uninterrupted_run(point, tmp_path, tiny_llama_dir, checkpoint_corpus, uninterrupted):
    out = tmp_path / "run"
    config = _config(tmp_path, tiny_llama_dir, checkpoint_corpus, out)
    child = subprocess.run([sys.executable, "-c", CHILD, point, config], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr[-3000:]
    assert not (out / "sae").exists()  # it really died before the end
    if point == "during-second-checkpoint-write":
        assert list((out / "checkpoints").glob(".step_*.tmp")), "the kill should leave the temp file it was writing"

    resumed = CliRunner().invoke(app, ["train", "--resume", str(out)])
    assert resumed.exit_code == 0, resumed.output
    if point == "after-first-metrics-row":
        assert "starting from step 0" in resumed.output

    mine, theirs = load_file(out / "sae" / "sae_weights.safetensors"), load_file(uninterrupted / "sae" / "sae_weights.safetensors")
    assert mine.keys() == theirs.keys()
    for name in mine:
        assert mine[name].equal(theirs[name]), f"{name} differs after kill at {point}"
    assert _rows(out) == _rows(uninterrupted)
    assert not [p for p in out.rglob("*.tmp")], "temp files of the killed write are left behind"
