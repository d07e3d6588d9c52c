"""Checkpoint files: everything a killed run needs to continue bit for bit.

Each run dir keeps its own checkpoints/step_XXXXXXXXX.pt (the last `keep`): the SAE, its
optimizer, LR scheduler and penalties, plus the state shared by a sweep (step, tokens, RNG
states, data position), repeated in every run dir so that each one is self-contained.
A sweep resumes from the latest step that every one of its run dirs holds intact: next to each
step_XXXXXXXXX.pt, step_XXXXXXXXX.pt.sha256 (in `sha256sum` format) records its checksum.

Checkpoints hold only tensors and plain values (dicts, lists, tuples, numbers, strings, None)
and load with `torch.load(weights_only=True)`: a run dir is data, and resuming from one must
never run code a crafted file smuggled into its pickle.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import random
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from featsep.io import file_sha256, write_bytes_atomic, write_text_atomic
from featsep.rundir import RunDir

FORMAT_VERSION = 2  # 2: loadable with weights_only=True (format 1 pickled numpy's RNG state)

# Leaves weights_only=True loads, besides tensors; checked when saving, so a state that could not
# be loaded back fails at the first checkpoint, not at the resume. Exact types: numpy scalars
# subclass float and namedtuples subclass tuple, and weights_only refuses both.
_PLAIN = (int, float, bool, str, bytes, type(None), torch.dtype, torch.device, torch.Size)


def capture_rng() -> dict[str, Any]:
    """The global RNG states as tensors and plain values (numpy's key array and python's
    Mersenne-Twister words as int64 tensors)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, words, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached_gaussian)),
        "python": (int(version), torch.tensor(words, dtype=torch.int64), gauss_next),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    version, words, gauss_next = state["python"]
    random.setstate((version, tuple(words.tolist()), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def latest_common_step(run_dirs: list[Path], notify: Callable[[str], None] = warnings.warn) -> Optional[int]:
    """The latest step checkpointed intact in every run dir, or None when no step is in all of
    them. A later common step whose checkpoint is corrupted is passed over, said through
    `notify` (a warning by default; the trainer prints it as one line); a ValueError when every
    common step has a corrupted checkpoint somewhere."""
    common = None
    for run_dir in run_dirs:
        steps = set(RunDir(run_dir).checkpoint_steps())
        common = steps if common is None else common & steps
    if not common:
        return None
    corrupted: list[Path] = []
    for step in sorted(common, reverse=True):
        bad = [path for path in (RunDir(d).checkpoint_path(step) for d in run_dirs) if not checksum_matches(path)]
        if not bad:
            if corrupted:
                notify(f"checkpoint {corrupted[0]} is corrupted (its sha256 differs from {sidecar(corrupted[0]).name}); "
                       f"resuming from the previous good checkpoint, step {step}")
            return step
        corrupted += bad
    raise ValueError(f"checkpoint {corrupted[0]} is corrupted (its sha256 differs from {sidecar(corrupted[0]).name}) "
                     f"and no earlier intact checkpoint is left; delete {corrupted[0].parent} to restart from step 0")


def sidecar(path: Path) -> Path:
    """The checksum file of checkpoint `path`."""
    return path.with_name(path.name + ".sha256")


def checksum_matches(path: Path) -> bool:
    """Whether checkpoint `path` matches its recorded sha256 (True when none was recorded:
    checkpoints written before checksums)."""
    if not sidecar(path).is_file():
        return True
    recorded = sidecar(path).read_text(errors="replace").split()
    return bool(recorded) and recorded[0] == file_sha256(path)


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write atomically (the checksum first, so a checkpoint never lacks it), then delete all but
    the newest `keep` checkpoints."""
    check_plain(state, "checkpoint")
    buffer = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, "step": step, **state}, buffer)
    data = buffer.getvalue()
    path = RunDir(run_dir).checkpoint_path(step)
    write_text_atomic(sidecar(path), f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")
    try:
        write_bytes_atomic(path, data)
    except BaseException:  # e.g. a full disk: no checksum of a checkpoint that was never written
        if not path.exists():
            sidecar(path).unlink(missing_ok=True)
        raise
    for old_step, old_path in sorted(RunDir(run_dir).checkpoint_steps().items())[:-keep]:
        _remove(old_path)
    return path


def _remove(path: Path) -> None:
    """A checkpoint, then its checksum (a checkpoint without one would load unchecked)."""
    path.unlink(missing_ok=True)
    sidecar(path).unlink(missing_ok=True)


def check_plain(obj: Any, where: str) -> None:
    """TypeError naming the first value that weights_only=True would refuse to load."""
    if type(obj) in (dict, OrderedDict):
        for key, value in obj.items():
            check_plain(key, f"{where} key {key!r}")
            check_plain(value, f"{where}[{key!r}]")
    elif type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
    elif not (isinstance(obj, torch.Tensor) or type(obj) in _PLAIN):
        raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; state dicts must hold "
                        "only tensors and plain values (numbers, strings, None, lists, tuples, dicts) so that "
                        "checkpoints load without running code")


def clear_checkpoints(run_dir: Path) -> None:
    """Every checkpoint and checksum, also those of checkpoints a kill kept from being written."""
    folder = RunDir(run_dir).checkpoint_dir
    for path in RunDir(run_dir).checkpoint_steps().values():
        _remove(path)
    if folder.is_dir():
        for path in folder.glob("step_*.pt.sha256"):
            path.unlink(missing_ok=True)


def load_checkpoint(run_dir: Path, step: int) -> dict[str, Any]:
    path = RunDir(run_dir).checkpoint_steps().get(step)
    if path is None:
        raise FileNotFoundError(f"no checkpoint for step {step} in {RunDir(run_dir).checkpoint_dir}")
    if not checksum_matches(path):
        raise ValueError(f"checkpoint {path} is corrupted (its sha256 differs from {sidecar(path).name}); "
                         "delete it to resume from the one before")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # it holds objects beyond tensors and plain values: never unpickled
        raise ValueError(_unsafe_message(path)) from None
    except Exception as e:
        raise ValueError(f"checkpoint {path} cannot be read ({e}); delete it to resume from the one before") from None
    found = state.get("format") if isinstance(state, dict) else None
    if found != FORMAT_VERSION:
        if isinstance(found, int) and found < FORMAT_VERSION:
            raise ValueError(_predates_message(path))
        raise ValueError(f"checkpoint {path} has format {found!r}, expected {FORMAT_VERSION}; "
                         "it was not written by this featsep")
    return state


def _predates_message(path: Path) -> str:
    return (f"checkpoint {path} predates featsep's safe checkpoint format (format {FORMAT_VERSION}, tensors and "
            f"plain values only) and is not loaded; to restart the run from step 0 delete {path.parent} and "
            "resume again, or finish it with the featsep release that wrote it")


def _unsafe_message(path: Path) -> str:
    """Which of the two refused kinds the file is, told from its pickle's globals (never run)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a torch.save archive at all
        names = []
    if names and all(name.startswith("numpy.") for name in names):  # format 1: numpy's RNG state
        return _predates_message(path)
    what = f" ({', '.join(names)})" if names else ""
    return (f"checkpoint {path} holds objects other than tensors and plain values{what}; featsep does not "
            "write such files and does not load them (delete it if you do not trust it)")
