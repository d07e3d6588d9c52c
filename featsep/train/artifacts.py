"""What a run writes besides checkpoints and metrics: config.json when it starts; sae/ and
the training section of final_info.json when it ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from featsep import __version__
from featsep.penalties.base import Penalty
from featsep.sae.base import SAE
from featsep.io import write_json_atomic
from featsep.train import run_dir as rd

# names a sparsity coefficient goes by among the SAE loss terms (first found wins)
_SPARSITY_TERMS = ("l1", "l0", "sparsity")


def penalty_config(pen: Penalty) -> dict[str, Any]:
    return {"name": pen.name, **pen.cfg.model_dump()}


def write_config(run_dir: Path, sae: SAE, penalties: list[Penalty], train_args: dict[str, Any],
                 run_config: Optional[dict]) -> None:
    """config.json: everything needed to rebuild and resume the run (`run_config` is the
    caller's whole RunConfig; `train` the resolved trainer arguments for this SAE)."""
    write_json_atomic(run_dir / rd.CONFIG_FILE, {
        "featsep_version": __version__,
        "run_config": run_config,
        "sae": sae.to_cfg_dict(),
        "penalties": [penalty_config(p) for p in penalties],
        "train": train_args,
    })


def trainer_config(sae: SAE, penalties: list[Penalty], train_args: dict[str, Any]) -> dict[str, Any]:
    """The "config" block of final_info.json, in the reference runs' key names."""
    cfg = sae.cfg
    out = {
        "trainer_class": "featsep.train",
        "dict_class": sae.architecture,
        "lr": train_args["lr"],
        "steps": train_args["steps"],
        "seed": train_args["seed"],
        "activation_dim": cfg.d_in,
        "dict_size": cfg.d_sae,
        "device": train_args["device"],
        "layer": rd.hook_layer(cfg),
        "lm_name": cfg.model_name,
        "submodule_name": cfg.hook_name,
        "wandb_name": train_args["name"],
        "warmup_steps": train_args["lr_warmup_steps"],
        "lr_decay_fraction": train_args["lr_decay_fraction"],
        "penalties": [penalty_config(p) for p in penalties],
    }
    if hasattr(cfg, "k"):
        out["k"] = cfg.k
    return out


def write_final(run_dir: Path, sae: SAE, penalties: list[Penalty], train_args: dict[str, Any],
                steps: int, tokens: int, last_row: dict[str, Any]) -> None:
    """Save the weights to sae/ and set the "training results for layer L" section."""
    from featsep.sae import save_sae

    save_sae(sae, run_dir / rd.SAE_DIR)
    coefficients = {k[len("coef/"):]: v for k, v in last_row.items() if k.startswith("coef/")}
    sparsity = next((coefficients[t] for t in _SPARSITY_TERMS if t in coefficients), None)
    layer = rd.hook_layer(sae.cfg)
    final_info = {
        "training_steps": steps,
        "final_loss": last_row.get("loss"),
        "layer": layer,
        "dict_size": sae.cfg.d_sae,
        "learning_rate": train_args["lr"],
        "sparsity_penalty": sparsity,
        "architecture": sae.architecture,
        "training_tokens": tokens,
        "l0": last_row.get("l0"),
        "fvu": last_row.get("fvu"),
        "dead_fraction": last_row.get("dead_fraction"),
        "final_loss_terms": {k[len("loss/"):]: v for k, v in last_row.items() if k.startswith("loss/")},
    }
    if penalties:  # what each penalty tracks at the end, histograms and top latents included
        # (names are distinct: the trainer refuses two penalties whose terms share a name; tensors
        # among the stats become lists when final_info.json is written)
        final_info["penalty_stats"] = {pen.name: pen.stats() for pen in penalties}
    rd.update_final_info(run_dir, rd.training_results_key(layer), {
        "config": trainer_config(sae, penalties, train_args),
        "final_info": final_info,
    })
