"""Datasets from the Hugging Face hub, or from local copies in the hub's format.

`load_dataset` is featsep's one call of `datasets.load_dataset` (tests replace it): without
`datasets` or a network it fails at once (featsep.hub's rule), and every error names the
asking eval's settings (`{section}.local_copies`), so the fix is one setting away.
A local copy is a file (used for every split, or split by its `split` column) or a folder
holding `{split}.csv|jsonl|json|parquet`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from featsep import hub
from featsep.data.errors import DataError
from featsep.data.tables import read_table

LOCAL_COPY_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")


def load_dataset(path: str, section: str, fix: Optional[str] = None, **kwargs):
    """`datasets.load_dataset(path, **kwargs)`, failing fast; errors end with `fix`, by default
    "give a local copy ({section}.local_copies)"."""
    fix = fix or f"give a local copy ({section}.local_copies)"
    try:
        import datasets
    except ImportError:
        raise DataError(f"{path} needs the `datasets` package: pip install datasets (or featsep[hub]); or {fix}") from None
    if not hub.offline() and not hub.reachable():
        raise DataError(f"{path}: the Hugging Face hub cannot be reached (no network?); {fix}")
    return datasets.load_dataset(path, **kwargs)


def datasets_major() -> int:
    """The installed `datasets` major version (0 without it): 4 dropped loading scripts."""
    try:
        import datasets

        return int(datasets.__version__.split(".")[0])
    except (ImportError, ValueError):
        return 0


def hub_stream(hf_name: str, parquet_glob: str, section: str, **kwargs):
    """The hub's streamed "train" split. `datasets` >= 4 refuses repos that still ship a loading
    script; then the repo's parquet files (`parquet_glob`, unverified layout) are streamed."""
    try:
        return load_dataset(hf_name, section, split="train", streaming=True, **kwargs)
    except RuntimeError as e:
        if "scripts are no longer supported" not in str(e):
            raise
    return load_dataset("parquet", section, data_files=f"hf://datasets/{hf_name}/{parquet_glob}", split="train",
                        streaming=True)


def local_path(hf_name: str, local_copies: dict[str, str], section: str) -> Optional[Path]:
    """The local copy of `hf_name` (None without one); an error if it was given but is missing."""
    local = local_copies.get(hf_name)
    if local is None:
        return None
    path = Path(local).expanduser()
    if not path.exists():
        raise DataError(f"local copy {path} of {hf_name} does not exist; fix {section}.local_copies")
    return path


def split_file(folder: Path, split: str) -> Path:
    """The `{split}.csv|jsonl|json|parquet` file of a local copy folder."""
    for suffix in LOCAL_COPY_SUFFIXES:
        if (folder / f"{split}{suffix}").exists():
            return folder / f"{split}{suffix}"
    raise DataError(f"local copy {folder} has no {split}.parquet/.jsonl/.csv file; add one or pass a single file")


def hub_frame(hf_name: str, split: str, local_copies: dict[str, str], section: str):
    """One split of a hub dataset as a DataFrame, from its local copy when one is given."""
    path = local_path(hf_name, local_copies, section)
    if path is not None:
        return read_table(split_file(path, split) if path.is_dir() else path)
    return load_dataset(hf_name, section, split=split).to_pandas()


def split_frames(hf_name: str, local_copies: dict[str, str], section: str):
    """(train, test, shared): the hub's own train and test splits. A local copy that is one file
    serves both: by its `split` column when it has one, else shared=True (the caller holds out
    the test rows)."""
    path = local_path(hf_name, local_copies, section)
    if path is not None and path.is_file():
        df = read_table(path)
        if "split" in df.columns:
            return df[df["split"] == "train"], df[df["split"] == "test"], False
        return df, df, True
    return hub_frame(hf_name, "train", local_copies, section), hub_frame(hf_name, "test", local_copies, section), False
