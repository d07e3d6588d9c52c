"""`evaluate(...)`: run registered evals on one or many SAEs, write SAEBench-schema results.

SAEs that share a model and hook share the model's work: each eval gets the whole group at
once and the model-side activations are cached (memory within a call, disk across calls).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from featsep.evals.baselines import describe, load_baseline, read_baseline, write_baseline
from featsep.evals.common.context import EvalContext, check_sae_fits, default_cache_dir
from featsep.evals.registry import available_evals, get_eval
from featsep.evals.schema import eval_output
from featsep.evals.settings import resolve_settings
from featsep.io import ensure_writable_dir
from featsep.rundir import RunDir, write_eval_result

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma-3-270m"


@dataclass
class Target:
    sae: Any
    name: str
    run_dir: Optional[RunDir] = None  # without out_dir, results go to its eval results and final_info sections


def _resolve_one(item, index: int) -> Target:
    from featsep.sae import SAE, load_sae
    from featsep.sae.foreign import foreign_format
    from featsep.sae.io import CFG_FILENAME

    if isinstance(item, SAE) or hasattr(item, "encode") and hasattr(item, "cfg"):
        return Target(item, f"sae_{index}")
    path = Path(item).expanduser()
    run = RunDir(path)
    if (path / CFG_FILENAME).exists() or foreign_format(path) is not None:
        # a weights file (params.npz, ae.pt) is named by its folder, as a dir is
        return Target(load_sae(path), path.parent.name if path.is_file() else path.name)
    if (run.sae_dir / CFG_FILENAME).exists():
        return Target(load_sae(run.sae_dir), path.name, run_dir=run)
    if read_baseline(run) is not None:
        return Target(load_baseline(run), path.name, run_dir=run)
    raise ValueError(
        f"{str(path)!r} is neither an SAE directory ({CFG_FILENAME} + sae_weights.safetensors) nor a run directory "
        f"(holding {run.sae_dir.name}/) nor a foreign SAE (SAELens, sparsify, dictionary_learning, Gemma Scope); "
        "pass one of those, a hub reference (hf://ORG/REPO/PATH, saelens:RELEASE/SAE_ID), or an SAE object"
    )


def _run_dirs_below(item) -> list[Path]:
    """The run dirs directly inside a sweep dir (a folder of run dirs), else []."""
    from featsep.sae.io import CFG_FILENAME

    if not isinstance(item, (str, Path)):
        return []
    path = Path(item).expanduser()
    if (not path.is_dir() or (path / CFG_FILENAME).exists() or RunDir(path).sae_dir.is_dir()
            or read_baseline(RunDir(path)) is not None):
        return []
    return sorted(p for p in path.iterdir()
                  if (RunDir(p).sae_dir / CFG_FILENAME).exists() or read_baseline(RunDir(p)) is not None)


def resolve_refs(sae_or_path):
    """Hub references (hf://..., saelens:...) replaced by their local paths (downloaded when
    needed, featsep.sae.foreign.resolve_sae_ref); everything else as given."""
    from featsep.sae.foreign import is_sae_ref, resolve_sae_ref

    if isinstance(sae_or_path, (list, tuple)):
        return [resolve_sae_ref(item) if is_sae_ref(item) else item for item in sae_or_path]
    return resolve_sae_ref(sae_or_path) if is_sae_ref(sae_or_path) else sae_or_path


def resolve_targets(sae_or_path) -> list[Target]:
    """SAEs, SAE dirs, run dirs and sweep dirs (folders of run dirs) -> evaluation targets."""
    items = list(sae_or_path) if isinstance(sae_or_path, (list, tuple)) else [sae_or_path]
    items = [sub for item in items for sub in (_run_dirs_below(item) or [item])]
    if not items:
        raise ValueError("no SAE to evaluate: pass an SAE, an SAE dir, a run dir, or a list of them")
    return [_resolve_one(item, i) for i, item in enumerate(items)]


def _evaluated_dirs(sae_or_path) -> list[Path]:
    """The SAE and run dirs an evaluate() call reads (sweep dirs expanded), resolved."""
    items = sae_or_path if isinstance(sae_or_path, (list, tuple)) else [sae_or_path]
    paths = [sub for item in items for sub in (_run_dirs_below(item) or [item]) if isinstance(sub, (str, Path))]
    return [Path(p).expanduser().resolve() for p in paths]


def per_target_folders(sae_or_path) -> bool:
    """With out_dir, results go to out_dir/<name>/ for a sweep dir or several SAEs, and straight
    into out_dir for one SAE or run dir."""
    items = list(sae_or_path) if isinstance(sae_or_path, (list, tuple)) else [sae_or_path]
    return len(items) > 1 or any(_run_dirs_below(item) for item in items)


def check_out_dir(out_dir: str | Path, sae_or_path) -> Path:
    """Before any eval runs (a full one takes minutes): out_dir is a writable directory (created
    here) and no folder the results go to is, or lies inside, an SAE or run dir being evaluated
    (out_dir keeps every run dir untouched)."""
    from featsep.sae.io import CFG_FILENAME

    out = Path(out_dir).expanduser()
    evaluated = _evaluated_dirs(sae_or_path)
    folders = [out / d.name for d in evaluated] if per_target_folders(sae_or_path) else [out]
    sae_dirs = {p for d in evaluated for p in (d, RunDir(d).sae_dir) if (p / CFG_FILENAME).is_file()}
    for folder in folders:
        f = folder.resolve()
        if f in sae_dirs:
            raise ValueError(f"out_dir {out} is the SAE dir being evaluated; choose another out_dir "
                             "(the results would mix with the SAE's own files)")
        for d in evaluated:
            if f == d or d in f.parents:
                raise ValueError(f"out_dir {out} would put results inside {d}, which is being evaluated; choose an "
                                 "out_dir outside the SAE and run dirs (out_dir leaves them untouched)")
    return ensure_writable_dir(out, "out_dir")


def _load_model(model, targets: list[Target], device: str, dtype: str):
    from featsep.lm import LanguageModel, load_lm

    if isinstance(model, LanguageModel):
        return model
    name = model or targets[0].sae.cfg.model_name or DEFAULT_MODEL
    return load_lm(name, device=device, dtype=dtype)


def _hook_of(target: Target, hook: Optional[str]) -> str:
    h = hook or target.sae.cfg.hook_name
    if not h:
        raise ValueError(
            f"SAE {target.name!r} records no hook_name; pass the hook it reads (e.g. hook='blocks.8.hook_resid_post' "
            "or --set hook=blocks.8.hook_resid_post)"
        )
    return h


def evaluate(
    sae_or_path: Union[Any, str, Path, Sequence],
    evals: Sequence[str] = ("core",),
    model=None,
    out_dir: Optional[str | Path] = None,
    settings: Optional[dict] = None,
    *,
    hook: Optional[str] = None,
    cache_dir: Union[str, Path, None] = "default",
    device: str = "auto",
    dtype: str = "auto",
    verbose: bool = True,
    share: tuple[int, int] = (0, 1),
):
    """Run `evals` (e.g. ["core", "sparse_probing", "absorption"]) on SAEs.

    sae_or_path: an SAE, an SAE dir (featsep's or a foreign format), a hub reference
    (hf://ORG/REPO/PATH, saelens:RELEASE/SAE_ID), a run dir (its sae/ is evaluated; without out_dir, results
    go to the run dir's eval results and final_info sections, see featsep.rundir), a sweep dir
    (its run dirs), or a list of these.
    model: a LanguageModel or a name for featsep.lm.load_lm (default: the SAE's model_name,
    else gemma-3-270m). out_dir: where every result file goes, run dirs included, which then stay
    untouched (one SAE or run dir: out_dir/<eval>_eval_results.json; several or a sweep dir:
    out_dir/<name>/...); without it, bare SAEs' results are only returned.
    settings: {"core": {...}, "absorption": {...}} and/or keys shared by several evals
    ("seed": 1), plus runner keys hook/cache_dir/device/dtype. cache_dir: "default" (the featsep
    cache), a folder, or None (memory only).
    share=(rank, world_size): a torchrun rank evaluates targets rank, rank + N, ... only (output
    folders as for the whole input); always a list, [] when its share is empty.
    Returns {eval_name: SAEBench-schema dict} for one SAE, a list of those for a list.
    """
    evals = list(evals)
    if not evals:
        raise ValueError(f"no eval selected; choose from: {', '.join(available_evals())}")
    specs = [get_eval(name) for name in evals]
    sae_or_path = resolve_refs(sae_or_path)
    eval_settings, runner = resolve_settings(evals, settings, model=model, sae_or_path=sae_or_path)
    per_target = per_target_folders(sae_or_path)
    if out_dir is not None:
        check_out_dir(out_dir, sae_or_path)
    hook = runner.get("hook", hook)
    cache_dir = runner.get("cache_dir", cache_dir)
    cache_dir = default_cache_dir() if cache_dir == "default" else cache_dir
    targets = resolve_targets(sae_or_path)
    if out_dir is not None and per_target:
        check_unique_names(targets)
    if share != (0, 1):
        targets = targets[share[0]::share[1]]
        if not targets:
            return []
    lm = _load_model(model, targets, runner.get("device", device), runner.get("dtype", dtype))

    groups: dict[str, list[int]] = {}
    for i, t in enumerate(targets):
        h = _hook_of(t, hook)
        check_sae_fits(t.sae, lm, h)
        groups.setdefault(h, []).append(i)

    outputs: list[dict[str, dict]] = [{} for _ in targets]
    for h, members in groups.items():
        ctx = EvalContext(lm, h, cache_dir=cache_dir, verbose=verbose)
        saes = [targets[i].sae for i in members]
        for spec in specs:
            s = eval_settings[spec.name]
            start = time.perf_counter()
            results = spec.run(saes, ctx, s)
            wall = time.perf_counter() - start
            for i, res in zip(members, results):
                t = targets[i]
                config = {**(res.config or s.model_dump()), "model_name": lm.name, "hook_name": h}
                unstructured = {**res.unstructured, "wall_time_s": wall, "n_saes_sharing_wall_time": len(saes)}
                outputs[i][spec.name] = eval_output(
                    spec.eval_type_id, config, res.metrics, res.details, unstructured, t.name, t.sae.to_cfg_dict()
                )
                # written as each eval finishes, so an interrupted call keeps what it completed
                _write(t, spec.name, outputs[i][spec.name], out_dir, per_target)
            if verbose:
                print(f"{spec.name}: {len(saes)} SAE(s) on {lm.name} {h} in {wall:.1f} s")
    single = not isinstance(sae_or_path, (list, tuple)) and len(targets) == 1 and share == (0, 1)
    return outputs[0] if single else outputs


def check_unique_names(targets: list[Target]) -> None:
    """out_dir/<name>/ per target: two targets of one name would overwrite each other's files."""
    seen: set[str] = set()
    for t in targets:
        if t.name in seen:
            raise ValueError(f"two SAEs are named {t.name!r}; their results would share out_dir/{t.name}/: "
                             "evaluate them in separate calls or give their dirs distinct names")
        seen.add(t.name)


def _write(target: Target, name: str, result: dict, out_dir, per_target: bool) -> None:
    """With out_dir, the result file goes there only (out_dir/<name>/ when per_target); else a
    run dir gets its result file and final_info section, and a bare SAE nothing."""
    if out_dir is not None:
        write_eval_result(Path(out_dir) / target.name if per_target else Path(out_dir), name, result)
    elif target.run_dir is not None:
        spec = get_eval(name)
        target.run_dir.write_eval(name, result, spec.final_info_key, merge=spec.merge_section,
                                  section=spec.final_info_section)


BASELINE_EVALS = ("competition",)  # a baseline run dir always holds the competition analysis


def evaluate_baseline(
    sae: str | Path,
    run_dir: str | Path,
    evals: Sequence[str] = ("core",),
    model=None,
    hook: Optional[str] = None,
    settings: Optional[dict] = None,
    **kwargs,
) -> Path:
    """A released SAE (a path or hub reference) as a baseline run dir: its identity
    (evals.baselines), then `evals` plus the competition analysis, results in the run dir as a
    trained run's are, so `featsep report` reads it beside trained runs. model/hook default to
    the SAE's own; without them, one line asks for --model / --hook before anything loads."""
    if _run_dirs_below(sae) or (isinstance(sae, (str, Path)) and RunDir(sae).holds_results()):
        raise ValueError(f"{sae} is a run or sweep dir; a baseline run dir is made from one SAE (its folder, "
                         "weights file or hub reference)")
    name = model if model is None or isinstance(model, str) else model.name  # a LanguageModel object
    record, _ = describe(str(sae), name=Path(run_dir).name, model=name, hook=hook)
    write_baseline(run_dir, record)
    evals = list(dict.fromkeys(list(evals) + list(BASELINE_EVALS)))
    todo = [e for e in evals if not RunDir(run_dir).has_eval(e)]
    if todo:
        evaluate(str(run_dir), evals=todo, model=model or record.model_name, settings=settings, **kwargs)
    return Path(run_dir)


def run_eval_cli(
    target: str,
    evals: list[str],
    settings: Optional[list[str]] = None,
    model: Optional[str] = None,
    out_dir: Optional[str] = None,
    world=None,
    hook: Optional[str] = None,
    baseline_dir: Optional[str] = None,
):
    """`featsep eval TARGET --evals core,absorption --set core.n_eval_reconstruction_batches=4`.

    settings: "key=value" strings (values parsed as TOML): "core.dataset=bbc-news",
    "seed=1" (every eval that has it), "hook=blocks.8.hook_resid_post", "cache_dir=/tmp/c".
    world: a torchrun job (featsep.distributed.World): each rank evaluates its share of the
    SAEs, and rank 0 prints every result after the others finished.
    baseline_dir: write a baseline run dir there instead (evaluate_baseline; rank 0 only)."""
    from featsep.settings import apply_overrides

    nested = apply_overrides({}, settings or [])
    if baseline_dir is not None:
        if out_dir is not None:
            raise ValueError("give either --out-dir or --baseline-dir: a baseline run dir holds its own results")
        if world is not None and world.rank != 0:
            world.barrier()
            return None
        run = evaluate_baseline(target, baseline_dir, evals, model=model, hook=hook, settings=nested)
        print(f"baseline run dir: {run} (`featsep report {run}` reads it)")
        if world is not None:
            world.barrier()
        return run
    share = (0, 1) if world is None else (world.rank, world.size)
    returned = evaluate(target, evals=evals, model=model, out_dir=out_dir, settings=nested, share=share,
                        verbose=share[0] == 0, hook=hook)
    results = returned if isinstance(returned, list) else [returned]
    if world is not None and world.distributed:
        returned = results = [r for part in world.all_gather_object(results) for r in part]  # also the barrier
        if world.rank != 0:
            return returned
    for per_sae in results:
        for name, result in per_sae.items():
            print(f"== {result['sae_lens_id']}: {name}")
            for category, values in result["eval_result_metrics"].items():
                shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
                print(f"  {category}: {shown}")
    return returned
