"""The whole run as one typed configuration: a TOML file maps onto `RunConfig` (or
`SweepConfig`) and every stage receives its own section object.

Sections are defined by the stage that reads them (lm.config.ModelConfig,
data.config.DataConfig, train.config.TrainConfig, evals.settings.EvalConfig); the `[sae]` and
`[[penalties]]` tables are tagged unions built from the SAE and penalty registries, so each
architecture's and penalty's own parameters are checked by name and type when the file is read
(`betaa = 0.9` is an error naming the valid fields), and so are the eval settings: the whole
run is validated before any model loads. `--set a.b=c` overrides any field (values parse as
TOML). Orchestration layer: nothing below imports this module.
"""

from __future__ import annotations

import copy
import itertools
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, Discriminator, Field, Tag, ValidationError, create_model, model_validator

from featsep.data.config import DataConfig
from featsep.evals.settings import EvalConfig
from featsep.lm.config import ModelConfig
from featsep.settings import (  # noqa: F401  (re-exported: the config API in one import)
    ConfigError,
    Strict,
    apply_overrides,
    format_errors,
    one_line,
    read_toml,
    set_dotted,
    validate,
)
from featsep.train.config import TrainConfig

# SAE config fields the pipeline fills from the [model] and [data] sections (or the trainer's
# device); a run config that sets them under [sae] is refused by the section model.
SAE_FIELDS_FROM_RUN = (
    "d_in", "device", "hook_name", "model_name", "hook_layer", "context_size", "prepend_bos",
    "normalize_activations", "normalization_factor", "dataset_path", "seed",
)
DEFAULT_ARCHITECTURE = "topk"
DEFAULT_D_SAE = 4096


def _member(kind: str, tag_field: str, name: str, config_class: type[BaseModel], exclude: tuple[str, ...],
            defaults: dict[str, Any], filled: dict[str, Any]) -> type[BaseModel]:
    """One registry entry's section: its config's fields minus those the run fills in, tagged
    with its name. Cross-field checks (e.g. k <= d_sae) run through the entry's own class."""
    fields: dict[str, Any] = {tag_field: (Literal[name], name)}
    for field, info in config_class.model_fields.items():
        if field in exclude:
            continue
        info = copy.copy(info)
        if field in defaults:
            info.default = defaults[field]
        fields[field] = (info.annotation, info)

    def _entry_checks(self):
        params = self.params()
        try:
            config_class(**{**filled, **params})
        except ValidationError as e:
            raise ValueError(one_line(e).replace("(top level): ", "")) from None
        return self

    base = type(f"_{kind}Section", (Strict,), {
        "params": lambda self: self.model_dump(exclude={tag_field}),
        "__doc__": f"The {kind} section of a run config for {name!r}.",
    })
    return create_model(
        f"{name.title().replace('_', '')}{kind}Section", __base__=base,
        __validators__={"_entry_checks": model_validator(mode="after")(_entry_checks)}, **fields,
    )


def _tagged_union(kind: str, tag_field: str, registry_names, config_of, exclude, defaults, filled, default_tag=None):
    """filled: stand-ins for the fields the run fills in, so the entry's own checks can run."""
    members = [Annotated[_member(kind, tag_field, n, config_of(n), exclude, defaults, filled), Tag(n)]
               for n in registry_names()]

    def tag(value: Any):
        if isinstance(value, dict):
            found = value.get(tag_field, default_tag)
        else:
            found = getattr(value, tag_field, None)
        return found if found in registry_names() else None

    return Annotated[Union[tuple(members)], Discriminator(
        tag, custom_error_type="unknown_entry",
        custom_error_message=f"unknown {kind} {tag_field}; choose one of: {', '.join(registry_names())}",
    )]


@lru_cache(maxsize=None)
def sae_section_type():
    """`[sae]`: architecture = NAME, d_sae and the architecture's own parameters."""
    from featsep.sae import architectures, get_architecture

    return _tagged_union("SAE", "architecture", architectures, lambda n: get_architecture(n).config_class,
                         SAE_FIELDS_FROM_RUN, {"d_sae": DEFAULT_D_SAE}, {"d_in": 1}, default_tag=DEFAULT_ARCHITECTURE)


@lru_cache(maxsize=None)
def penalty_section_type():
    """`[[penalties]]`: name = NAME and the penalty's own parameters (d_sae comes from [sae])."""
    from featsep.penalties import get_penalty, penalties

    return _tagged_union("Penalty", "name", penalties, lambda n: get_penalty(n).config_class, ("d_sae",), {},
                         {"d_sae": 2})


SAESection = sae_section_type()
PenaltySection = penalty_section_type()


class RunConfig(Strict):
    """A whole training run: model + data -> one SAE (with its penalties) in out_dir."""

    out_dir: str = "runs/default"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    sae: SAESection = Field(default_factory=lambda: _default_sae())  # type: ignore[valid-type]
    penalties: list[PenaltySection] = Field(default_factory=list)  # type: ignore[valid-type]
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()


def _default_sae():
    from pydantic import TypeAdapter

    return TypeAdapter(SAESection).validate_python({})


class MethodPoint(Strict):
    """One run of a sweep method: its SAE and penalties, typed."""

    sae: SAESection  # type: ignore[valid-type]
    penalties: list[PenaltySection] = Field(default_factory=list)  # type: ignore[valid-type]
    lr: Optional[float] = Field(None, gt=0, description="this method's learning rate (None: [train] lr, "
                                "else the SAE's rule for the optimizer)")


class MethodConfig(Strict):
    """One method of a sweep: an SAE (+ penalties) and a grid over its parameters.

    grid keys are dotted paths into this method, e.g. "sae.k", "penalties.0.weight" or "lr";
    every combination of their values becomes one run. The method's own sae/penalties tables
    need only be valid once a grid point is applied (d_sae 8 with k = [1, 2] in the grid is
    fine), and every point is checked when the file is read.
    """

    name: str
    sae: dict[str, Any]
    penalties: list[dict[str, Any]] = Field(default_factory=list)
    # methods trained together may need different rates (e.g. a recipe's TopK and ReLU runs)
    lr: Optional[float] = Field(None, gt=0, description="None: [train] lr, else each SAE's rule")
    grid: dict[str, list[Any]] = Field(default_factory=dict)

    def combinations(self) -> list[tuple[dict[str, Any], MethodPoint]]:
        """(grid values, the typed run) for every grid point, row-major."""
        keys = list(self.grid)
        for key in keys:
            if not self.grid[key]:
                raise ValueError(f"grid[{key!r}] must be a non-empty list")
            if key != "lr" and key.split(".")[0] not in ("sae", "penalties"):
                raise ValueError(f"grid key {key!r} must be 'lr' or start with 'sae.' or 'penalties.'")
        out = []
        for combo in itertools.product(*(self.grid[k] for k in keys)):
            tree = copy.deepcopy({"sae": self.sae, "penalties": self.penalties, "lr": self.lr})
            for key, value in zip(keys, combo):
                set_dotted(tree, key, copy.deepcopy(value), f"grid key {key!r}")
            try:
                point = MethodPoint.model_validate(tree)
            except ValidationError as e:
                where = f"grid point {dict(zip(keys, combo))}: " if keys else ""
                raise ValueError(where + one_line(e, MethodPoint)) from None
            out.append((dict(zip(keys, combo)), point))
        return out

    @model_validator(mode="after")
    def _grid_points_are_valid(self) -> "MethodConfig":
        self.combinations()
        return self


class BaselineConfig(Strict):
    """A released SAE (or several, one frontier) evaluated beside a sweep's methods with the same
    evals on the same data, and reported as a baseline: `sae` (or `saes`) a local path (SAELens,
    Gemma Scope, sparsify, dictionary_learning or featsep layout) or a hub reference
    (hf://ORG/REPO/PATH, saelens:RELEASE/SAE_ID), fetched when the sweep runs, never when the
    config is read (an existing local path is checked then; a missing one when the sweep starts)."""

    name: str = Field(min_length=1, description="the baseline's name in the report (its frontier line)")
    sae: str | None = Field(None, description="one SAE: a path or hub reference")
    saes: list[str] = Field(default_factory=list, description="several SAEs of one family (e.g. L0s), one frontier")

    @property
    def refs(self) -> list[str]:
        return [self.sae] if self.sae is not None else list(self.saes)

    @model_validator(mode="after")
    def _one_source(self) -> "BaselineConfig":
        from featsep.evals.baselines import sae_format
        from featsep.sae.foreign import is_sae_ref

        if (self.sae is None) == (not self.saes):
            raise ValueError(f"baseline {self.name!r}: give sae = \"PATH_OR_REF\" or saes = [...], exactly one")
        if len(set(self.refs)) != len(self.refs):
            raise ValueError(f"baseline {self.name!r} lists an SAE twice")
        for ref in self.refs:  # a path not there yet (written by an earlier step) is refused when the sweep starts
            if not is_sae_ref(ref) and Path(ref).expanduser().exists():
                sae_format(Path(ref).expanduser())
        return self


def baseline_hook_mismatch(ref: str, hook: str) -> str | None:
    """Why `ref` cannot serve `hook`, when its path alone tells (Gemma Scope's layer_L folders),
    without fetching anything; None when it fits or only loading tells."""
    from featsep.sae.foreign import gemma_scope_metadata

    found = gemma_scope_metadata(Path(ref.split(":", 1)[-1])).get("hook_name")
    if found is not None and found != hook:
        return f"{ref} reads {found} (its layer folder says so) but the sweep's model.hook is {hook}"
    return None


class SweepConfig(Strict):
    """Many runs that share the model, data and training budget (one LM pass for all)."""

    name: str = "sweep"
    out_dir: str = "runs/sweep"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    methods: list[MethodConfig]
    baselines: list[BaselineConfig] = Field(
        default_factory=list, description="released SAEs evaluated and reported beside the methods"
    )
    max_saes_per_pass: int = Field(
        0, ge=0, description="train at most this many SAEs on one activation pass (0: all at once)"
    )
    seeds: list[int] | None = Field(
        None, min_length=1,
        description="train every grid point once per seed (SAE init and resampling seed); None: once, as before",
    )

    @model_validator(mode="after")
    def _seeds_are_distinct(self) -> "SweepConfig":
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds {self.seeds} repeat a seed; each seed must appear once")
        return self

    @model_validator(mode="after")
    def _baselines_fit(self) -> "SweepConfig":
        names = [m.name for m in self.methods]
        for baseline in self.baselines:
            if baseline.name in names:
                raise ValueError(f"baseline name {baseline.name!r} is already a method's or another baseline's; "
                                 "names must be unique")
            names.append(baseline.name)
            for ref in baseline.refs:
                if (why := baseline_hook_mismatch(ref, self.model.hook)) is not None:
                    raise ValueError(f"baseline {baseline.name!r}: {why}; drop it or pick the SAE of that layer")
        return self


def load_config(path: str | Path | None, overrides: list[str] | None = None, model=RunConfig):
    """Read a TOML file (or defaults when path is None), apply overrides, validate."""
    data = read_toml(path) if path is not None else {}
    apply_overrides(data, overrides or [])
    return validate(model, data, source=str(path) if path else "config")
