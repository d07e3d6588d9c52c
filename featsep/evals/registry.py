"""Evals by name: each eval module registers one `EvalSpec` with `@register_eval`.

An eval is a function `run(saes, ctx, settings) -> list[EvalResult]` (one result per SAE, in
order) plus a pydantic settings class. The runner (featsep.evals.runner) does everything else:
loading, validation, caching context, SAEBench JSON, final_info.json.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from pydantic import BaseModel, ConfigDict

from featsep.registry import Registry
from featsep.rundir import eval_section

# Modules that register the built-in evals when imported.
BUILTIN_EVAL_MODULES = (
    "featsep.evals.core",
    "featsep.evals.sparse_probing",
    "featsep.evals.absorption",
    "featsep.evals.scr_tpp",
    "featsep.evals.unlearning",
    "featsep.evals.autointerp",
    "featsep.evals.competition",
)


class EvalSettings(BaseModel):
    """Base of every eval's settings: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass
class EvalResult:
    """One SAE's result, before it is wrapped in SAEBench's schema."""

    metrics: dict[str, dict[str, Any]]
    details: list[dict[str, Any]] = field(default_factory=list)
    unstructured: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] | None = None  # the settings as resolved (e.g. auto budgets); None: as given


@dataclass(frozen=True)
class EvalSpec:
    name: str
    eval_type_id: str  # SAEBench's id, e.g. "absorption_first_letter"
    final_info_key: str  # the reference runs' section, e.g. "core evaluation results"
    settings_class: type[EvalSettings]
    run: Callable[..., list[EvalResult]]
    # combines this eval's final_info section with one already there (evals sharing a key)
    merge_section: Optional[Callable[[Optional[dict], dict], dict]] = None
    # (SAEBench result, path of its file) -> the final_info section, in the reference runs'
    # layout for the evals they wrote (one converter per eval, in the eval's module)
    final_info_section: Callable[[dict, Optional[Path]], dict] = eval_section


_EVALS: Registry[EvalSpec] = Registry("eval")


def register_eval(
    name: str,
    *,
    eval_type_id: str,
    final_info_key: str,
    settings: type[EvalSettings],
    merge_section: Optional[Callable[[Optional[dict], dict], dict]] = None,
    final_info_section: Callable[[dict, Optional[Path]], dict] = eval_section,
):
    """Decorator for an eval's run function."""

    def deco(run: Callable[..., list[EvalResult]]):
        if name in _EVALS and _EVALS.get(name).run is run:
            return run  # the module was imported again
        _EVALS.add(name, EvalSpec(name, eval_type_id, final_info_key, settings, run, merge_section,
                                  final_info_section))
        return run

    return deco


def _load_builtins() -> None:
    for module in BUILTIN_EVAL_MODULES:
        importlib.import_module(module)


def available_evals() -> list[str]:
    _load_builtins()
    return _EVALS.names()


def get_eval(name: str) -> EvalSpec:
    _load_builtins()
    return _EVALS.get(name)
