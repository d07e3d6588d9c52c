"""Released SAEs as baselines: a run dir that holds a foreign SAE's identity instead of a training.

A baseline run dir has config.json with a `baseline` record (featsep.rundir.BaselineRecord:
where the SAE came from, its format, the sha256 of its weights file, the model and hook it is
evaluated at) and, once evaluated, eval_results/ and final_info.json like a trained run, but no
training section and no metrics.jsonl: the report shows its training numbers as missing. The
weights stay where they are (the HF cache, a local folder); every load checks their sha256, so
a run dir's results always belong to the weights it names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from featsep.io import file_sha256
from featsep.rundir import BaselineRecord, ConfigRecord, RunDir
from featsep.version import __version__

# the file whose bytes are the SAE, per layout (sae.foreign's names; featsep's own SAE dir last)
_WEIGHTS_OF = {"saelens": "sae_weights.safetensors", "sparsify": "sae.safetensors",
               "dictionary_learning": "ae.pt", "gemma_scope": "params.npz", "featsep": "sae_weights.safetensors"}


def weights_file(path: Path, fmt: str) -> Path:
    """The weights file of an SAE at `path` (a dir, or a weights file itself) in layout `fmt`."""
    return path if path.is_file() else path / _WEIGHTS_OF[fmt]


def sae_format(path: Path) -> str:
    """The layout at `path` (sae.foreign.FORMATS, or "featsep"); one clear line when it is none."""
    from featsep.sae.foreign import foreign_format
    from featsep.sae.io import CFG_FILENAME

    fmt = foreign_format(path)
    if fmt is not None:
        return fmt
    if (path / CFG_FILENAME).is_file():
        return "featsep"
    raise ValueError(f"{str(path)!r} holds no SAE featsep can load (SAELens, sparsify, dictionary_learning, Gemma "
                     "Scope or featsep layout); pass the SAE's folder or weights file, or a hub reference")


def describe(source: str, name: Optional[str] = None, model: Optional[str] = None,
             hook: Optional[str] = None) -> tuple[BaselineRecord, Any]:
    """(the record, the loaded SAE) of the SAE `source` (a path or hub reference, fetched when
    needed). model/hook: what it is evaluated with; default the SAE's own, and a missing one is
    one line asking for --model / --hook."""
    from featsep.sae import load_sae
    from featsep.sae.foreign import resolve_sae_ref

    path = resolve_sae_ref(source).absolute()
    if not path.exists():
        raise FileNotFoundError(f"SAE {source} does not exist; give the SAE's folder or weights file, or a hub "
                                "reference (hf://ORG/REPO/PATH, saelens:RELEASE/SAE_ID)")
    fmt = sae_format(path)
    sae = load_sae(path)
    model = model or sae.cfg.model_name
    hook = hook or sae.cfg.hook_name
    if not model:
        raise ValueError(f"SAE {source} records no model; pass --model NAME (the language model it was trained on)")
    if not hook:
        raise ValueError(f"SAE {source} records no hook; pass --hook blocks.L.hook_resid_post (where it reads "
                         "the residual stream)")
    record = BaselineRecord(
        name=name or (path.parent.name if path.is_file() else path.name), source=str(source), path=str(path),
        format=fmt, sha256=file_sha256(weights_file(path, fmt)), architecture=sae.architecture,
        d_in=int(sae.cfg.d_in), d_sae=int(sae.cfg.d_sae), model_name=model, hook_name=hook,
    )
    return record, sae


def write_baseline(run_dir: str | Path, record: BaselineRecord, run_config: Optional[dict] = None) -> RunDir:
    """Make `run_dir` the baseline run dir of `record`; a dir that already holds another SAE (or a
    training) is refused, one holding this same SAE is kept (its results are still valid)."""
    run = RunDir(run_dir)
    existing = read_baseline(run)
    if existing is not None and existing.sha256 != record.sha256:
        raise FileExistsError(f"{run.path} is the baseline run dir of another SAE ({existing.source}, sha256 "
                              f"{existing.sha256[:12]}); choose another dir or delete it")
    if existing is None and (run.holds_training() or run.sae_dir.is_dir()):
        raise FileExistsError(f"{run.path} holds a trained run; write the baseline into another dir")
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_config(ConfigRecord(featsep_version=__version__, baseline=record, run_config=run_config).model_dump())
    return run


def read_baseline(run: RunDir) -> Optional[BaselineRecord]:
    """The run dir's baseline record, None for any other dir (an unreadable config.json included)."""
    try:
        cfg = run.read_config()
    except ValueError:
        return None
    return cfg.baseline if cfg is not None else None


def load_baseline(run: RunDir):
    """The SAE a baseline run dir names, its weights checked against the recorded sha256; its
    model and hook as the record says (a released SAE may record neither)."""
    from featsep.sae import load_sae
    from featsep.sae.foreign import resolve_sae_ref

    record = read_baseline(run)
    if record is None:
        raise ValueError(f"{run.path} is not a baseline run dir (its config.json has no baseline record)")
    path = Path(record.path)
    if not path.exists():  # e.g. the HF cache was moved: the reference finds it again
        path = resolve_sae_ref(record.source).absolute()
    found = file_sha256(weights_file(path, record.format))
    if found != record.sha256:
        raise ValueError(f"the weights of baseline {record.name} ({path}) changed since {run.path} was written "
                         f"(sha256 {found[:12]}, recorded {record.sha256[:12]}); evaluate them into a new dir")
    sae = load_sae(path)
    sae.cfg.model_name, sae.cfg.hook_name = record.model_name, record.hook_name
    return sae
