"""Checkpoint files: everything a killed run needs to continue bit for bit.

Each run dir keeps its own checkpoints/step_XXXXXXXXX.pt (the last `keep`): the SAE, its
optimizer, LR scheduler and penalties, plus the state shared by a sweep (step, tokens, RNG
states, data position), repeated in every run dir so that each one is self-contained.
A sweep resumes from the latest step that every one of its run dirs holds.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from featsep.io import write_bytes_atomic
from featsep.rundir import RunDir

FORMAT_VERSION = 1


def capture_rng() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def latest_common_step(run_dirs: list[Path]) -> Optional[int]:
    """The latest step checkpointed in every run dir, or None."""
    common = None
    for run_dir in run_dirs:
        steps = set(RunDir(run_dir).checkpoint_steps())
        common = steps if common is None else common & steps
    return max(common) if common else None


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write atomically, then delete all but the newest `keep` checkpoints."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, "step": step, **state}, buffer)
    path = RunDir(run_dir).checkpoint_path(step)
    write_bytes_atomic(path, buffer.getvalue())
    for old_step, old_path in sorted(RunDir(run_dir).checkpoint_steps().items())[:-keep]:
        old_path.unlink(missing_ok=True)
    return path


def clear_checkpoints(run_dir: Path) -> None:
    for path in RunDir(run_dir).checkpoint_steps().values():
        path.unlink(missing_ok=True)


def load_checkpoint(run_dir: Path, step: int) -> dict[str, Any]:
    path = RunDir(run_dir).checkpoint_steps().get(step)
    if path is None:
        raise FileNotFoundError(f"no checkpoint for step {step} in {RunDir(run_dir).checkpoint_dir}")
    try:
        # our own files; they hold numpy/python RNG states and the data stream's state
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"checkpoint {path} cannot be read ({e}); delete it to resume from the one before") from None
    if state.get("format") != FORMAT_VERSION:
        raise ValueError(f"checkpoint {path} has format {state.get('format')}, expected {FORMAT_VERSION}")
    return state
