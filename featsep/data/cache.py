"""On-disk activation cache: harvest once, train many SAEs at disk speed.

Layout of a cache directory:
    manifest.json              what was cached (model, hook, dataset, tokens, dtype, d_in,
                               normalisation factor, context_length, ...) and one entry per shard
                               (files, row count, byte sizes, sha256 checksums, start position)
    shard_00000.npy            activations [rows, d_in] (float32 or float16), already normalised
                               when normalize=True (the factor is in the manifest)
    shard_00000.index.npy      int64 [rows, 3]: context id, position in context, token id

Every file is written to a temp file and renamed; the manifest is rewritten (atomically) after
each shard, so a killed build keeps its finished shards and `build_cache(..., resume=True)`
continues the token stream where the last finished shard ended (re-packing the text, not
re-running the LM), producing the same bytes as an uninterrupted build.
"""

from __future__ import annotations

import contextlib
import errno
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from featsep.data.errors import CacheError, DataError
from featsep.data.harvest import ActivationChunk, LiveSource, first_chunks_factor
from featsep.data.sources import ArraySource
from featsep.data.config import DataConfig
from featsep.distributed import World
from featsep.io import atomic_target, file_sha256, format_bytes, remove_stale_temp_files, write_json_atomic
from featsep.lm.config import ModelConfig

_DATA, _MODEL = DataConfig(), ModelConfig()  # the one place cache defaults come from
FORMAT = "featsep-activation-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DTYPES = {"float32": np.float32, "float16": np.float16}
MANIFEST_FIELDS = ("dtype", "d_in", "tokens", "context_length", "normalization_factor", "shards")
SHARD_FIELDS = ("file", "index_file", "rows", "bytes", "sha256", "index_bytes", "index_sha256")
REBUILD = ("fix: rebuild the cache (the same `featsep cache ...` command with --no-resume, or into a "
           "fresh --out directory)")
# Settings that must match for a resumed build to continue the same cache.
IDENTITY_FIELDS = (
    "model", "hook", "dataset", "text_column", "split", "seed", "context_length", "batch_size",
    "exclude_special_tokens", "dtype", "normalize", "shard_tokens", "d_in", "encoding", "world_size",
)
IDENTITY_BEFORE = {"encoding": "utf-8", "world_size": 1}  # values of identity fields that older manifests do not record


def _shard_name(i: int, part: str = "") -> str:
    return f"shard_{part}{i:05d}.npy"


def _index_name(i: int, part: str = "") -> str:
    return f"shard_{part}{i:05d}.index.npy"


def _part(rank: int, world_size: int) -> str:
    """The file-name part of a torchrun rank's shards ("" for one process): shard_r001_00000.npy."""
    return f"r{rank:03d}_" if world_size > 1 else ""


def _part_manifest(part: str) -> str:
    """The manifest a rank keeps of its own shards (resume reads it); manifest.json lists all."""
    return f"manifest.{part.rstrip('_')}.json" if part else MANIFEST


@contextlib.contextmanager
def _disk_full_is_one_line(path: Path) -> Iterator[None]:
    """A full disk while writing `path`: one line (the atomic write left the old file as it was)."""
    try:
        yield
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise CacheError(
            f"no space left on device while writing {path}; free space (then run the same command "
            "again: it resumes after the last finished shard) or choose another --out directory"
        ) from None


def _check_writable(out: Path) -> None:
    """Probe `out`, or the nearest folder above it that exists, with a temp file (os.access is
    wrong for root and for read-only mounts); creates nothing that stays."""
    folder = out
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise CacheError(
            f"cannot write to --out {out} ({e.strerror or e}); choose a directory you can write to"
        ) from None


def _save_npy_atomic(path: Path, array: np.ndarray) -> dict:
    """np.save atomically; returns size and checksum."""
    with _disk_full_is_one_line(path), atomic_target(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a name
            np.save(f, array, allow_pickle=False)
        digest = file_sha256(tmp)
    return {"bytes": path.stat().st_size, "sha256": digest}


def _save_shard(out: Path, i: int, acts: np.ndarray, index: np.ndarray, part: str = "") -> dict:
    """Both files of shard i, or neither (a failed index write removes the activations file)."""
    a = _save_npy_atomic(out / _shard_name(i, part), acts)
    try:
        x = _save_npy_atomic(out / _index_name(i, part), index)
    except BaseException:
        (out / _shard_name(i, part)).unlink(missing_ok=True)
        raise
    return {
        "file": _shard_name(i, part), "index_file": _index_name(i, part), "rows": len(acts),
        "bytes": a["bytes"], "sha256": a["sha256"], "index_bytes": x["bytes"], "index_sha256": x["sha256"],
    }


def shard_path(cache_dir: Path, name) -> Path:
    """cache_dir / name for a manifest's file name, which must be a plain name of a file inside
    cache_dir (an edited manifest must not make featsep read or delete files elsewhere)."""
    if not isinstance(name, str) or not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise CacheError(
            f"{cache_dir / MANIFEST} names the shard file {name!r}; shard files are plain file names "
            f"inside the cache directory: {REBUILD}"
        )
    path = cache_dir / name
    if not path.resolve().is_relative_to(cache_dir.resolve()):
        raise CacheError(f"{cache_dir / MANIFEST}: shard file {name!r} leads outside {cache_dir} (a link?); {REBUILD}")
    return path


def _npy_header(path: Path, bad) -> tuple[np.dtype, tuple]:
    """(dtype, shape) from a .npy header, without reading the data; bad(reason) -> the error to raise."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in readers:
                raise ValueError(f".npy format version {version} is not one np.save writes here")
            shape, _fortran, dtype = readers[version](f)
    except (ValueError, OSError, SyntaxError) as e:
        raise bad(e) from None
    return dtype, shape


def _layout(dtype, shape) -> str:
    return f"{np.dtype(dtype).name} {list(shape)}"


# ----------------------------------------------------------------------------- reading


class ActivationCache:
    """A finished cache directory, read back memory-mapped.

    Opening checks that every shard file exists with the recorded size (catches truncation);
    with verify=True each shard's sha256 is also checked the first time it is read (catches
    flipped bytes) - one extra pass over data that is read anyway.
    """

    def __init__(self, path, verify: bool = True):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise CacheError(
                f"{self.path} is not an activation cache (no {MANIFEST}); build one with "
                "`featsep cache --model M --hook H --dataset D --tokens N --out DIR`"
            )
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise CacheError(f"{manifest_path} is corrupted ({e}); rebuild the cache into a fresh directory") from None
        if self.manifest.get("format") != FORMAT or self.manifest.get("format_version") != FORMAT_VERSION:
            raise CacheError(
                f"{self.path} holds format {self.manifest.get('format')!r} v{self.manifest.get('format_version')}, "
                f"not {FORMAT} v{FORMAT_VERSION}; rebuild it with this featsep"
            )
        if self.manifest.get("status") != "complete":
            done = len(self.manifest.get("shards", []))
            raise CacheError(
                f"{self.path} is an unfinished cache ({done} shards written); finish it by running the "
                "same `featsep cache ...` command again (build_cache(..., resume=True))"
            )
        self._check_manifest()
        self.verify = verify
        self._verified: set[int] = set()
        for i, entry in enumerate(self.manifest["shards"]):
            for file_key, bytes_key in (("file", "bytes"), ("index_file", "index_bytes")):
                f, expected = shard_path(self.path, entry[file_key]), entry[bytes_key]
                if not f.is_file():
                    raise self._bad(i, f"{entry[file_key]} is missing")
                # The header first: a shard of another dtype can have the recorded size (int32).
                self._check_layout(i, file_key, *_npy_header(f, lambda e: self._bad(i, f"{entry[file_key]} cannot be read ({e})")))
                if f.stat().st_size != expected:
                    raise self._bad(i, f"{entry[file_key]} is {f.stat().st_size} bytes, expected {expected} (truncated?)")
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _bad(self, shard: int, what: str) -> CacheError:
        entry = self.manifest["shards"][shard]
        return CacheError(
            f"activation cache {self.path}: shard {shard} is corrupted: {what}. Fix: delete "
            f"{entry['file']} and {entry['index_file']} and run the same `featsep cache ...` "
            "command again with resume (it re-harvests only the missing shards), or rebuild the cache"
        )

    def _check_manifest(self) -> None:
        """An edited manifest fails here, in one line, not as a KeyError or a 5e20 loss later."""
        m = self.manifest
        missing = [k for k in MANIFEST_FIELDS if k not in m]
        if missing or not isinstance(m["shards"], list):
            what = f"lacks {', '.join(missing)}" if missing else "has no list of shards"
            raise CacheError(f"{self.path / MANIFEST} {what}; {REBUILD}")
        if m["dtype"] not in DTYPES:
            raise CacheError(
                f"{self.path / MANIFEST} says dtype {m['dtype']!r}, which a cache cannot hold "
                f"(only {', '.join(DTYPES)}); {REBUILD}"
            )
        for i, entry in enumerate(m["shards"]):
            if not isinstance(entry, dict) or any(k not in entry for k in SHARD_FIELDS):
                raise CacheError(f"{self.path / MANIFEST}: shard {i} lacks some of {', '.join(SHARD_FIELDS)}; {REBUILD}")
            for key in ("file", "index_file"):
                shard_path(self.path, entry[key])

    def _check_layout(self, i: int, file_key: str, dtype: np.dtype, shape: tuple) -> None:
        """Shard i's array (file_key: "file" or "index_file") has the manifest's dtype and shape."""
        rows = self.manifest["shards"][i]["rows"]
        want = (np.dtype(DTYPES[self.manifest["dtype"]]), (rows, self.d_in)) if file_key == "file" else (np.dtype(np.int64), (rows, 3))
        if (np.dtype(dtype), tuple(shape)) != want:
            name = self.manifest["shards"][i][file_key]
            raise CacheError(
                f"activation cache {self.path}: {name} holds {_layout(dtype, shape)} but the manifest says "
                f"{_layout(*want)}; {REBUILD}"
            )

    # ---- facts
    @property
    def d_in(self) -> int:
        return int(self.manifest["d_in"])

    @property
    def normalization_factor(self) -> Optional[float]:
        return self.manifest["normalization_factor"]

    @property
    def context_length(self) -> int:
        return int(self.manifest["context_length"])

    @property
    def n_shards(self) -> int:
        return len(self.manifest["shards"])

    def __len__(self) -> int:
        return int(self.manifest["tokens"])

    def __repr__(self) -> str:
        m = self.manifest
        return (f"ActivationCache({str(self.path)!r}, model={m['model']!r}, hook={m['hook']!r}, "
                f"rows={len(self)}, d_in={self.d_in}, dtype={m['dtype']}, shards={self.n_shards})")

    # ---- data
    def check_shard(self, i: int) -> None:
        """Verify shard i's checksums (once per open cache)."""
        if i in self._verified:
            return
        entry = self.manifest["shards"][i]
        for key, sha in (("file", "sha256"), ("index_file", "index_sha256")):
            if file_sha256(shard_path(self.path, entry[key])) != entry[sha]:
                raise self._bad(i, f"{entry[key]} does not match its sha256 checksum")
        self._verified.add(i)

    def shard(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(activations [rows, d] memmap, index [rows, 3] memmap) of shard i."""
        if i not in self._arrays:
            if self.verify:
                self.check_shard(i)
            entry = self.manifest["shards"][i]
            try:
                acts = np.load(shard_path(self.path, entry["file"]), mmap_mode="r")
                index = np.load(shard_path(self.path, entry["index_file"]), mmap_mode="r")
            except ValueError as e:
                raise self._bad(i, f"cannot be read ({e})") from None
            self._check_layout(i, "file", acts.dtype, acts.shape)  # the files may have changed since opening
            self._check_layout(i, "index_file", index.dtype, index.shape)
            self._arrays[i] = (acts, index)
        return self._arrays[i]

    def to_tensor(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All rows as (float32 activations [N, d], int64 index [N, 3]) in memory."""
        parts = [self.shard(i) for i in range(self.n_shards)]
        acts = torch.from_numpy(np.concatenate([np.asarray(a, dtype=np.float32) for a, _ in parts]))
        index = torch.from_numpy(np.concatenate([np.asarray(x, dtype=np.int64) for _, x in parts]))
        return acts, index

    def source(self, shuffle: bool = True, seed: int = 42, repeat: bool = True) -> ArraySource:
        """A chunk source over the shards for ActivationStream (shards opened lazily)."""
        lazy = [_LazyShard(self, i, e["rows"]) for i, e in enumerate(self.manifest["shards"])]
        return ArraySource([(s, s.index) for s in lazy], self.d_in, shuffle=shuffle, seed=seed, repeat=repeat)


class _LazyShard:
    """Row-sliceable view of one shard that opens (and verifies) the file on first access."""

    def __init__(self, cache: ActivationCache, i: int, rows: int):
        self.cache, self.i, self.rows = cache, i, rows
        self.index = _LazyIndex(self)

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, rows):
        return self.cache.shard(self.i)[0][rows]


class _LazyIndex:
    def __init__(self, shard: _LazyShard):
        self.shard = shard

    def __len__(self) -> int:
        return self.shard.rows

    def __getitem__(self, rows):
        return self.shard.cache.shard(self.shard.i)[1][rows]


# ----------------------------------------------------------------------------- building


def _read_manifest(out: Path, name: str = MANIFEST) -> Optional[dict]:
    path = out / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise CacheError(f"{path} is corrupted; delete {out} (or pass resume=False) and build again") from None


def _is_complete(out: Path, shards: list[dict], part: str = "") -> bool:
    old = _read_manifest(out, _part_manifest(part))
    return bool(shards) and old is not None and old.get("status") == "complete" and old["shards"] == shards


def _valid_prefix(out: Path, shards: list[dict], part: str = "") -> list[dict]:
    """The finished shards, up to the first missing/truncated/corrupted one (or one whose
    manifest entry was edited: only the names this module writes are read)."""
    good = []
    for i, entry in enumerate(shards):
        ok = (
            isinstance(entry, dict) and all(k in entry for k in (*SHARD_FIELDS, "start", "next"))
            and entry["file"] == _shard_name(i, part) and entry["index_file"] == _index_name(i, part)
        ) and all(
            (out / entry[f]).is_file()
            and (out / entry[f]).stat().st_size == entry[b]
            and file_sha256(out / entry[f]) == entry[s]
            for f, b, s in (("file", "bytes", "sha256"), ("index_file", "index_bytes", "index_sha256"))
        )
        if not ok:
            break
        good.append(entry)
    return good


def _reusable_shards(out: Path, settings: dict, tokens: int, resume: bool,
                     part: str = "") -> tuple[list[dict], Optional[float]]:
    """Shards of an earlier build of the same cache that can be kept, and its factor.

    Keeps the verified full shards up to the first bad one (a corrupted shard is rebuilt);
    deletes every other shard file (of this rank's `part` only, under torchrun). With
    resume=False, or no manifest, starts from scratch.
    """
    old = _read_manifest(out, _part_manifest(part))
    if old is None:
        if not part and any(out.glob("shard_*.npy")):
            raise CacheError(
                f"{out} holds shard files but no {MANIFEST}; it is not a featsep cache (or its manifest "
                "was lost): pass an empty --out directory"
            )
        return [], None
    shards: list[dict] = []
    factor = None
    if resume:
        recorded = {**IDENTITY_BEFORE, **old}
        mismatched = {k: (recorded.get(k), settings[k]) for k in IDENTITY_FIELDS if recorded.get(k) != settings[k]}
        if mismatched:
            detail = ", ".join(f"{k}: cache has {a!r}, asked {b!r}" for k, (a, b) in mismatched.items())
            raise CacheError(
                f"{out} already holds a cache built with other settings ({detail}); use another "
                "--out directory, or pass resume=False to overwrite it"
            )
        valid = _valid_prefix(out, old.get("shards", []), part)
        if old.get("status") == "complete" and old.get("tokens_requested") == tokens and len(valid) == len(old["shards"]):
            return valid, old.get("normalization_factor")
        # Only full shards can be continued; a short (final) shard is redone.
        shards = [s for s in valid if s["rows"] == settings["shard_tokens"]][: tokens // settings["shard_tokens"]]
        factor = old.get("normalization_factor")
    keep = {s["file"] for s in shards} | {s["index_file"] for s in shards}
    for f in out.glob(f"shard_{part}*.npy"):
        if f.name not in keep:
            f.unlink()
    if not resume:
        (out / _part_manifest(part)).unlink(missing_ok=True)
    return shards, factor


def build_cache(
    model,
    hook: str,
    dataset: str,
    tokens: int,
    out_dir,
    context_length: int = _DATA.context_length,
    batch_size: int = _MODEL.batch_size,
    shard_tokens: int = 1 << 18,
    normalize: bool = _DATA.normalize,
    dtype: str = "float32",
    resume: bool = True,
    text_column: str = _DATA.text_column,
    split: str = _DATA.split,
    seed: int = _DATA.seed,
    encoding: str = _DATA.encoding,
    norm_estimate_batches: int = _DATA.norm_estimate_batches,
    exclude_special_tokens: bool = _DATA.exclude_special_tokens,
    device: str = _MODEL.device,
    progress: bool = True,
    max_shards: Optional[int] = None,
    model_dtype: str = _MODEL.dtype,
    world: Optional[World] = None,
) -> Path:
    """Harvest `tokens` activation rows (special positions excluded) into `out_dir`; returns it.

    model: a featsep.lm.LanguageModel or a name for featsep.lm.load_lm. tokens counts rows
    written (not text tokens: BOS/EOS/pad positions are not cached). If the corpus runs out
    first, the cache is finished with what there is and a warning. max_shards stops after that
    many new shards, leaving an unfinished cache to resume (for tests and time-boxed jobs).

    world: a torchrun job (featsep.distributed.World). Rank r harvests every N-th LM batch of
    contexts (LiveSource) into its own shards (shard_r00r_*.npy, its own manifest.r00r.json, so
    each rank resumes its part), its share of `tokens`; the normalisation factor is one, from
    every rank's first chunks; rank 0 then writes manifest.json listing every rank's shards, a
    cache that any world size reads (a resume needs the same world size).
    """
    if tokens < 1:
        raise DataError(f"tokens must be >= 1, got {tokens}")
    if shard_tokens < 1:
        raise DataError(f"shard_tokens must be >= 1, got {shard_tokens}")
    if dtype not in DTYPES:
        raise DataError(f"cache dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} exists and is not a directory; pass a directory path")
    _check_writable(out)  # before the model loads: a minute of conversion, then "permission denied"

    if isinstance(model, str):
        from featsep.lm import load_lm

        lm = load_lm(model, device=device, dtype=model_dtype)
    else:
        lm = model
    out.mkdir(parents=True, exist_ok=True)
    world = world or World.single()
    own = _part(world.rank, world.size)
    requested, tokens = tokens, tokens // world.size + (world.rank < tokens % world.size)
    settings = {
        "model": lm.name, "hook": hook, "dataset": dataset, "text_column": text_column, "split": split,
        "seed": seed, "context_length": context_length, "batch_size": batch_size,
        "exclude_special_tokens": exclude_special_tokens, "dtype": dtype, "normalize": normalize,
        "shard_tokens": shard_tokens, "d_in": lm.d_model, "encoding": encoding, "world_size": world.size,
    }

    shards, factor = _reusable_shards(out, settings, tokens, resume, own)
    if world.rank == 0:
        remove_stale_temp_files(out)  # leftovers of a killed write (shards and manifest)
        if world.distributed:
            (out / MANIFEST).unlink(missing_ok=True)  # rewritten from the parts at the end
    world.barrier()  # no rank writes before those are gone
    if normalize and world.distributed:  # one factor: a resumed part's, else all first chunks'
        factor = next((f for f in world.all_gather_object(factor) if f is not None), None)
    if _is_complete(out, shards, own) and not (normalize and factor is None):
        if not world.distributed:
            print(f"cache {out} is already complete ({sum(s['rows'] for s in shards):,} tokens); nothing to do")
            return out
        _write_world_manifest(out, world, shards, "complete", settings, requested, factor if normalize else None)
        return out

    t0 = time.perf_counter()
    source = LiveSource(
        lm, dataset, hook, context_length, batch_size, text_column, split, seed,
        exclude_special_tokens, repeat=False, progress=progress, encoding=encoding, rank=world.rank,
        world_size=world.size,
    )
    start = shards[-1]["next"] if shards else {"context": 0, "skip_rows": 0}
    source.load_state_dict({"epoch": 0, "contexts_done": start["context"], "contexts_total": start["context"]})
    chunks = source.chunks()
    pending: list[tuple[int, ActivationChunk]] = []  # (first context of the LM batch, chunk)

    def fetch():
        first = source.contexts_total
        chunk = next(chunks, None)
        return None if chunk is None else (first, chunk)

    def next_chunk():
        return pending.pop(0) if pending else fetch()

    try:  # closes the harvest's progress bar, so an error line starts a line of its own
        if normalize and factor is None:
            factor, pending = first_chunks_factor(iter(fetch, None), norm_estimate_batches, acts=lambda item: item[1].acts,
                                                  reduce_sum=(lambda t: world.all_reduce(t, "sum")) if world.distributed else None)
        scale = factor if normalize else 1.0

        def write_manifest(status: str) -> None:
            with _disk_full_is_one_line(out / _part_manifest(own)):
                write_json_atomic(out / _part_manifest(own), {
                    "format": FORMAT, "format_version": FORMAT_VERSION, "status": status, **settings,
                    "tokens_requested": tokens, "tokens": sum(s["rows"] for s in shards),
                    "normalization_factor": factor if normalize else None,
                    "normalization": "x * normalization_factor, factor = sqrt(d / mean ||x||^2)" if normalize else "none",
                    "index_columns": ["context", "position", "token"], "shards": shards,
                })

        write_manifest("incomplete")  # lists the kept shards only: a kill before the next one leaves a resumable cache
        np_dtype = DTYPES[dtype]
        written = sum(s["rows"] for s in shards)
        new_shards = 0
        skip = start["skip_rows"]
        item = next_chunk()
        while written < tokens and item is not None and (max_shards is None or new_shards < max_shards):
            rows = min(shard_tokens, tokens - written)
            acts = np.empty((rows, lm.d_model), dtype=np_dtype)
            index = np.empty((rows, 3), dtype=np.int64)
            filled = 0
            while filled < rows and item is not None:
                first_context, chunk = item
                take = min(rows - filled, len(chunk) - skip)
                part = chunk[skip : skip + take]
                acts[filled : filled + take] = (part.acts if scale == 1.0 else part.acts * scale).numpy()
                index[filled : filled + take] = part.index.numpy()
                filled += take
                skip += take
                if skip == len(chunk):
                    item, skip = next_chunk(), 0
                    next_pos = {"context": source.contexts_total if item is None else item[0], "skip_rows": 0}
                else:
                    next_pos = {"context": first_context, "skip_rows": skip}
            if filled == 0:
                break
            i = len(shards)
            shards.append({**_save_shard(out, i, acts[:filled], index[:filled], own), "start": start, "next": next_pos})
            start = next_pos
            written += filled
            new_shards += 1
            write_manifest("incomplete")
        if written >= tokens or item is None:
            if written < tokens:
                warnings.warn(
                    f"dataset {dataset!r} ran out after {written:,} tokens (asked for {tokens:,}); "
                    "the cache holds what there is", stacklevel=2,
                )
            write_manifest("complete")
            status = "complete"
        else:
            status = "incomplete"
    finally:
        chunks.close()
    if world.distributed:
        _write_world_manifest(out, world, shards, status, settings, requested, factor if normalize else None)
    elapsed = time.perf_counter() - t0
    size = sum(s["bytes"] + s["index_bytes"] for s in shards)
    new_rows = written - sum(s["rows"] for s in shards[: len(shards) - new_shards])
    print(
        f"cached {written:,} tokens of {lm.name} {hook} ({dataset}) -> {out}: {len(shards)} shards, "
        f"{format_bytes(size)}; this run {new_rows:,} tokens in {elapsed:.1f} s ({new_rows / max(elapsed, 1e-9):,.0f} tok/s)",
    )
    return out


def _write_world_manifest(out: Path, world: World, shards: list[dict], status: str, settings: dict,
                          requested: int, factor: Optional[float]) -> None:
    """Rank 0 writes manifest.json: every rank's shards in rank order, complete when every
    part is (collective: every rank calls it; the others return after the barrier)."""
    parts = world.all_gather_object((shards, status))
    if world.rank == 0:
        every = [entry for part_shards, _ in parts for entry in part_shards]
        done = all(st == "complete" for _, st in parts)
        with _disk_full_is_one_line(out / MANIFEST):
            write_json_atomic(out / MANIFEST, {
                "format": FORMAT, "format_version": FORMAT_VERSION, "status": "complete" if done else "incomplete",
                **settings, "tokens_requested": requested, "tokens": sum(e["rows"] for e in every),
                "normalization_factor": factor,
                "normalization": "x * normalization_factor, factor = sqrt(d / mean ||x||^2)" if factor else "none",
                "index_columns": ["context", "position", "token"], "shards": every,
                "parts": [_part_manifest(_part(r, world.size)) for r in range(world.size)],
            })
    world.barrier()


def cache_from_config(model: ModelConfig, data: DataConfig, tokens: int, out_dir, lm=None, **options) -> Path:
    """`featsep cache`: the cache a run config's [model] and [data] sections describe, so that
    `data.cache = OUT` in the same config then matches it. options: build_cache's own
    (shard_tokens, dtype, resume, progress, max_shards)."""
    return build_cache(
        lm if lm is not None else model.name, model.hook, data.dataset, tokens, out_dir,
        context_length=data.context_length, batch_size=model.batch_size, normalize=data.normalize,
        text_column=data.text_column, split=data.split, seed=data.seed, encoding=data.encoding,
        norm_estimate_batches=data.norm_estimate_batches, exclude_special_tokens=data.exclude_special_tokens,
        device=model.device, model_dtype=model.dtype, **options,
    )
