"""The files of a run directory: config.json, metrics.jsonl, final_info.json.

Everything here is written atomically (temp file in the same folder, then os.replace), so a
killed process never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from featsep.io import write_bytes_atomic, write_json_atomic

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
FINAL_INFO_FILE = "final_info.json"
CHECKPOINT_DIR = "checkpoints"
SAE_DIR = "sae"

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")


def run_dirs(out_dir: Optional[str | Path], names: list[str]) -> list[Optional[Path]]:
    """One SAE: out_dir itself is its run dir; several: out_dir/<name> each."""
    if out_dir is None:
        return [None] * len(names)
    for name in names:
        if not _SAFE_NAME.match(name):
            raise ValueError(
                f"SAE name {name!r} cannot be a directory name; use letters, digits and ._=+-"
            )
    out = Path(out_dir)
    return [out] if len(names) == 1 else [out / name for name in names]


def has_checkpoints(run_dir: Path) -> bool:
    ckpt = Path(run_dir) / CHECKPOINT_DIR
    return ckpt.is_dir() and any(ckpt.glob("*.pt"))


def holds_training(run_dir: Path) -> bool:
    """Whether a previous training run already wrote into run_dir."""
    return (run_dir / METRICS_FILE).exists() or has_checkpoints(run_dir)


# --- metrics.jsonl -----------------------------------------------------------------------------
def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    """One JSON line per logged step (an append: a crash loses at most the line in flight)."""
    with open(run_dir / METRICS_FILE, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a kill
            rows.append(json.loads(line))
    return rows


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Drop rows logged after `last_step` (a resumed run logs those steps again)."""
    rows = [r for r in read_metrics(run_dir) if r.get("step", 0) <= last_step]
    write_bytes_atomic(run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in rows).encode())


# --- final_info.json ---------------------------------------------------------------------------
TRAINING_RESULTS_PREFIX = "training results for layer "


def training_results_key(layer: int) -> str:
    """The reference runs' section name, e.g. "training results for layer 12"."""
    return f"{TRAINING_RESULTS_PREFIX}{layer}"


def hook_layer(cfg: Any) -> int:
    """The SAE's layer: cfg.hook_layer, else parsed from a hook name like blocks.12.hook_..."""
    layer = getattr(cfg, "hook_layer", -1)
    if layer is not None and layer >= 0:
        return int(layer)
    from featsep.lm.hooks import parse_hook

    try:
        return parse_hook(getattr(cfg, "hook_name", ""))
    except (ValueError, TypeError):
        return -1


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of one file across processes (evals may run in parallel)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name("." + path.name + ".lock"), "w") as lock:  # hidden: not a result
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_final_info(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / FINAL_INFO_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it and re-run the stage that wrote it") from None


def update_final_info(
    run_dir: str | Path, key: str, value: Any, merge: Optional[Callable[[Any, Any], Any]] = None
) -> dict[str, Any]:
    """Set one section of run_dir/final_info.json (e.g. "core evaluation results"), keeping
    the others; atomic and safe against concurrent writers. Returns the whole file's content.
    merge(existing_or_None, value) combines sections that several evals share (SCR + TPP)."""
    path = Path(run_dir) / FINAL_INFO_FILE
    with _locked(path):
        info = read_final_info(run_dir)
        info[key] = merge(info.get(key), value) if merge is not None else value
        write_json_atomic(path, info)
    return info
