"""Atomic file writes: results are never left half-written (temp file in the same dir, then rename)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

TEMP_SUFFIX = ".tmp"  # temp files are ".<target name>.<random>.tmp" next to their target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_target(path: str | Path) -> Iterator[Path]:
    """Yield a temp path next to `path` for a writer that needs a file name (safetensors,
    np.save); on success it is fsynced, given the mode a plain open() would (0666 less the
    user's umask: mkstemp makes 0600) and renamed over `path`; on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temp files that writes killed midway left in `folder` (not in its subfolders);
    a kill skips the cleanup above, so nothing else ever removes them. Call it only where no
    write into `folder` can be in flight. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


class DiskFullError(ValueError):
    """The disk filled up (ENOSPC) during a write: a ValueError so the CLI prints it as one line."""


def raise_if_disk_full(error: BaseException, target: str | Path, fix: str = "free space or choose another out_dir") -> None:
    """Re-raise an ENOSPC OSError as a DiskFullError naming `target` and the fix; any other error
    is left for the caller to re-raise."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        raise DiskFullError(f"no space left on device while writing {target}; {fix}") from error


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in blocks (checkpoints and weights can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def format_bytes(n: float) -> str:
    """A size for people: 1000 B, 49.1 KB, 2.3 GB, 1.2 TB."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_target(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def ensure_writable_dir(path: str | Path, what: str) -> Path:
    """Create output directory `path` (with its parents) or say in one line why it cannot be
    one, so that a long job is refused before it starts rather than at its first write.
    `what` names the setting in the user's words ("out_dir", "--out-dir")."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{what} {path} is a file, not a directory; choose another {what} (or move the file)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a parent is a file
        raise FileExistsError(f"{what} {path} cannot be created: a parent of it is a file; "
                              f"choose another {what}") from None
    except OSError as e:  # permission denied, read-only file system, ...
        raise ValueError(f"{what} {path} cannot be created ({e.strerror.lower()}); choose a writable {what}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path} is not writable (permission denied); choose a writable {what} "
                         "or fix its permissions")
    return path
