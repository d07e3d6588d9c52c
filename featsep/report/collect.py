"""Read a sweep directory (or one run, or a folder of runs) into tidy per-run records.

Everything downstream (figures, tables, findings) reads `RunRecord`s only. The files are read
through featsep.rundir's typed records, so a value is either the field its writer defined or
missing: nothing is guessed from key names. What is missing or unreadable becomes a note,
never an exception.

Metric keys are "<section>.<name>", e.g. "core.ce_loss_score",
"absorption.mean_absorption_fraction_score", "scr.scr_metric_threshold_20",
"train.final_loss", "cost.tokens_per_s". A section is an eval's name (its result file's);
names inside it are SAEBench's leaf names (eval_result_metrics.<category>.<name>); when two
categories share a leaf name the key becomes "<section>.<category>.<name>".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from featsep.rundir import (
    CONFIG_FILE,
    FINAL_INFO_FILE,
    METRICS_FILE,
    SWEEP_FILE,
    BaselineRecord,
    ConfigRecord,
    EvalRecord,
    RunDir,
    TrainingResults,
    read_sweep_manifest,
)

REPORT_DIRNAME = "report"


@dataclass(frozen=True)
class Section:
    """One eval as the report titles it; `name` is the eval's (and its result file's) name."""

    name: str
    title: str


SECTIONS: tuple[Section, ...] = (
    Section("core", "Core (reconstruction, sparsity)"),
    Section("absorption", "Feature absorption"),
    Section("sparse_probing", "Sparse probing"),
    Section("scr", "SCR"),
    Section("tpp", "TPP"),
    Section("unlearning", "Unlearning"),
    Section("autointerp", "Autointerp"),
    Section("competition", "Competition (feature separation)"),
)
SECTION_BY_NAME = {s.name: s for s in SECTIONS}
# Sections every run is expected to have; a missing one is noted in the report.
EXPECTED_SECTIONS = ("core", "absorption", "sparse_probing", "scr", "tpp", "unlearning")

# metrics.jsonl fields (the trainer's names) whose last value is the run's final one
_HISTORY_SUMMARY_KEYS = ("loss", "l0", "fvu", "dead_fraction", "lr")
# the training section's numbers that are costs rather than results
_TRAINING_COST_FIELDS = {"wall_time_s": "cost.wall_time_s"}


@dataclass
class RunRecord:
    """Everything the report knows about one SAE run."""

    run: str  # run name (directory name, or path relative to the sweep root)
    label: str
    method: str  # runs of one method form one frontier line
    path: Path
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl rows
    config: dict[str, Any] = field(default_factory=dict)  # flat summary of the run's config
    details: dict[str, Any] = field(default_factory=dict)  # section -> eval_result_details/unstructured
    eval_configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # section -> its eval_config
    statuses: dict[str, str] = field(default_factory=dict)  # section -> its result's status, when not "ok"
    caveats: dict[str, str] = field(default_factory=dict)  # section -> a caveat its eval wrote (e.g. probing's LLM top-k)
    sections: list[str] = field(default_factory=list)  # sections found
    notes: list[str] = field(default_factory=list)  # what was missing or unreadable
    seed: Optional[int] = None  # a seeded sweep's run seed (sweep.json)
    point: Optional[str] = None  # its grid point, shared by the point's seeds (sweep.json)
    spreads: dict[str, float] = field(default_factory=dict)  # key -> sample std over seeds (seeds.py)
    seeds: list[int] = field(default_factory=list)  # the seeds a mean over seeds is made of
    baseline: Optional[dict[str, Any]] = None  # a released SAE evaluated here: rundir.BaselineRecord's fields

    @property
    def l0(self) -> Optional[float]:
        """The run's sparsity: the core eval's L0, else the last logged training L0."""
        return self.metrics.get("core.l0", self.metrics.get("train.final_l0"))

    def get(self, key: str) -> Optional[float]:
        return self.metrics.get(key)


@dataclass
class Sweep:
    name: str
    root: Path
    records: list[RunRecord]
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- helpers


def _number(value: Any) -> Optional[float]:
    """A finite float, or None (bools, strings, NaN and inf are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def flatten_eval_metrics(record: EvalRecord) -> dict[str, float]:
    """An eval's eval_result_metrics -> {leaf name: value} (any depth). A NaN written as
    SAEBench's -1 is missing, never a value."""
    leaves: list[tuple[tuple[str, ...], float]] = []
    missing = record.missing_metrics()

    def walk(node: dict, path: tuple[str, ...]) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, path + (str(key),))
            elif (num := _number(value)) is not None and ".".join(path + (str(key),)) not in missing:
                leaves.append((path + (str(key),), num))

    walk(record.eval_result_metrics, ())
    counts: dict[str, int] = {}
    for path, _ in leaves:
        counts[path[-1]] = counts.get(path[-1], 0) + 1
    return {(path[-1] if counts[path[-1]] == 1 else ".".join(path)): v for path, v in leaves}


def eval_status(record: EvalRecord) -> Optional[str]:
    """The status an eval wrote beside its metrics (e.g. absorption's "too few letters: ..."),
    unless it is "ok": a reader must see it wherever the values appear."""
    unstructured = record.eval_result_unstructured
    status = unstructured.get("status") if isinstance(unstructured, dict) else None
    return str(status) if status is not None and str(status) != "ok" else None


def eval_caveat(record: EvalRecord) -> Optional[str]:
    """A caveat an eval wrote about some of its numbers (sparse probing: one model dimension
    decides SAEBench's LLM top-k baseline), to be shown wherever the eval is compared."""
    unstructured = record.eval_result_unstructured
    caveat = unstructured.get("caveat") if isinstance(unstructured, dict) else None
    return str(caveat) if caveat else None


def _summarise_config(cfg: ConfigRecord) -> dict[str, Any]:
    """The few config fields the report shows and uses to name a method: the run config's
    model and sae sections (a sweep's runs have no sae section there), the penalties, and the
    run config's training budget."""
    run_cfg = cfg.run_config or {}
    out: dict[str, Any] = {}
    model = run_cfg.get("model")
    if isinstance(model, dict):
        out["model"] = model.get("name")
        out["hook"] = model.get("hook")
    sae = run_cfg.get("sae")
    if isinstance(sae, dict):
        for key, value in sae.items():
            if isinstance(value, (str, int, float, bool)) or value is None:
                out[f"sae.{key}"] = value
    names = []
    for pen in cfg.penalties:
        if pen.get("name"):
            names.append(str(pen["name"]))
            for key, value in pen.items():
                if key != "name" and isinstance(value, (str, int, float, bool)):
                    out[f"{pen['name']}.{key}"] = value
    out["penalties"] = "+".join(names)
    train = run_cfg.get("train")
    if isinstance(train, dict):
        for key in ("tokens", "batch_size", "lr", "seed"):
            if key in train:
                out[f"train.{key}"] = train[key]
    return {k: v for k, v in out.items() if v is not None}


BASELINE_SUFFIX = " (baseline)"  # on a baseline's method name, so every table, legend and finding says so


def baseline_config(record: BaselineRecord) -> dict[str, Any]:
    """What the configuration table shows of a baseline: where it came from and which bytes."""
    return {"baseline.source": record.source, "baseline.format": record.format,
            "baseline.sha256": record.sha256[:12], "sae.architecture": record.architecture,
            "sae.d_sae": record.d_sae, "model": record.model_name, "hook": record.hook_name}


def _method_name(entry: dict[str, Any], config: dict[str, Any], training: Optional[TrainingResults]) -> str:
    """sweep.json's method (+ penalty when not already in it), else architecture+penalties."""
    method = entry.get("method") or entry.get("architecture")
    penalty = entry.get("penalty")
    if not method:
        method = config.get("sae.architecture") or (training.architecture if training else None) or "unknown"
        penalty = penalty or config.get("penalties") or None
    method = str(method)
    if penalty and str(penalty) not in method:
        method = f"{method}+{penalty}"
    return method


def _default_label(run: str, method: str, config: dict[str, Any], metrics: dict[str, float]) -> str:
    k = config.get("sae.k")
    if k is not None:
        return f"{method} k={k}"
    l0 = metrics.get("core.l0")
    return f"{method} ({run})" if l0 is None else f"{method} L0={l0:.3g}"


# ----------------------------------------------------------------------------- runs


def _history_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    """Final values and throughput/memory summaries from the training log."""
    out: dict[str, float] = {}
    if not history:
        return out
    last = history[-1]
    for key in ("step", "tokens"):
        if (num := _number(last.get(key))) is not None:
            out[f"train.{key}"] = num
    for key in _HISTORY_SUMMARY_KEYS:
        for row in reversed(history):
            if (num := _number(row.get(key))) is not None:
                out[f"train.final_{key}"] = num
                break
    # an SAE's own throughput when logged (several SAEs share each step's wall time)
    speed_key = "sae_tokens_per_s" if any("sae_tokens_per_s" in row for row in history) else "tokens_per_s"
    speeds = [v for row in history if (v := _number(row.get(speed_key))) is not None]
    if speeds:
        out["cost.tokens_per_s"] = sum(speeds) / len(speeds)
    states = [v for row in history if (v := _number(row.get("state_memory_bytes"))) is not None]
    if states:
        out["cost.state_memory_bytes"] = max(states)
    return out


def _training_metrics(results: TrainingResults) -> dict[str, float]:
    """The training section's numeric fields as "train.<field>" (costs as "cost.<name>")."""
    out: dict[str, float] = {}
    for name in TrainingResults.model_fields:
        if (num := _number(getattr(results, name))) is not None:
            out[_TRAINING_COST_FIELDS.get(name, f"train.{name}")] = num
    return out


def penalty_stat_keys(history: list[dict[str, Any]]) -> list[str]:
    """Logged penalty statistics, discovered by their "<penalty>/<stat>" prefix."""
    keys: dict[str, None] = {}
    for row in history:
        for key, value in row.items():
            if "/" in key and _number(value) is not None:
                keys.setdefault(key, None)
    return list(keys)


def load_run(path: Path, run: str, entry: Optional[dict] = None, label: Optional[str] = None) -> RunRecord:
    """Read one run directory; never raises for missing or malformed files."""
    entry = entry or {}
    rd = RunDir(path)
    notes: list[str] = []
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    eval_configs: dict[str, dict[str, Any]] = {}
    statuses: dict[str, str] = {}
    caveats: dict[str, str] = {}
    found: list[str] = []

    config: dict[str, Any] = {}
    baseline: Optional[BaselineRecord] = None
    try:
        cfg = rd.read_config()
        baseline = cfg.baseline if cfg is not None else None
        config = _summarise_config(cfg) if cfg is not None and baseline is None else {}
    except ValueError as e:
        notes.append(f"{CONFIG_FILE}: unreadable ({e}); ignored")
    if baseline is not None:
        config = baseline_config(baseline)

    log = rd.read_metrics_log()
    if log.skipped:
        notes.append(f"{METRICS_FILE}: {log.skipped} unreadable line(s) skipped")

    training: Optional[TrainingResults] = None
    try:
        section = rd.read_training()
        training = section.final_info if section is not None else None
    except ValueError as e:
        notes.append(f"{FINAL_INFO_FILE}: unreadable ({e}); ignored")
    if training is not None:
        metrics.update(_training_metrics(training))
    elif not rd.final_info_file.exists():
        notes.append(f"no {FINAL_INFO_FILE}")

    for name in rd.eval_names():
        try:
            record = rd.read_eval(name)
        except ValueError as e:
            notes.append(f"{name} results: unreadable ({e}); ignored")
            continue
        flat = flatten_eval_metrics(record)
        status = eval_status(record)
        if not flat and not record.eval_result_details:
            if status is not None:
                notes.append(f"{name} results: no values (status: {status})")
            continue
        found.append(name)
        metrics.update({f"{name}.{k}": v for k, v in flat.items()})
        extra = {k: getattr(record, k) for k in ("eval_result_details", "eval_result_unstructured") if getattr(record, k)}
        if extra:
            details[name] = extra
        if record.eval_config:
            eval_configs[name] = record.eval_config
        if status is not None:
            statuses[name] = status
        if (caveat := eval_caveat(record)) is not None:
            caveats[name] = caveat

    for key, value in _history_metrics(log.rows).items():
        metrics.setdefault(key, value)

    missing = [s for s in EXPECTED_SECTIONS if s not in found]
    if missing:
        notes.append("no " + ", ".join(SECTION_BY_NAME[s].title for s in missing) + " results")
    if baseline is not None:
        notes.append("baseline: not trained here, so no training metrics")
        method = str(entry.get("method") or baseline.name) + BASELINE_SUFFIX
    else:
        if not log.rows:
            notes.append(f"no training log ({METRICS_FILE})")
        method = _method_name(entry, config, training)
    label = label or entry.get("label") or _default_label(run, method, config, metrics)
    return RunRecord(run=run, label=str(label), method=method, path=path, metrics=metrics,
                     history=log.rows, config=config, details=details, eval_configs=eval_configs,
                     statuses=statuses, caveats=caveats, sections=found, notes=notes,
                     seed=entry.get("seed"), point=entry.get("point"),
                     baseline=baseline.model_dump() if baseline is not None else None)


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _find_run_dirs(root: Path, max_depth: int = 3) -> list[Path]:
    """Directories holding a run marker, searched breadth-first (the report dir excluded)."""
    if RunDir(root).holds_results():
        return [root]
    found: list[Path] = []
    level = [root]
    for _ in range(max_depth):
        nxt = []
        for directory in level:
            for child in sorted(directory.iterdir(), key=lambda p: _natural_key(p.name)):
                if not child.is_dir() or child.name.startswith(".") or child.name == REPORT_DIRNAME:
                    continue
                if RunDir(child).holds_results():
                    found.append(child)
                else:
                    nxt.append(child)
        level = nxt
    return found


def collect(path: str | Path, labels: Optional[dict[str, str]] = None) -> Sweep:
    """Read a sweep dir, a single run dir or a dir of run dirs into a `Sweep`.

    Labels come from `labels` (run name -> label), then the sweep manifest's "labels" and its
    per-run "label", then a default built from the method and k (or L0).
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"report input {str(root)!r} is not a directory; pass a sweep or run directory")
    notes: list[str] = []
    try:
        sweep_meta = read_sweep_manifest(root) or {}
    except ValueError as e:
        notes.append(f"{SWEEP_FILE}: unreadable ({e}); ignored")
        sweep_meta = {}
    listed = [*sweep_meta.get("runs", []), *sweep_meta.get("baselines", [])]
    entries = {str(e.get("run")): e for e in listed if isinstance(e, dict) and e.get("run")}
    all_labels = {**(sweep_meta.get("labels") or {}), **(labels or {})}

    run_dirs = _find_run_dirs(root)
    order = list(entries)
    run_dirs.sort(key=lambda p: (order.index(p.name) if p.name in order else len(order), _natural_key(p.name)))
    records = []
    for run_dir in run_dirs:
        run = run_dir.name if run_dir != root else root.name
        rel = str(run_dir.relative_to(root)) if run_dir != root else run
        entry = entries.get(run) or entries.get(rel) or {}
        label = all_labels.get(run) or all_labels.get(rel)
        records.append(load_run(run_dir, run, entry, label))
    for run in entries:
        if not any(r.run == run for r in records):
            notes.append(f"{SWEEP_FILE} lists {run!r} but no such run directory holds results")
    if not records:
        notes.append(f"no run directories (with {FINAL_INFO_FILE} or {METRICS_FILE}) found under {root}")
    name = str(sweep_meta.get("name") or root.resolve().name)
    return Sweep(name=name, root=root, records=records, notes=notes)


def iter_details(blob: Any, name: str = "details") -> Iterator[tuple[str, Any]]:
    """Every (key, value) inside an eval's details/unstructured blob, at any depth.

    Our competition eval's detail layout is not fixed, so consumers look for shapes (a list
    of row dicts is a table, a list of numbers a distribution) rather than for names.
    """
    if isinstance(blob, dict):
        for key, value in blob.items():
            key = str(key) if key not in ("eval_result_details", "eval_result_unstructured") else name
            yield key, value
            if isinstance(value, (dict, list)):
                yield from iter_details(value, key)
    elif isinstance(blob, list):
        for item in blob:
            if isinstance(item, dict):
                yield from iter_details(item, name)


def baseline_methods(records: Iterable[RunRecord]) -> set[str]:
    """The methods that are released SAEs evaluated here, not trained here."""
    return {r.method for r in records if r.baseline is not None}


def methods_of(records: Iterable[RunRecord]) -> list[str]:
    """Methods in first-seen order (so colours follow the sweep's order)."""
    seen: dict[str, None] = {}
    for rec in records:
        seen.setdefault(rec.method, None)
    return list(seen)
