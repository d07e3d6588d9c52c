"""The run directory and its results schema: the one module that knows their names.

A run dir holds config.json, checkpoints/step_XXXXXXXXX.pt, metrics.jsonl, sae/,
eval_results/<eval>_eval_results.json (SAEBench JSON, one file per eval) and final_info.json
(the reference runs' layout: a "training results for layer L" section with "config" and
"final_info" blocks, then one section per eval). A sweep dir adds sweep.json over its run dirs.
Training, evals, sweeps and the report all read and write through here, so the layout and
key names live in one place; callers pass in what only they know (layer, eval name, section key).

Whole files are written atomically (temp file in the same folder, then os.replace), so a killed
process never leaves a half-written one; final_info.json's read-modify-write is also locked.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from pydantic import BaseModel, ConfigDict, ValidationError, model_serializer

from featsep.io import write_bytes_atomic, write_json_atomic
from featsep.settings import one_line

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
FINAL_INFO_FILE = "final_info.json"
CHECKPOINT_DIR = "checkpoints"
SAE_DIR = "sae"
EVAL_RESULTS_DIR = "eval_results"
EVAL_RESULTS_SUFFIX = "_eval_results.json"
TENSORBOARD_DIR = "tensorboard"
SWEEP_FILE = "sweep.json"
TRAINING_RESULTS_PREFIX = "training results for layer "

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")
_CHECKPOINT_NAME = re.compile(r"^step_(\d+)\.pt$")


# --- records -----------------------------------------------------------------------------------
class TrainingResults(BaseModel):
    """The "final_info" block of the training section (the reference runs' key names, plus ours).

    wall_time_s: seconds the training loop took, summed over the logged windows."""

    model_config = ConfigDict(extra="allow")

    training_steps: int
    final_loss: Optional[float] = None
    layer: int
    dict_size: int
    learning_rate: float
    sparsity_penalty: Optional[float] = None
    architecture: str
    training_tokens: int
    l0: Optional[float] = None
    fvu: Optional[float] = None
    dead_fraction: Optional[float] = None
    final_loss_terms: dict[str, float] = {}
    penalty_stats: Optional[dict[str, Any]] = None  # absent from the file when no penalty ran
    wall_time_s: Optional[float] = None


class TrainingSection(BaseModel):
    """final_info.json's "training results for layer L": the trainer's config and its results."""

    model_config = ConfigDict(extra="allow")

    config: dict[str, Any]
    final_info: TrainingResults


NAN_SENTINEL = -1  # what SAEBench writes for a NaN metric (JSON has no NaN)
MISSING_METRICS_KEY = "missing_metrics"  # eval_result_unstructured: the metrics the sentinel stands for


class EvalRecord(BaseModel):
    """One eval's result file, in SAEBench's schema (evals/base_eval_output.py)."""

    model_config = ConfigDict(extra="allow")

    eval_type_id: str
    eval_config: dict[str, Any] = {}
    eval_id: Optional[str] = None
    datetime_epoch_millis: Optional[int] = None
    eval_result_metrics: dict[str, Any]
    eval_result_details: list[Any] = []
    eval_result_unstructured: Optional[Any] = None
    sae_bench_commit_hash: Optional[str] = None
    sae_lens_id: Optional[str] = None
    sae_lens_release_id: Optional[str] = None
    sae_lens_version: Optional[str] = None
    sae_cfg_dict: dict[str, Any] = {}

    def missing_metrics(self) -> set[str]:
        """Dotted paths in eval_result_metrics that hold the NaN sentinel, not a value: the list
        featsep writes beside them; for files without it (SAEBench's own), every leaf equal to
        the sentinel (SAEBench writes -1 only for NaN)."""
        listed = self.eval_result_unstructured.get(MISSING_METRICS_KEY) if isinstance(
            self.eval_result_unstructured, dict) else None
        if isinstance(listed, list):
            return {str(p) for p in listed}

        def walk(node: Any, path: tuple[str, ...]) -> list[str]:
            if isinstance(node, dict):
                return [p for k, v in node.items() for p in walk(v, path + (str(k),))]
            is_sentinel = isinstance(node, (int, float)) and not isinstance(node, bool) and node == NAN_SENTINEL
            return [".".join(path)] if is_sentinel else []

        return set(walk(self.eval_result_metrics, ()))


class BaselineRecord(BaseModel):
    """config.json's "baseline": a released SAE evaluated here, not trained here (evals.baselines).

    source: the path or hub reference as given; path: where its files were found; sha256: of its
    weights file; model_name/hook_name: what it is evaluated with."""

    name: str
    source: str
    path: str
    format: str
    sha256: str
    architecture: str
    d_in: int
    d_sae: int
    model_name: str
    hook_name: str


class ConfigRecord(BaseModel):
    """config.json: what rebuilds and resumes the run (run_config is the caller's whole config);
    a baseline run dir has `baseline` instead of the trained SAE's blocks."""

    model_config = ConfigDict(extra="allow")

    featsep_version: Optional[str] = None
    run_config: Optional[dict[str, Any]] = None
    sae: dict[str, Any] = {}
    penalties: list[dict[str, Any]] = []
    train: dict[str, Any] = {}
    baseline: Optional[BaselineRecord] = None

    @model_serializer(mode="wrap")
    def _baseline_only_when_set(self, handler):
        """A trained run's config.json keeps its keys (no "baseline": null)."""
        out = handler(self)
        if out.get("baseline") is None:
            out.pop("baseline", None)
        return out


@dataclass
class MetricsLog:
    """metrics.jsonl as read: the rows, and how many lines could not be (a run killed mid-write)."""

    rows: list[dict[str, Any]]
    skipped: int = 0


# --- helpers -----------------------------------------------------------------------------------
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


def training_results_key(layer: int) -> str:
    """The reference runs' section name, e.g. "training results for layer 12"."""
    return f"{TRAINING_RESULTS_PREFIX}{layer}"


def eval_result_path(folder: str | Path, eval_name: str) -> Path:
    """Where an eval's SAEBench JSON goes in a results folder (a run's, or a caller's out_dir)."""
    return Path(folder) / f"{eval_name}{EVAL_RESULTS_SUFFIX}"


def write_eval_result(folder: str | Path, eval_name: str, result: dict[str, Any]) -> Path:
    return write_json_atomic(eval_result_path(folder, eval_name), result)


def read_eval_result(path: str | Path) -> EvalRecord:
    return EvalRecord.model_validate(_read_json(Path(path)))


def eval_section(result: dict[str, Any], results_file: Optional[Path]) -> dict[str, Any]:
    """The final_info.json section of an eval the reference runs did not have: the result without
    its (possibly per-latent, large) details and the SAE config, plus where the whole result file
    is. Evals the reference runs wrote convert to their layout instead (EvalSpec.final_info_section)."""
    section = {k: v for k, v in result.items() if k not in ("eval_result_details", "sae_cfg_dict")}
    return with_results_file(section, results_file)


def with_results_file(section: dict[str, Any], results_file: Optional[Path]) -> dict[str, Any]:
    """The section plus where the whole result file is (a key the reference runs did not write)."""
    return section if results_file is None else {**section, "results_file": str(results_file)}


def read_sweep_manifest(sweep_dir: str | Path) -> Optional[dict[str, Any]]:
    """sweep.json (None when there is none); ValueError when it is not a JSON object."""
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.exists():
        return None
    manifest = _read_json(path)
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} is not a JSON object")
    return manifest


def write_sweep_manifest(sweep_dir: str | Path, manifest: dict[str, Any]) -> Path:
    return write_json_atomic(Path(sweep_dir) / SWEEP_FILE, manifest)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it and re-run the stage that wrote it") from None


def _validated(model: type[BaseModel], blob: Any, where: str) -> Any:
    try:
        return model.model_validate(blob)
    except ValidationError as e:
        raise ValueError(f"{where} does not hold a {model.__name__}: {one_line(e)}") from None


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


# --- the run directory -------------------------------------------------------------------------
class RunDir:
    """One SAE's run directory: typed readers and writers for every file in it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def final_info_file(self) -> Path:
        return self.path / FINAL_INFO_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def sae_dir(self) -> Path:
        return self.path / SAE_DIR

    @property
    def eval_results_dir(self) -> Path:
        return self.path / EVAL_RESULTS_DIR

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TENSORBOARD_DIR

    def holds_results(self) -> bool:
        """Whether a training run or an eval has written here (how the report finds run dirs)."""
        return self.final_info_file.is_file() or self.metrics_file.is_file()

    def holds_training(self) -> bool:
        """Whether a previous training run already wrote here."""
        return self.metrics_file.exists() or self.has_checkpoints()

    # config.json
    def write_config(self, config: dict[str, Any]) -> Path:
        return write_json_atomic(self.config_file, config)

    def read_config(self) -> Optional[ConfigRecord]:
        """None when there is no config.json; ValueError when it is malformed."""
        if not self.config_file.exists():
            return None
        return _validated(ConfigRecord, _read_json(self.config_file), str(self.config_file))

    # checkpoints/
    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoint_dir / f"step_{step:09d}.pt"

    def checkpoint_steps(self) -> dict[int, Path]:
        """{step: path} of the complete checkpoints (temp files are never listed)."""
        if not self.checkpoint_dir.is_dir():
            return {}
        found = {}
        for path in self.checkpoint_dir.iterdir():
            match = _CHECKPOINT_NAME.match(path.name)
            if match:
                found[int(match.group(1))] = path
        return found

    def has_checkpoints(self) -> bool:
        return bool(self.checkpoint_steps())

    # metrics.jsonl
    def append_metrics(self, row: dict[str, Any]) -> None:
        """One JSON line per logged step (an append: a crash loses at most the line in flight)."""
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(row) + "\n")

    def read_metrics_log(self) -> MetricsLog:
        if not self.metrics_file.exists():
            return MetricsLog([])
        rows, skipped = [], 0
        for line in self.metrics_file.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                skipped += 1
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                skipped += 1
        return MetricsLog(rows, skipped)

    def read_metrics(self) -> list[dict[str, Any]]:
        return self.read_metrics_log().rows

    def truncate_metrics(self, last_step: int) -> None:
        """Drop rows logged after `last_step` (a resumed run logs those steps again)."""
        rows = [r for r in self.read_metrics() if r.get("step", 0) <= last_step]
        write_bytes_atomic(self.metrics_file, "".join(json.dumps(r) + "\n" for r in rows).encode())

    # final_info.json
    def read_final_info(self) -> dict[str, Any]:
        """The whole file ({} when there is none); ValueError when it is not a JSON object."""
        if not self.final_info_file.exists():
            return {}
        info = _read_json(self.final_info_file)
        if not isinstance(info, dict):
            raise ValueError(f"{self.final_info_file} is not a JSON object; delete it and re-run the stage that wrote it")
        return info

    def update_final_info(
        self, key: str, value: Any, merge: Optional[Callable[[Any, Any], Any]] = None
    ) -> dict[str, Any]:
        """Set one section (e.g. "core evaluation results"), keeping the others; atomic and safe
        against concurrent writers. Returns the whole file's content. merge(existing_or_None,
        value) combines sections that several evals share (SCR + TPP)."""
        with _locked(self.final_info_file):
            info = self.read_final_info()
            info[key] = merge(info.get(key), value) if merge is not None else value
            write_json_atomic(self.final_info_file, info)
        return info

    def write_training(self, config: dict[str, Any], results: TrainingResults) -> None:
        """Set the "training results for layer L" section (L is results.layer)."""
        block = results.model_dump()
        if block["penalty_stats"] is None:
            del block["penalty_stats"]
        self.update_final_info(training_results_key(results.layer), {"config": config, "final_info": block})

    def read_training(self) -> Optional[TrainingSection]:
        """The training section, or None before training has finished."""
        for key, value in self.read_final_info().items():
            if key.startswith(TRAINING_RESULTS_PREFIX):
                return _validated(TrainingSection, value, f"{self.final_info_file} [{key!r}]")
        return None

    def has_training(self) -> bool:
        """Whether final_info.json has a training section (a malformed file has none)."""
        try:
            return any(k.startswith(TRAINING_RESULTS_PREFIX) for k in self.read_final_info())
        except ValueError:
            return False

    # eval_results/ and the evals' final_info sections
    def eval_result_path(self, eval_name: str) -> Path:
        return eval_result_path(self.eval_results_dir, eval_name)

    def has_eval(self, eval_name: str) -> bool:
        return self.eval_result_path(eval_name).is_file()

    def eval_names(self) -> list[str]:
        """The evals that have a result file here, sorted."""
        if not self.eval_results_dir.is_dir():
            return []
        return sorted(p.name[: -len(EVAL_RESULTS_SUFFIX)] for p in self.eval_results_dir.glob(f"*{EVAL_RESULTS_SUFFIX}")
                      if p.is_file() and len(p.name) > len(EVAL_RESULTS_SUFFIX))

    def read_eval(self, eval_name: str) -> EvalRecord:
        """ValueError when the file is missing or malformed."""
        path = self.eval_result_path(eval_name)
        if not path.is_file():
            raise ValueError(f"{path} does not exist; run the {eval_name!r} eval on {self.path}")
        return _validated(EvalRecord, _read_json(path), str(path))

    def write_eval(self, eval_name: str, result: dict[str, Any], final_info_key: str,
                   merge: Optional[Callable[[Any, Any], Any]] = None,
                   section: Callable[[dict[str, Any], Optional[Path]], dict[str, Any]] = eval_section) -> Path:
        """The eval's result file (in eval_results/) and its final_info
        section under `final_info_key`, built by `section(result, results_file)` (the eval's
        converter to the reference runs' layout)."""
        path = write_eval_result(self.eval_results_dir, eval_name, result)
        self.update_final_info(final_info_key, section(result, path), merge=merge)
        return path
