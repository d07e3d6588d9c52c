"""Read a sweep directory (or one run, or a folder of runs) into tidy per-run records.

Everything downstream (figures, tables, findings) reads `RunRecord`s only, so the many
layouts a run directory can have (final_info.json sections, eval_results/*.json, a
metrics.jsonl log, config.json) are absorbed here. Nothing in a run is required: what is
missing becomes a note, never an exception.

Metric keys are "<section>.<name>", e.g. "core.ce_loss_score",
"absorption.mean_absorption_fraction_score", "scr.scr_metric_threshold_20",
"train.final_loss", "cost.tokens_per_s". Names inside a section are SAEBench's leaf names
(eval_result_metrics.<category>.<name>); when two categories share a leaf name the key
becomes "<section>.<category>.<name>".
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

RUN_MARKERS = ("final_info.json", "metrics.jsonl")
REPORT_DIRNAME = "report"


@dataclass(frozen=True)
class Section:
    """One evaluation as it appears in final_info.json keys and eval_results files."""

    name: str
    title: str
    key_patterns: tuple[str, ...]  # substrings of final_info.json keys (lower case)
    eval_type_ids: tuple[str, ...]  # SAEBench eval_type_id values (and eval_results/ sub-dirs)


# Order matters for key matching: the first section whose pattern occurs in a key wins.
SECTIONS: tuple[Section, ...] = (
    Section("core", "Core (reconstruction, sparsity)", ("core",), ("core",)),
    Section("absorption", "Feature absorption", ("absorption",), ("absorption_first_letter", "absorption")),
    Section("sparse_probing", "Sparse probing", ("sparse probing", "sparse_probing"), ("sparse_probing",)),
    Section("scr", "SCR", ("scr evaluation", "scr results"), ("scr",)),
    Section("tpp", "TPP", ("tpp evaluation", "tpp results"), ("tpp",)),
    Section("unlearning", "Unlearning", ("unlearning",), ("unlearning",)),
    Section("autointerp", "Autointerp", ("autointerp",), ("autointerp",)),
    Section("ravel", "RAVEL", ("ravel",), ("ravel",)),
    Section("competition", "Competition (feature separation)", ("competition",), ("competition",)),
)
SECTION_BY_NAME = {s.name: s for s in SECTIONS}
# Sections every run is expected to have; a missing one is noted in the report.
EXPECTED_SECTIONS = ("core", "absorption", "sparse_probing", "scr", "tpp", "unlearning")

# Keys of a metrics.jsonl row that are bookkeeping, not curves.
_HISTORY_SUMMARY_KEYS = ("loss", "mse", "l0", "fvu", "dead_fraction", "lr")
_WALL_TIME_KEYS = ("wall_time_s", "elapsed_s", "time_s", "elapsed", "wall_time", "train_time_s")
_PEAK_MEMORY_KEYS = ("peak_memory_bytes", "peak_mem_bytes", "max_memory_allocated")
_SKIP_TOP_LEVEL = {"eval_config", "sae_cfg_dict", "datetime_epoch_millis", "eval_id", "eval_type_id"}


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
    sections: list[str] = field(default_factory=list)  # sections found
    notes: list[str] = field(default_factory=list)  # what was missing or unreadable

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


def _read_json(path: Path, notes: list[str]) -> Optional[Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        notes.append(f"{path.name}: unreadable ({type(e).__name__}: {e}); ignored")
        return None


def read_history(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """metrics.jsonl rows; a truncated or corrupt line (a run killed mid-write) is skipped."""
    rows: list[dict[str, Any]] = []
    if not path.is_file():
        return rows
    bad = 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(_flatten_row(row))
    if bad:
        notes.append(f"metrics.jsonl: {bad} unreadable line(s) skipped")
    return rows


def _flatten_row(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested penalty stats ({"momentum": {"mean": ..}}) become "momentum/mean"."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten_row(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


def flatten_eval_metrics(blob: Any) -> dict[str, float]:
    """SAEBench eval JSON -> {leaf name: value} from eval_result_metrics (any depth)."""
    if not isinstance(blob, dict):
        return {}
    source = blob.get("eval_result_metrics")
    if not isinstance(source, dict):  # tolerate a bare metrics dict
        source = {k: v for k, v in blob.items() if k not in _SKIP_TOP_LEVEL and not k.startswith("eval_result")}
    leaves: list[tuple[tuple[str, ...], float]] = []

    def walk(node: dict, path: tuple[str, ...]) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, path + (str(key),))
            elif (num := _number(value)) is not None:
                leaves.append((path + (str(key),), num))

    walk(source, ())
    counts: dict[str, int] = {}
    for path, _ in leaves:
        counts[path[-1]] = counts.get(path[-1], 0) + 1
    return {(path[-1] if counts[path[-1]] == 1 else ".".join(path)): v for path, v in leaves}


def _section_for_key(key: str) -> list[str]:
    """final_info.json key -> section names (the reference's combined SCR/TPP key gives two)."""
    low = key.lower()
    if "scr" in low and "tpp" in low:
        return ["scr", "tpp"]
    for section in SECTIONS:
        if any(p in low for p in section.key_patterns):
            return [section.name]
    if re.search(r"\bscr\b", low):
        return ["scr"]
    if re.search(r"\btpp\b", low):
        return ["tpp"]
    return []


def _pick_subsection(blob: Any, name: str) -> Optional[dict]:
    """From a combined SCR+TPP blob, the part for `name` ("scr" or "tpp")."""
    if not isinstance(blob, dict):
        return None
    if isinstance(blob.get(name), dict):  # {"scr": {...}, "tpp": {...}}
        return blob[name]
    metrics = blob.get("eval_result_metrics")
    if isinstance(metrics, dict):
        if f"{name}_metrics" in metrics:
            part = dict(blob)
            part["eval_result_metrics"] = {f"{name}_metrics": metrics[f"{name}_metrics"]}
            return part
        if any(str(k).startswith(name) for k in metrics):  # flat metrics with scr_/tpp_ names
            part = dict(blob)
            part["eval_result_metrics"] = {k: v for k, v in metrics.items() if str(k).startswith(name)}
            return part
    if blob.get("eval_type_id") == name:
        return blob
    return None


def _section_of_eval_file(path: Path, blob: Any) -> Optional[str]:
    type_id = str(blob.get("eval_type_id", "")).lower() if isinstance(blob, dict) else ""
    candidates = [type_id, path.parent.name.lower(), path.stem.lower()]
    for cand in candidates:
        for section in SECTIONS:
            if cand and (cand in section.eval_type_ids or cand == section.name):
                return section.name
    for section in SECTIONS:  # file names such as "core_eval_results.json"
        if any(t in path.stem.lower() for t in section.eval_type_ids):
            return section.name
    return None


def _summarise_config(cfg: Any) -> dict[str, Any]:
    """The few config fields the report shows and uses to name a method (any layout)."""
    if not isinstance(cfg, dict):
        return {}
    run_cfg = cfg.get("run_config") if isinstance(cfg.get("run_config"), dict) else cfg
    out: dict[str, Any] = {}
    model = run_cfg.get("model")
    if isinstance(model, dict):
        out["model"] = model.get("name")
        out["hook"] = model.get("hook")
    sae = run_cfg.get("sae") if isinstance(run_cfg.get("sae"), dict) else cfg.get("sae_cfg")
    if isinstance(sae, dict):
        for key, value in sae.items():
            if isinstance(value, (str, int, float, bool)) or value is None:
                out[f"sae.{key}"] = value
    penalties = run_cfg.get("penalties", cfg.get("penalties"))
    if isinstance(penalties, list):
        names = []
        for pen in penalties:
            if isinstance(pen, dict) and pen.get("name"):
                names.append(str(pen["name"]))
                for key, value in pen.items():
                    if key != "name" and isinstance(value, (str, int, float, bool)):
                        out[f"{pen['name']}.{key}"] = value
            elif isinstance(pen, str):
                names.append(pen)
        out["penalties"] = "+".join(names)
    train = run_cfg.get("train")
    if isinstance(train, dict):
        for key in ("tokens", "batch_size", "lr", "seed"):
            if key in train:
                out[f"train.{key}"] = train[key]
    return {k: v for k, v in out.items() if v is not None}


def _method_name(entry: dict[str, Any], config: dict[str, Any], training_cfg: dict[str, Any]) -> str:
    """sweep.json's method (+ penalty when not already in it), else architecture+penalties."""
    method = entry.get("method") or entry.get("architecture")
    penalty = entry.get("penalty")
    if not method:
        method = config.get("sae.architecture") or training_cfg.get("architecture") or "unknown"
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
    for key in _WALL_TIME_KEYS:
        times = [v for row in history if (v := _number(row.get(key))) is not None]
        if times:
            out["cost.wall_time_s"] = max(times)
            break
    if "cost.wall_time_s" not in out and "train.tokens" in out and speeds:
        out["cost.wall_time_s"] = out["train.tokens"] / out["cost.tokens_per_s"]
    for key in _PEAK_MEMORY_KEYS:
        mems = [v for row in history if (v := _number(row.get(key))) is not None]
        if mems:
            out["cost.peak_memory_bytes"] = max(mems)
            break
    states = [v for row in history if (v := _number(row.get("state_memory_bytes"))) is not None]
    if states:
        out["cost.state_memory_bytes"] = max(states)
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
    notes: list[str] = []
    config = _summarise_config(_read_json(path / "config.json", notes))
    history = read_history(path / "metrics.jsonl", notes)
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    found: list[str] = []
    training_cfg: dict[str, Any] = {}

    def add_section(name: str, blob: Any) -> None:
        if name in found or not isinstance(blob, dict):
            return
        flat = flatten_eval_metrics(blob)
        if not flat and not blob.get("eval_result_details"):
            return
        found.append(name)
        metrics.update({f"{name}.{k}": v for k, v in flat.items()})
        extra = {k: blob[k] for k in ("eval_result_details", "eval_result_unstructured") if blob.get(k)}
        if extra:
            details[name] = extra

    final_info = _read_json(path / "final_info.json", notes)
    if isinstance(final_info, dict):
        for key, blob in final_info.items():
            if "training" in key.lower() and isinstance(blob, dict):
                info = blob.get("final_info", blob)
                training_cfg = blob.get("config", {}) if isinstance(blob.get("config"), dict) else {}
                for k, v in (info.items() if isinstance(info, dict) else ()):
                    if (num := _number(v)) is not None:
                        metrics[f"train.{k}"] = num
                continue
            names = _section_for_key(key)
            for name in names:
                add_section(name, _pick_subsection(blob, name) if len(names) > 1 else blob)
    elif not (path / "final_info.json").exists():
        notes.append("no final_info.json")

    eval_dir = path / "eval_results"
    if eval_dir.is_dir():
        for file in sorted(eval_dir.rglob("*.json")):
            blob = _read_json(file, notes)
            name = _section_of_eval_file(file, blob)
            if name is None and isinstance(blob, dict) and ("scr" in file.stem or "tpp" in file.stem):
                for sub in ("scr", "tpp"):
                    add_section(sub, _pick_subsection(blob, sub))
            elif name is not None:
                add_section(name, blob)

    for key, value in _history_metrics(history).items():
        metrics.setdefault(key, value)
    for key in _PEAK_MEMORY_KEYS + _WALL_TIME_KEYS:  # also accept them in final_info's training block
        if (num := metrics.get(f"train.{key}")) is not None:
            target = "cost.peak_memory_bytes" if key in _PEAK_MEMORY_KEYS else "cost.wall_time_s"
            metrics.setdefault(target, num)

    missing = [s for s in EXPECTED_SECTIONS if s not in found]
    if missing:
        notes.append("no " + ", ".join(SECTION_BY_NAME[s].title for s in missing) + " results")
    if not history:
        notes.append("no training log (metrics.jsonl)")
    method = _method_name(entry, config, training_cfg)
    label = label or entry.get("label") or _default_label(run, method, config, metrics)
    return RunRecord(run=run, label=str(label), method=method, path=path, metrics=metrics,
                     history=history, config=config, details=details, sections=found, notes=notes)


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _find_run_dirs(root: Path, max_depth: int = 3) -> list[Path]:
    """Directories holding a run marker, searched breadth-first (the report dir excluded)."""
    if any((root / m).is_file() for m in RUN_MARKERS):
        return [root]
    found: list[Path] = []
    level = [root]
    for _ in range(max_depth):
        nxt = []
        for directory in level:
            for child in sorted(directory.iterdir(), key=lambda p: _natural_key(p.name)):
                if not child.is_dir() or child.name.startswith(".") or child.name == REPORT_DIRNAME:
                    continue
                if any((child / m).is_file() for m in RUN_MARKERS):
                    found.append(child)
                else:
                    nxt.append(child)
        level = nxt
    return found


def collect(path: str | Path, labels: Optional[dict[str, str]] = None) -> Sweep:
    """Read a sweep dir, a single run dir or a dir of run dirs into a `Sweep`.

    Labels come from `labels` (run name -> label), then sweep.json's "labels" and its
    per-run "label", then a default built from the method and k (or L0).
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"report input {str(root)!r} is not a directory; pass a sweep or run directory")
    notes: list[str] = []
    sweep_meta = _read_json(root / "sweep.json", notes)
    sweep_meta = sweep_meta if isinstance(sweep_meta, dict) else {}
    entries = {str(e.get("run")): e for e in sweep_meta.get("runs", []) if isinstance(e, dict) and e.get("run")}
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
            notes.append(f"sweep.json lists {run!r} but no such run directory holds results")
    if not records:
        notes.append(f"no run directories (with {' or '.join(RUN_MARKERS)}) found under {root}")
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


def methods_of(records: Iterable[RunRecord]) -> list[str]:
    """Methods in first-seen order (so colours follow the sweep's order)."""
    seen: dict[str, None] = {}
    for rec in records:
        seen.setdefault(rec.method, None)
    return list(seen)
