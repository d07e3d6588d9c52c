"""The `[eval]` section and the rules that turn user settings into each eval's typed settings.

Validated when the run config is read, so a misspelt eval setting fails before any model
loads or any SAE trains, not after training."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from pydantic import Field, ValidationError, model_validator

from featsep.evals.registry import EvalSettings, available_evals, get_eval
from featsep.settings import Strict, one_line

# Settings keys that configure the runner rather than one eval (usable in `--set`).
RUNNER_KEYS = ("hook", "cache_dir", "device", "dtype")


def split_settings(evals: Sequence[str], settings: Optional[dict]) -> tuple[dict[str, dict], dict[str, Any]]:
    """Per-eval settings and runner settings from {"core": {...}, "seed": 1, "hook": ...}.

    A key that is not an eval name applies to every selected eval that has such a setting.
    Sections for known evals that are not selected are returned too (to be checked)."""
    per_eval: dict[str, dict] = {name: {} for name in evals}
    runner: dict[str, Any] = {}
    known = set(available_evals())
    for key, value in (settings or {}).items():
        if key in RUNNER_KEYS:
            runner[key] = value
        elif key in known:
            if not isinstance(value, dict):
                raise ValueError(f"settings[{key!r}] must be a dict of that eval's settings, got {value!r}")
            # a section for an eval not selected now is kept (and still checked): a config can
            # carry settings for evals it runs another time, or already ran
            per_eval.setdefault(key, {}).update(value)
        else:
            takers = [n for n in evals if key in get_eval(n).settings_class.model_fields]
            if not takers:
                raise ValueError(
                    f"unknown setting {key!r}: no selected eval ({', '.join(evals)}) has it; prefix it with the "
                    f"eval name (e.g. core.{key}=...) or see the settings classes in featsep.evals"
                )
            for n in takers:
                per_eval[n].setdefault(key, value)
    return per_eval, runner


def build_settings(name: str, values: dict) -> EvalSettings:
    """One eval's typed settings; a bad or misspelt key names the field and the valid ones."""
    spec = get_eval(name)
    try:
        return spec.settings_class(**values)
    except ValidationError as e:
        raise ValueError(f"bad settings for eval {spec.name!r}: "
                         f"{one_line(e, spec.settings_class, prefix=spec.name + '.')}") from None


def resolve_settings(evals: Sequence[str], settings: Optional[dict]) -> tuple[dict[str, EvalSettings], dict[str, Any]]:
    """Every selected eval's typed settings, and the runner's keys."""
    for name in evals:
        get_eval(name)  # an unknown eval name fails here, listing the known ones
    per_eval, runner = split_settings(evals, settings)
    built = {name: build_settings(name, values) for name, values in per_eval.items()}
    return {name: built[name] for name in evals}, runner


class EvalConfig(Strict):
    """Evaluations run after training (names from `featsep.evals`), with per-eval settings."""

    evals: list[str] = Field(default_factory=list)
    settings: dict[str, Any] = Field(
        default_factory=dict, description="per-eval settings, e.g. [eval.settings.core] seed = 1"
    )

    @model_validator(mode="after")
    def _settings_fit_the_evals(self) -> "EvalConfig":
        resolve_settings(self.evals, self.settings)
        return self
