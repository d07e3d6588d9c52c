"""Sweeps: a study of many SAEs trained on ONE activation stream, then evaluated together.

A sweep config lists methods (an SAE architecture plus penalties) and a grid over each
method's parameters; `expand_sweep` turns it into runs named run_0, run_1, ... in a stable
order (with `seeds`, each grid point once per seed, its seeds next to each other), and `run_sweep` trains every unfinished run in one pass over the language model (or
cache), evaluates them sharing the model's work, and leaves out_dir/run_i/ run dirs plus
out_dir/sweep.json for `featsep report`.
"""

from __future__ import annotations

from pathlib import Path

from featsep.config import ConfigError, SweepConfig, validate
from featsep.pipeline import (
    RunSpec,
    check_continuation,
    check_outputs,
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
                                     sae=point.sae, penalties=list(point.penalties), params=params, seed=seed))
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


def sweep_manifest(cfg: SweepConfig, specs: list[RunSpec]) -> dict:
    """sweep.json: what the report needs to group runs into methods and label them."""
    return {
        "name": cfg.name,
        "config": cfg.model_dump(mode="json"),
        "runs": [_run_entry(s) for s in specs],
        "labels": {s.name: s.label for s in specs},
    }


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
    job = world()
    job.barrier()  # every rank has compared the run dirs before rank 0 writes
    if job.rank == 0:
        write_sweep_manifest(out, sweep_manifest(cfg, specs))
        if changes:
            record_changes(continued, changes, cfg.model_dump(mode="json"))
    job.barrier()

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
        evaluate_runs([out / s.name for s in specs], cfg.eval, cfg.model)
    print(f"sweep: {len(specs)} runs in {out}; `featsep report {out}` builds the report")
    return out
