"""Configuration for every stage, as pydantic models loaded from TOML.

One place for every knob: a run's TOML file maps onto `RunConfig`; the CLI's
`--set a.b=c` overrides any field with a value parsed as TOML (so `--set
train.lr=3e-4` is a float and `--set sae.k=[32,64]` a list).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A config a user wrote is wrong; the message names the field and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    """The language model and where to read activations from it."""

    name: str = "gemma-3-270m"
    hook: str = "blocks.8.hook_resid_post"
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(8, gt=0, description="contexts per language-model forward")


class DataConfig(_Strict):
    """Text (or a cache of activations) and how it becomes a stream of activation batches."""

    dataset: str = "bbc-news"
    text_column: str = "text"
    split: str = "train"
    context_length: int = Field(128, gt=1)
    cache: Optional[str] = Field(None, description="activation cache dir; when set, train reads it")
    shuffle_buffer: int = Field(
        256, ge=0, description="contexts mixed by the shuffling buffer (0: keep sequences in order)"
    )
    sequence_mode: bool = Field(
        False, description="keep whole contexts in order (temporal penalties need this)"
    )
    normalize: bool = Field(True, description="scale activations so that mean ||x||^2 = d")
    norm_estimate_batches: int = Field(8, gt=0)
    exclude_special_tokens: bool = True
    seed: int = 42


class SAEConfig(_Strict):
    """One SAE architecture; extra fields go to the architecture's own config."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    architecture: str = "topk"
    d_sae: int = Field(4096, gt=0)


class PenaltyConfig(_Strict):
    """A feature-separation penalty; extra fields go to the penalty's own parameters."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    name: str


class TrainConfig(_Strict):
    tokens: int = Field(2_000_000, gt=0)
    batch_size: int = Field(4096, gt=0, description="activations per SAE step")
    lr: Optional[float] = Field(None, description="None: the architecture's default rule")
    lr_warmup_steps: int = 0
    lr_decay_fraction: float = Field(0.2, ge=0, le=1, description="final fraction of steps with linear decay to 0")
    adam_betas: tuple[float, float] = (0.9, 0.999)
    checkpoint_every: int = Field(500, gt=0, description="steps between checkpoints")
    log_every: int = Field(10, gt=0)
    seed: int = 42
    device: str = "auto"
    autocast_bf16: bool = Field(True, description="bf16 autocast for the SAE on GPU (never on CPU)")
    wandb: bool = False
    tensorboard: bool = False


class EvalConfig(_Strict):
    """Evaluations run after training (names from `featsep.evals`), with per-eval settings."""

    evals: list[str] = Field(default_factory=list)
    settings: dict[str, Any] = Field(
        default_factory=dict, description="per-eval settings, e.g. [eval.settings.core] seed = 1"
    )


class RunConfig(_Strict):
    """A whole training run: model + data -> one SAE (with its penalties) in out_dir."""

    out_dir: str = "runs/default"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    sae: SAEConfig = SAEConfig()
    penalties: list[PenaltyConfig] = Field(default_factory=list)
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()


class MethodConfig(_Strict):
    """One method of a sweep: an SAE (+ penalties) and a grid over its parameters.

    grid keys are dotted paths into this method, e.g. "sae.k" or "penalties.0.weight";
    every combination of their values becomes one run.
    """

    name: str
    sae: SAEConfig
    penalties: list[PenaltyConfig] = Field(default_factory=list)
    grid: dict[str, list[Any]] = Field(default_factory=dict)


class SweepConfig(_Strict):
    """Many runs that share the model, data and training budget (one LM pass for all)."""

    name: str = "sweep"
    out_dir: str = "runs/sweep"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    methods: list[MethodConfig]
    max_saes_per_pass: int = Field(
        0, ge=0, description="train at most this many SAEs on one activation pass (0: all at once)"
    )


def _parse_value(raw: str) -> Any:
    """Parse an override value as TOML; fall back to a plain string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def set_dotted(tree: Any, dotted: str, value: Any, where: str) -> None:
    """Set `a.b.c` in nested dicts, creating missing sections; a number after a list (of tables)
    picks one entry: `penalties.0.mode`. `where` opens the error ("override 'x=1'")."""
    parts = [p for p in dotted.split(".") if p]
    if not parts:
        raise ConfigError(f"{where} has an empty key")
    node: Any = tree
    for depth, part in enumerate(parts):
        path = ".".join(parts[:depth])
        if isinstance(node, list):
            if not node:
                raise ConfigError(f"{where}: {path!r} is an empty list; add an entry to index")
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{where}: {path!r} is a list of {len(node)} entries; pick one by its index "
                                  f"0..{len(node) - 1} (e.g. {path}.0.name=...)")
            key: Any = int(part)
        elif isinstance(node, dict):
            key = part
        else:
            raise ConfigError(f"{where}: {path!r} is a value, not a section")
        if depth == len(parts) - 1:
            node[key] = value
        else:
            if isinstance(node, dict):
                node.setdefault(key, {})
            node = node[key]


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=c` overrides (see set_dotted) to a nested dict (returns the same dict)."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value (e.g. train.lr=3e-4)")
        key, raw = item.split("=", 1)
        set_dotted(data, key.strip(), _parse_value(raw.strip()), f"override {item!r}")
    return data


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass a TOML file (see examples/)")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from None


def validate(model: type[BaseModel], data: dict, source: str = "config"):
    """Validate `data` as `model`, turning pydantic's report into one readable ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown field (check the spelling; examples/ shows every section)"
            lines.append(f"  {loc}: {msg}")
        raise ConfigError(f"invalid {source}:\n" + "\n".join(lines)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None, model=RunConfig):
    """Read a TOML file (or defaults when path is None), apply overrides, validate."""
    data = read_toml(path) if path is not None else {}
    apply_overrides(data, overrides or [])
    return validate(model, data, source=str(path) if path else "config")
