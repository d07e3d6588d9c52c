"""Where training metrics go: metrics.jsonl (always, with a run dir), a progress bar, and
wandb / TensorBoard when asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from tqdm.auto import tqdm

from featsep.rundir import RunDir


def scalar_stats(prefix: str, stats: dict[str, Any]) -> dict[str, float]:
    """The scalar entries of a penalty's stats() (histograms and lists stay out of the log)."""
    out = {}
    for key, value in stats.items():
        if hasattr(value, "numel"):
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, (bool, int, float)):
            out[f"{prefix}/{key}"] = float(value)
    return out


class ExternalLoggers:
    """wandb (one run, keys prefixed by SAE name) and TensorBoard (one writer per run dir).

    Both are optional packages: asking for one that is not installed fails before training.
    """

    def __init__(self, wandb: bool, tensorboard: bool, names: list[str], run_dirs: list[Optional[Path]],
                 run_config: Optional[dict] = None, resume: bool = False):
        self.names = names
        self.wandb_run = None
        self.writers: dict[str, Any] = {}
        if wandb:
            try:
                import wandb as wandb_lib
            except ImportError:
                raise RuntimeError("wandb logging was asked for but wandb is not installed; "
                                   "`pip install wandb` or turn wandb off (train.wandb=false)") from None
            self.wandb_run = wandb_lib.init(project="featsep", config=run_config or {}, resume="allow" if resume else None)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise RuntimeError("TensorBoard logging was asked for but tensorboard is not installed; "
                                   "`pip install tensorboard` or turn it off (train.tensorboard=false)") from None
            if all(d is None for d in run_dirs):
                raise ValueError("TensorBoard logging writes into the run directory; pass out_dir=...")
            # a None dir: another rank of a torchrun job writes that run dir
            self.writers = {name: SummaryWriter(log_dir=str(RunDir(d).tensorboard_dir))
                            for name, d in zip(names, run_dirs) if d is not None}

    def log(self, name: str, row: dict[str, Any]) -> None:
        step = int(row["step"])
        numbers = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        if self.wandb_run is not None:
            self.wandb_run.log({f"{name}/{k}": v for k, v in numbers.items()}, step=step)
        if name in self.writers:
            for key, value in numbers.items():
                self.writers[name].add_scalar(key, value, step)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


class MetricsSink:
    """Fan a logged row out to metrics.jsonl, the external loggers and the progress bar."""

    def __init__(self, names: list[str], run_dirs: list[Optional[Path]], external: ExternalLoggers,
                 total_steps: Optional[int], start_step: int, progress: bool):
        self.names = names
        self.run_dirs = run_dirs
        self.external = external
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not progress, unit="step",
                        desc="train", dynamic_ncols=True)

    def log(self, index: int, row: dict[str, Any]) -> None:
        if self.run_dirs[index] is not None:
            RunDir(self.run_dirs[index]).append_metrics(row)
        self.external.log(self.names[index], row)
        if index == 0:  # the bar shows the first SAE; metrics.jsonl has them all
            self.bar.set_postfix(
                loss=f"{row['loss']:.4g}",
                L0=f"{row.get('l0', float('nan')):.1f}",
                FVU=f"{row.get('fvu', float('nan')):.3f}",
                dead=f"{100 * row.get('dead_fraction', float('nan')):.1f}%",
                tok_s=f"{row.get('tokens_per_s', 0):.3g}",
                refresh=False,
            )

    def advance(self) -> None:
        self.bar.update(1)

    def write(self, line: str) -> None:
        if not self.bar.disable:
            self.bar.write(line)

    def close(self) -> None:
        self.bar.close()
        self.external.close()
