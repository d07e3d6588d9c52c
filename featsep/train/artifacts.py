"""What a run writes besides checkpoints and metrics: config.json when it starts; sae/ and
the training section of final_info.json when it ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from featsep.hooknames import parse_hook
from featsep.penalties.base import Penalty
from featsep.rundir import RunDir, TrainingResults
from featsep.sae.base import SAE
from featsep.train.config import MemberTraining
from featsep.version import __version__

# names a sparsity coefficient goes by among the SAE loss terms (first found wins)
_SPARSITY_TERMS = ("l1", "l0", "sparsity")


def penalty_config(pen: Penalty) -> dict[str, Any]:
    return {"name": pen.name, **pen.cfg.model_dump()}


def write_config(run_dir: Path, sae: SAE, penalties: list[Penalty], train: MemberTraining,
                 run_config: Optional[dict]) -> None:
    """config.json: everything needed to rebuild and resume the run (`run_config` is the
    caller's whole RunConfig; `train` how this SAE is trained, as resolved)."""
    RunDir(run_dir).write_config({
        "featsep_version": __version__,
        "run_config": run_config,
        "sae": sae.to_cfg_dict(),
        "penalties": [penalty_config(p) for p in penalties],
        "train": train.model_dump(mode="json"),
    })


def hook_layer(cfg: Any) -> int:
    """The SAE's layer: cfg.hook_layer, else parsed from a hook name like blocks.12.hook_..."""
    layer = getattr(cfg, "hook_layer", -1)
    if layer is not None and layer >= 0:
        return int(layer)
    try:
        return parse_hook(getattr(cfg, "hook_name", ""))
    except (ValueError, TypeError):
        return -1


def logged_wall_time_s(rows: list[dict[str, Any]]) -> Optional[float]:
    """Seconds of the training loop, from the log: each row covers the tokens since the row
    before at its tokens_per_s (the windows tile the loop, so their sum is its wall time)."""
    total, tokens_before = 0.0, 0
    for row in rows:
        speed = row.get("tokens_per_s")
        if not speed:
            return None
        total += (row["tokens"] - tokens_before) / speed
        tokens_before = row["tokens"]
    return total if rows else None


def trainer_config(sae: SAE, penalties: list[Penalty], train: MemberTraining) -> dict[str, Any]:
    """The "config" block of final_info.json, in the reference runs' key names (dictionary_learning
    trainer configs: l1_penalty for L1 SAEs, k for TopK ones, resample_steps null when off)."""
    cfg = sae.cfg
    out = {
        "trainer_class": "featsep.train",
        "dict_class": sae.architecture,
        "lr": train.lr,
        "steps": train.steps,
        "seed": train.seed,
        "activation_dim": cfg.d_in,
        "dict_size": cfg.d_sae,
        "device": train.device,
        "layer": hook_layer(cfg),
        "lm_name": cfg.model_name,
        "submodule_name": cfg.hook_name,
        "wandb_name": train.name,
        "warmup_steps": train.lr_warmup_steps,
        "lr_decay_fraction": train.lr_decay_fraction,
        "penalties": [penalty_config(p) for p in penalties],
    }
    if hasattr(cfg, "l1_coefficient"):
        out["l1_penalty"] = cfg.l1_coefficient
    if hasattr(cfg, "k"):
        out["k"] = cfg.k
    out["resample_steps"] = getattr(cfg, "resample_every", 0) or None
    return out


def write_final(run_dir: Path, sae: SAE, penalties: list[Penalty], train: MemberTraining,
                steps: int, tokens: int, last_row: dict[str, Any]) -> None:
    """Save the weights to sae/ and set the "training results for layer L" section."""
    from featsep.sae import save_sae

    rd = RunDir(run_dir)
    save_sae(sae, rd.sae_dir)
    coefficients = {k[len("coef/"):]: v for k, v in last_row.items() if k.startswith("coef/")}
    results = TrainingResults(
        training_steps=steps,
        final_loss=last_row.get("loss"),
        layer=hook_layer(sae.cfg),
        dict_size=sae.cfg.d_sae,
        learning_rate=train.lr,
        sparsity_penalty=next((coefficients[t] for t in _SPARSITY_TERMS if t in coefficients), None),
        architecture=sae.architecture,
        training_tokens=tokens,
        l0=last_row.get("l0"),
        fvu=last_row.get("fvu"),
        dead_fraction=last_row.get("dead_fraction"),
        final_loss_terms={k[len("loss/"):]: v for k, v in last_row.items() if k.startswith("loss/")},
        # what each penalty tracks at the end, histograms and top latents included (names are
        # distinct: the trainer refuses two penalties whose terms share a name; tensors among
        # the stats become lists when final_info.json is written)
        penalty_stats={pen.name: pen.stats() for pen in penalties} if penalties else None,
        wall_time_s=logged_wall_time_s(rd.read_metrics()),
    )
    rd.write_training(trainer_config(sae, penalties, train), results)
