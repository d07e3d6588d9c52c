"""Sweeps: a study of many SAEs trained on ONE activation stream, then evaluated together.

A sweep config lists methods (an SAE architecture plus penalties) and a grid over each
method's parameters; `expand_sweep` turns it into runs named run_0, run_1, ... in a stable
order (with `seeds`, each grid point once per seed, its seeds next to each other), and `run_sweep` trains every unfinished run in one pass over the language model (or
cache), evaluates them sharing the model's work, and leaves out_dir/run_i/ run dirs plus
out_dir/sweep.json for `featsep report`. `[[baselines]]` (released SAEs) become baseline run dirs
baseline_0, baseline_1, ... (featsep.evals.baselines), evaluated with the runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from featsep.config import ConfigError, SweepConfig, validate
from featsep.pipeline import (
    RunSpec,
    check_continuation,
    check_outputs,
    d_in_without_loading,
    evaluate_runs,
    is_trained,
    record_changes,
    run_view,
    train_specs,
    world,
)
from featsep.rundir import read_sweep_manifest, write_sweep_manifest


def _short(dotted: str) -> str:
    """'sae.k' -> 'k', 'penalties.0.weight' -> 'weight' (labels stay readable)."""
    return dotted.split(".")[-1]


def _label(name: str, params: dict) -> str:
    return name + (" (" + ", ".join(f"{_short(k)}={v}" for k, v in params.items()) + ")" if params else "")


def expand_sweep(cfg: SweepConfig) -> list[RunSpec]:
    """Every run of the sweep, in a stable order (methods in file order, grid row-major, then
    seeds in config order). A seeded run's label ends in seed=S; its `point` label omits it, so
    the report can group a point's seeds."""
    specs: list[RunSpec] = []
    names_seen: set[str] = set()
    for method in cfg.methods:
        if method.name in names_seen:
            raise ConfigError(f"two methods are named {method.name!r}; method names must be unique")
        names_seen.add(method.name)
        for params, point in method.combinations():
            for seed in cfg.seeds if cfg.seeds is not None else [None]:
                shown = params if seed is None else {**params, "seed": seed}
                specs.append(RunSpec(name=f"run_{len(specs)}", label=_label(method.name, shown), method=method.name,
                                     sae=point.sae, penalties=list(point.penalties), params=params, seed=seed,
                                     lr=point.lr))
    if not specs:
        raise ConfigError("the sweep has no methods; add at least one [[methods]] table")
    return specs


def _run_entry(spec: RunSpec) -> dict:
    entry = {
        "run": spec.name,
        "label": spec.label,
        "method": spec.method,
        "architecture": spec.sae.architecture,
        "penalty": "+".join(p.name for p in spec.penalties) or None,
        "params": spec.params,
    }
    if spec.seed is not None:
        entry.update(seed=spec.seed, point=_label(spec.method, spec.params))
    return entry


@dataclass
class BaselineSpec:
    """One released SAE of a sweep: its run-dir name, label, baseline name (its method) and source."""

    name: str
    label: str
    method: str
    source: str


def expand_baselines(cfg: SweepConfig) -> list[BaselineSpec]:
    """The sweep's baselines as run dirs baseline_0, baseline_1, ... in config order; a baseline
    of several SAEs labels each by its reference's last part (e.g. average_l0_82)."""
    out = []
    for baseline in cfg.baselines:
        for ref, part in zip(baseline.refs, _distinct_parts(baseline.refs)):
            label = baseline.name if len(baseline.refs) == 1 else f"{baseline.name} ({part})"
            out.append(BaselineSpec(f"baseline_{len(out)}", label, baseline.name, ref))
    return out


def _distinct_parts(refs: list[str]) -> list[str]:
    """What tells the references apart: their path parts after the common leading and trailing
    ones (.../average_l0_22 vs .../average_l0_82 -> average_l0_22, average_l0_82)."""
    parts = [ref.rstrip("/").split("/") for ref in refs]
    head = 0
    while all(len(p) > head + 1 for p in parts) and len({p[head] for p in parts}) == 1:
        head += 1
    tail = 0
    while all(len(p) > head + tail + 1 for p in parts) and len({p[-1 - tail] for p in parts}) == 1:
        tail += 1
    return ["/".join(p[head:len(p) - tail]) for p in parts]


def _baseline_entry(spec: BaselineSpec) -> dict:
    return {"run": spec.name, "label": spec.label, "method": spec.method, "baseline": True, "source": spec.source}


def sweep_manifest(cfg: SweepConfig, specs: list[RunSpec], baselines: list[BaselineSpec] = ()) -> dict:
    """sweep.json: what the report needs to group runs into methods and label them; baselines
    listed apart (their runs are not trained, and adding one never renames a trained run)."""
    return {
        "name": cfg.name,
        "config": cfg.model_dump(mode="json"),
        "runs": [_run_entry(s) for s in specs],
        "baselines": [_baseline_entry(b) for b in baselines],
        "labels": {s.name: s.label for s in [*specs, *baselines]},
    }


def prepare_baselines(cfg: SweepConfig, out: Path, baselines: list[BaselineSpec]) -> list[Path]:
    """Before the model loads: fetch and load each baseline, refuse one whose hook (when it records
    one) is not the sweep's or whose width is not the model's (when known without loading it),
    and write its baseline run dir (evaluated with the sweep's model and hook)."""
    from featsep.evals.baselines import describe, write_baseline
    from featsep.sae.foreign import featsep_hook

    d_in = d_in_without_loading(cfg.model, cfg.data)
    dirs = []
    for spec in baselines:
        record, sae = describe(spec.source, name=spec.label, model=cfg.model.name, hook=cfg.model.hook)
        own = featsep_hook(sae.cfg.hook_name)[0] if sae.cfg.hook_name else None
        if own and own != cfg.model.hook:
            raise ConfigError(f"baseline {spec.label!r} ({spec.source}) reads {own}, not the sweep's model.hook "
                              f"{cfg.model.hook}; drop it or pick the SAE of that layer")
        if d_in is not None and record.d_in != d_in:
            raise ConfigError(f"baseline {spec.label!r} ({spec.source}) has d_in={record.d_in} but {cfg.model.name} "
                              f"gives {d_in}-wide activations; it was trained on another model")
        write_baseline(out / spec.name, record, run_config=cfg.model_dump(mode="json"))
        dirs.append(out / spec.name)
    return dirs


def _view(cfg: SweepConfig, spec: RunSpec) -> dict:
    """The run view, plus the run's seed when seeded (its checkpoints depend on it)."""
    view = run_view(cfg.model, cfg.data, cfg.train, cfg.eval, spec.sae, spec.penalties)
    return view if spec.seed is None else {**view, "seed": spec.seed}


def _saved_view(saved: dict, name: str) -> dict:
    """The view of run `name` in the sweep config a run dir's config.json saved."""
    cfg = validate(SweepConfig, saved, source=f"the saved config of {name}")
    spec = next((s for s in expand_sweep(cfg) if s.name == name), None)
    if spec is None:
        raise ConfigError(f"{name}'s saved sweep config has no run {name}; use another out_dir or delete the old one")
    return _view(cfg, spec)


def run_sweep(cfg: SweepConfig, evaluate: bool = True) -> Path:
    """Train (resuming where possible) and evaluate every run; returns the sweep dir. Runs that
    hold checkpoints or a trained SAE must match this config but for RESUME_SAFE fields
    (pipeline.resume_changes), all checked before the model loads."""
    out = Path(cfg.out_dir)
    specs = expand_sweep(cfg)
    check_outputs(out, [s for s in specs if not is_trained(out / s.name)], cfg.model, cfg.data)
    previous = read_sweep_manifest(out)
    if previous is not None:
        prev_runs = [(r["run"], r["label"]) for r in previous.get("runs", [])]
        now_runs = [(s.name, s.label) for s in specs]
        if prev_runs and prev_runs[: len(now_runs)] != now_runs[: len(prev_runs)]:
            raise ConfigError(
                f"{out} holds a different sweep (its runs differ from this config's); "
                "use another out_dir or delete the old one"
            )
    changes, continued = [], []
    for spec in specs:
        found = check_continuation(out / spec.name, _view(cfg, spec),
                                   lambda saved, name=spec.name: _saved_view(saved, name))
        if found:
            changes += found
            continued.append(out / spec.name)
    baselines = expand_baselines(cfg)
    job = world()
    job.barrier()  # every rank has compared the run dirs before rank 0 writes
    if job.rank == 0:
        try:  # fetches, checks and writes the baseline run dirs: one rank only
            prepare_baselines(cfg, out, baselines)
            write_sweep_manifest(out, sweep_manifest(cfg, specs, baselines))
            if changes:
                record_changes(continued, changes, cfg.model_dump(mode="json"))
        except Exception as e:  # every rank stops with it (none waits at the next collective)
            job.broadcast_object(str(e))
            raise
    failure = job.broadcast_object(None)  # also the barrier
    if failure is not None:
        raise ConfigError(f"rank 0 refused the sweep: {failure}")
    baseline_dirs = [out / b.name for b in baselines]

    todo = [s for s in specs if not is_trained(out / s.name)]
    done = len(specs) - len(todo)
    if done:
        print(f"sweep: {done} of {len(specs)} runs already trained, skipping them")
    step = cfg.max_saes_per_pass or len(todo) or 1
    for i in range(0, len(todo), step):
        train_specs(
            todo[i : i + step],
            model=cfg.model,
            data=cfg.data,
            train=cfg.train,
            out_dir=out,
            shared_config=cfg.model_dump(mode="json"),
        )
    if evaluate and cfg.eval.evals:
        evaluate_runs([out / s.name for s in specs] + baseline_dirs, cfg.eval, cfg.model)
    shown = f" and {len(baselines)} baseline(s)" if baselines else ""
    print(f"sweep: {len(specs)} runs{shown} in {out}; `featsep report {out}` builds the report")
    return out
