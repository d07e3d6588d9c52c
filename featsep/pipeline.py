"""From a config to run dirs: model + text (or a cache) -> activation stream -> SAEs -> evals.

`featsep train CONFIG` and `featsep sweep CONFIG` both land in `train_specs`, which trains any
number of SAEs on one shared activation stream (so a sweep pays for the language model once).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from featsep.config import ConfigError, PenaltySection, RunConfig, SAESection, apply_overrides, validate
from featsep.data.config import DataConfig
from featsep.evals.settings import EvalConfig
from featsep.io import ensure_writable_dir, format_bytes
from featsep.lm.config import ModelConfig
from featsep.rundir import RunDir
from featsep.train.config import TrainConfig

if TYPE_CHECKING:
    from featsep.distributed import World

# What a continued run may change: how it logs and checkpoints, where it computes, how long it
# trains, what is evaluated. Everything else (the SAE, its penalties, the activations, the
# optimiser, the seeds) is what its checkpoints were made with, so a change to it is refused.
RESUME_SAFE = ("train.tokens", "train.log_every", "train.checkpoint_every", "train.device", "train.wandb",
               "train.tensorboard", "model.device", "eval")


@dataclass
class RunSpec:
    """One SAE to train: its run-dir name, a human label, its method and its configuration."""

    name: str
    label: str
    method: str
    sae: SAESection  # type: ignore[valid-type]
    penalties: list[PenaltySection] = field(default_factory=list)  # type: ignore[valid-type]
    params: dict[str, Any] = field(default_factory=dict)
    # a sweep's per-run seed (SAE init and resampling); None: the SAE takes data.seed as before
    seed: Optional[int] = None
    # the method's learning rate; None: [train] lr, else the SAE's rule for its optimizer
    lr: Optional[float] = None


def is_trained(run_dir: Path) -> bool:
    """A finished run has its final SAE and the training section of final_info.json (a
    corrupted final_info.json counts as unfinished)."""
    from featsep.sae.io import CFG_FILENAME

    run = RunDir(run_dir)
    return (run.sae_dir / CFG_FILENAME).is_file() and run.has_training()


def sae_metadata(model: ModelConfig, data: DataConfig, stream) -> dict[str, Any]:
    """Where the activations came from, carried into every SAE's cfg.json."""
    from featsep.lm import parse_hook

    factor = getattr(stream, "normalization_factor", None)
    return {
        "hook_name": model.hook,
        "hook_layer": parse_hook(model.hook),
        "model_name": model.name,
        "context_size": data.context_length,
        "prepend_bos": True,
        "dataset_path": data.cache or data.dataset,
        # SAELens has no "constant factor" mode: the factor travels under its own key and
        # featsep's evals apply it (x * factor in, x_hat / factor out).
        "normalize_activations": "none",
        "normalization_factor": factor,
        "seed": data.seed,
    }


def build_sae(spec: RunSpec, d_in: int, metadata: dict[str, Any], device: str):
    from featsep.sae import make_sae

    if spec.seed is not None:
        metadata = {**metadata, "seed": spec.seed}
    return make_sae(spec.sae.architecture, d_in=d_in, device=device, **metadata, **spec.sae.params())


def build_penalties(spec: RunSpec, d_sae: int) -> list:
    from featsep.penalties import make_penalty

    return [make_penalty(p.name, d_sae=d_sae, **p.params()) for p in spec.penalties]


def run_view(model: ModelConfig, data: DataConfig, train: TrainConfig, eval_cfg: EvalConfig, sae,
             penalties) -> dict[str, Any]:
    """One run's settings as a resume compares them (a sweep's run and a single run alike)."""
    return {
        "model": model.model_dump(mode="json"), "data": data.model_dump(mode="json"),
        "sae": sae.model_dump(mode="json"), "penalties": [p.model_dump(mode="json") for p in penalties],
        "train": train.model_dump(mode="json"), "eval": eval_cfg.model_dump(mode="json"),
    }


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted leaves. A list of tables is also a leaf of its entries' names, so an added or
    removed penalty is named as such before its fields are."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(tree, list) and tree and all(isinstance(x, dict) for x in tree):
        out = {prefix: [x.get("name") for x in tree]}
        for i, value in enumerate(tree):
            out.update(_flat(value, f"{prefix}.{i}"))
        return out
    return {prefix: tree}


def resume_changes(run_dir: Path, saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The safe changes ("train.log_every 10 -> 5") from the run view `saved` to `now`;
    ConfigError naming the first change the run's checkpoints forbid (see RESUME_SAFE)."""
    old, new = _flat(saved), _flat(now)
    unset = object()

    def show(value: Any) -> str:
        return "(unset)" if value is unset else json.dumps(value)

    changes = []
    for key in list(new) + [k for k in old if k not in new]:
        before, after = old.get(key, unset), new.get(key, unset)
        if before == after:
            continue
        if not any(key == safe or key.startswith(safe + ".") for safe in RESUME_SAFE):
            raise ConfigError(
                f"{run_dir} was trained with {key} = {show(before)}, not {show(after)}, and its checkpoints "
                f"depend on it; keep {key} = {show(before)} to continue it, or train into another out_dir"
            )
        changes.append(f"{key} {show(before)} -> {show(after)}")
    return changes


def check_continuation(run_dir: Path, now: dict[str, Any],
                       saved_view: Callable[[dict[str, Any]], dict[str, Any]]) -> list[str]:
    """Compare a run dir's saved run_config (its view via `saved_view`) with the run view `now`
    when the dir holds checkpoints or a trained SAE; returns the safe changes (see resume_changes)."""
    run = RunDir(run_dir)
    if not (run.has_checkpoints() or is_trained(run_dir)):
        return []
    record = run.read_config()
    if record is None or not record.run_config:
        return []
    return resume_changes(run_dir, saved_view(record.run_config), now)


def record_changes(run_dirs: list[Path], changes: list[str], run_config: dict[str, Any]) -> None:
    """Say what a continued run changed and store its new run_config in each config.json."""
    for line in dict.fromkeys(changes):
        print(f"resume: {line}")
    for run_dir in run_dirs:
        record = RunDir(run_dir).read_config()
        RunDir(run_dir).write_config({**record.model_dump(), "run_config": run_config})


def d_in_without_loading(model: ModelConfig, data: DataConfig) -> Optional[int]:
    """The activation width as the cache's manifest, a local checkpoint's config.json or the
    built-in models' table give it (None: only loading the model tells)."""
    from featsep.data.cache import MANIFEST
    from featsep.lm.loading import OFFLINE_MODELS

    sources = [(Path(model.name) / "config.json", "hidden_size")]
    if data.cache:
        sources.insert(0, (Path(data.cache) / MANIFEST, "d_in"))
    for path, key in sources:
        try:
            value = json.loads(path.read_text()).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, int):
            return value
    offline = OFFLINE_MODELS.get(model.name)
    return offline.d_model if offline is not None else None


def check_free_space(out_dir: Path, specs: list[RunSpec], d_in: int) -> None:
    """Room for the first checkpoints: each SAE's parameters x 4 bytes x 3 (weights and Adam's
    two moments), a lower bound that catches a nearly full disk before training starts."""
    params = sum(2 * d_in * s.sae.d_sae + s.sae.d_sae + d_in for s in specs)
    need, free = params * 4 * 3, shutil.disk_usage(out_dir).free
    if free < need:
        raise ValueError(
            f"out_dir {out_dir} has {format_bytes(free)} free but the first checkpoint of {len(specs)} SAE(s) needs "
            f"about {format_bytes(need)} (parameters x 4 bytes x 3 for Adam's moments); free space or choose "
            "another out_dir"
        )


def check_outputs(out_dir: Path, specs: list[RunSpec], model: ModelConfig, data: DataConfig) -> None:
    """Before the model loads: out_dir is none of the run's inputs, a writable directory (created
    here), and has room for the first checkpoints when the activation width is known already."""
    for what, value in (("data.cache", data.cache), ("data.dataset", data.dataset), ("model.name", model.name)):
        if value and Path(value).exists() and Path(value).resolve() == Path(out_dir).resolve():
            raise ConfigError(f"out_dir {out_dir} is the run's input {what}; choose another out_dir, "
                              "so the run's files never mix with (or overwrite) what it reads")
    ensure_writable_dir(out_dir, "out_dir")
    d_in = d_in_without_loading(model, data)
    if d_in is not None:
        check_free_space(out_dir, specs, d_in)


def _check_sequence_mode(specs: list[RunSpec], data: DataConfig) -> None:
    temporal = [s.name for s in specs if any(p.name == "temporal" for p in s.penalties)]
    if temporal and data.shuffle_buffer and not data.sequence_mode:
        print(
            f"note: {', '.join(temporal)} use the temporal penalty on shuffled activations (its windows "
            "then span training steps only); set data.sequence_mode=true to feed whole contexts in order"
        )


def world() -> "World":
    """The torchrun job this process is part of (one process outside torchrun)."""
    from featsep.distributed import World

    return World.from_env()


def parallel_mode(train: TrainConfig, n_saes: int, world_size: int) -> TrainConfig:
    """[train] parallel as written, else: SAE parallel when a pass has at least one SAE per
    rank (no gradient all-reduce, only the batch gathered), data parallel otherwise."""
    if world_size < 2 or "parallel" in train.model_fields_set:
        return train
    return train.model_copy(update={"parallel": "sae" if n_saes >= world_size else "data"})


def train_specs(
    specs: list[RunSpec],
    *,
    model: ModelConfig,
    data: DataConfig,
    train: TrainConfig,
    out_dir: Path,
    shared_config: dict[str, Any],
    single_run: bool = False,
    lm=None,
) -> list[Path]:
    """Train `specs` together on one activation stream; returns their run dirs.

    single_run: out_dir IS the run dir (featsep train); otherwise runs go to out_dir/<name>.
    Runs with checkpoints resume (all of them from the last step they share); runs killed
    before their first checkpoint start again from step 0. Under torchrun each rank streams
    its share of every global batch (stream_from_config) and train() joins them."""
    from featsep.data import stream_from_config
    from featsep.train import train as train_saes

    out_dir = Path(out_dir)
    run_dirs = [out_dir] if single_run else [out_dir / s.name for s in specs]
    from featsep.lm.loading import resolve_device

    device = str(resolve_device(train.device))
    steps = train.tokens // train.batch_size
    if steps < 1:
        raise ConfigError(
            f"train.tokens={train.tokens} is less than one batch (train.batch_size={train.batch_size})"
        )
    _check_sequence_mode(specs, data)
    job = world()
    stream = stream_from_config(model, data, train.batch_size, lm=lm, rank=job.rank, world_size=job.size,
                                pin_memory=device.startswith("cuda"),
                                reduce_sum=(lambda t: job.all_reduce(t, "sum")) if job.distributed else None)
    check_free_space(out_dir, specs, stream.d_in)  # again: the width is certain now
    # Estimated from the stream's first chunks (the same ones on a resume), so every SAE's
    # cfg.json records the factor its inputs were scaled by.
    stream.ensure_normalization_factor()
    meta = sae_metadata(model, data, stream)
    saes = [build_sae(s, stream.d_in, meta, device) for s in specs]
    penalties = [build_penalties(s, s.sae.d_sae) for s in specs]
    resume = any(RunDir(d).holds_training() for d in run_dirs)
    if any(RunDir(d).has_checkpoints() for d in run_dirs):
        print(f"resuming {len(specs)} run(s) from their last checkpoint")
    job.barrier()  # every rank has read the run dirs before any writes to them
    started = time.time()
    if single_run or len(specs) == 1:
        target, names = run_dirs[0], [specs[0].name]
    else:
        target, names = out_dir, [s.name for s in specs]
    train_saes(
        saes, stream, steps, penalties=penalties, lr=[train.lr if s.lr is None else s.lr for s in specs],
        config=parallel_mode(train, len(specs), job.size).model_copy(update={"device": device}),
        out_dir=target, names=names, resume=resume, run_config=shared_config, world=job,
    )
    job.barrier()  # each run dir finished (by its writer rank) before any rank evaluates it
    minutes = (time.time() - started) / 60
    print(
        f"trained {len(specs)} SAE(s) on {steps * train.batch_size:,} activations in {minutes:.1f} min "
        f"-> {', '.join(str(d) for d in run_dirs)}"
    )
    return run_dirs


def evaluate_runs(run_dirs: list[Path], eval_cfg: EvalConfig, model: ModelConfig, lm=None) -> None:
    """Run the configured evals on run dirs, skipping evals a run already has results for.
    Under torchrun each rank evaluates its share of the runs; all return after the last."""
    from featsep.evals import evaluate

    job = world()
    todo: dict[tuple[str, ...], list[Path]] = {}
    for run_dir in run_dirs:
        missing = missing_evals(run_dir, eval_cfg.evals)
        if missing:
            todo.setdefault(missing, []).append(run_dir)
    for evals, dirs in todo.items():
        for name, group in eval_cfg.by_model(evals, model.name).items():  # e.g. unlearning on the -it model
            settings = json.loads(json.dumps(eval_cfg.settings))  # a private copy
            own = name == model.name
            evaluate([str(d) for d in dirs], evals=group, model=lm if lm is not None and own else name,
                     settings=settings, device=model.device, dtype=model.dtype if own else "auto",
                     share=(job.rank, job.size), verbose=job.rank == 0)
    job.barrier()


def missing_evals(run_dir: Path, evals: list[str]) -> tuple[str, ...]:
    """The evals a run dir has no result file for (each eval's own file, not a name pattern)."""
    return tuple(e for e in evals if not RunDir(run_dir).has_eval(e))


def as_written(cfg: RunConfig) -> dict[str, Any]:
    """config.json's run_config: every section in full, the SAE and penalty entries as the user
    wrote them (their resolved values are config.json's "sae" and "penalties" blocks), so the
    report labels a run by what was chosen, not by every default."""
    out = cfg.model_dump(mode="json")
    out["sae"] = {"architecture": cfg.sae.architecture, "d_sae": cfg.sae.d_sae,
                  **cfg.sae.model_dump(mode="json", exclude_unset=True)}
    out["penalties"] = [{"name": p.name, **p.model_dump(mode="json", exclude_unset=True)} for p in cfg.penalties]
    return out


def run_from_config(cfg: RunConfig, resume: bool = False) -> Path:
    """`featsep train CONFIG`: one SAE (plus penalties) trained into cfg.out_dir, then evals.

    A run dir with checkpoints is continued either way; one that a run left before its first
    checkpoint is only restarted when asked (resume=True, `featsep train --resume RUN`), since
    the config given may not be the one that started it. A dir holding checkpoints or a trained
    SAE is first compared with `cfg`: a change outside RESUME_SAFE is refused, the safe ones are
    printed and recorded in config.json. Output checks come before the model loads."""
    out = Path(cfg.out_dir)
    spec = RunSpec(
        name=out.name or "run",
        label=cfg.sae.architecture + "".join(f"+{p.name}" for p in cfg.penalties),
        method=cfg.sae.architecture + "".join(f"+{p.name}" for p in cfg.penalties),
        sae=cfg.sae,
        penalties=list(cfg.penalties),
    )
    check_outputs(out, [spec], cfg.model, cfg.data)
    changes = check_continuation(out, _view(cfg), lambda saved: _view(
        validate(RunConfig, {**saved, "out_dir": str(out)}, source=str(RunDir(out).config_file))))
    job = world()
    job.barrier()  # every rank has compared before rank 0 records
    if changes and job.rank == 0:
        record_changes([out], changes, as_written(cfg))
    if is_trained(out):
        print(f"{out} is already trained; delete it or choose another out_dir to train again")
    elif not resume and RunDir(out).holds_training() and not RunDir(out).has_checkpoints():
        raise FileExistsError(
            f"{out} holds a training run that stopped before its first checkpoint; continue it with "
            f"`featsep train --resume {out}` (it starts again from step 0), or choose another out_dir"
        )
    else:
        train_specs(
            [spec],
            model=cfg.model,
            data=cfg.data,
            train=cfg.train,
            out_dir=out,
            shared_config=as_written(cfg),
            single_run=True,
        )
    if cfg.eval.evals:
        evaluate_runs([out], cfg.eval, cfg.model)
    return out


def _view(cfg: RunConfig) -> dict[str, Any]:
    return run_view(cfg.model, cfg.data, cfg.train, cfg.eval, cfg.sae, cfg.penalties)


def resume_from_dir(run_dir: Path, overrides: Optional[list[str]] = None) -> Path:
    """`featsep train --resume RUN_DIR`: rebuild the run from its config.json and continue;
    `overrides` may change only what RESUME_SAFE lists (see run_from_config)."""
    run_dir = Path(run_dir)
    record = RunDir(run_dir).read_config()
    if record is None:
        raise FileNotFoundError(
            f"{run_dir} has no config.json, so it is not a featsep run dir (or it was killed before "
            "its first write); start it again with `featsep train CONFIG`"
        )
    saved = record.run_config
    if not saved or "sae" not in saved:
        raise ConfigError(
            f"{run_dir} belongs to a sweep (or has no run config); resume it with `featsep sweep CONFIG`"
        )
    saved["out_dir"] = str(run_dir)
    cfg = validate(RunConfig, apply_overrides(saved, overrides or []), source=str(RunDir(run_dir).config_file))
    return run_from_config(cfg, resume=True)
