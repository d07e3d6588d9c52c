"""The `[train]` section: the training budget and the trainer's settings, defined once.

`featsep.train(...)` takes one (`config=`) or the same fields as keyword arguments; the
pipeline reads `tokens` and `batch_size` to size the activation stream."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator

from featsep.settings import Strict
from featsep.train.optim import optimizer_spec

DEFAULT_DECAY_FRACTION = 0.2  # of an optimizer that decays (adam)


class TrainConfig(Strict):
    tokens: int = Field(2_000_000, gt=0, description="activations to train on (pipeline)")
    batch_size: int = Field(4096, gt=0, description="activations per SAE step (pipeline)")
    optimizer: Optional[str] = Field(None, description="adam or signsgd_schedulefree (featsep.train.optim); "
                                     "None: each SAE's default_optimizer")
    lr: Optional[float] = Field(None, gt=0, description="None: the architecture's default rule for the optimizer")
    lr_warmup_steps: int = Field(0, ge=0)
    lr_decay_fraction: Optional[float] = Field(
        None, ge=0, le=1, description="final fraction of steps with linear decay to 0; None: the optimizer's "
        "default (adam 0.2; signsgd_schedulefree 0, its averaging replaces the decay)")
    adam_betas: tuple[float, float] = (0.9, 0.999)
    schedule_free_beta: float = Field(0.95, gt=0, le=1, description="signsgd_schedulefree: y = beta x + (1 - beta) z")
    checkpoint_every: int = Field(500, gt=0, description="steps between checkpoints")
    log_every: int = Field(10, gt=0, description="steps between metrics rows")
    seed: int = 42
    device: str = Field("auto", description="auto: where the SAEs are (the pipeline puts them on cuda if available)")
    autocast_bf16: bool = Field(True, description="bf16 autocast for the SAE on GPU (never on CPU)")
    compile: bool = Field(False, description="torch.compile each SAE's training forward (worth it on GPU "
                          "for long runs: the first steps pay the compilation)")
    wandb: bool = False
    tensorboard: bool = False
    parallel: Literal["data", "sae"] = Field(
        "data", description="torchrun jobs: data: every rank trains every SAE on its slice of each batch; "
        "sae: the SAEs are spread over sae_groups groups of ranks, data parallel inside each group")
    sae_groups: Optional[int] = Field(
        None, gt=0, description='parallel="sae": groups of ranks, dividing the world size (None: one per rank)')

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, value):
        if value is not None:
            optimizer_spec(value)  # one line listing the valid names
        return value

    def decay_fraction(self, optimizer: str) -> float:
        """lr_decay_fraction as it applies to an SAE trained with `optimizer`: None resolved by it."""
        if self.lr_decay_fraction is not None:
            return self.lr_decay_fraction
        return DEFAULT_DECAY_FRACTION if optimizer_spec(optimizer).decays else 0.0

    @field_validator("device", mode="before")
    @classmethod
    def _device_name(cls, value):
        """train(device=None) means "auto"; a torch.device is taken by its name."""
        return "auto" if value is None else str(value) if type(value).__name__ == "device" else value


class MemberTraining(Strict):
    """How one SAE of a run was trained, as resolved: what config.json's "train" block and
    final_info's "config" block record (the [train] settings plus what the run decided)."""

    name: str
    index: int
    names: list[str]
    optimizer: str
    lr: float
    steps: Optional[int] = Field(description="None: until the batches ended")
    device: str
    out_dir: Optional[str] = None
    lr_warmup_steps: int
    lr_decay_fraction: float
    adam_betas: tuple[float, float]
    schedule_free_beta: float
    checkpoint_every: int
    log_every: int
    seed: int
    autocast_bf16: bool
    compile: bool = False
    wandb: bool
    tensorboard: bool
    parallel: Literal["data", "sae"] = "data"
    sae_groups: Optional[int] = None
    world_size: int = Field(1, description="ranks of the torchrun job (1: one process)")
