"""The `[eval]` section and the rules that turn user settings into each eval's typed settings.

Validated when the run config is read, so a misspelt eval setting fails before any model
loads or any SAE trains, not after training."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional, Sequence

from pydantic import Field, ValidationError, model_validator

from featsep.evals.registry import EvalSettings, available_evals, get_eval
from featsep.lm.loading import OFFLINE_DEFAULT, OFFLINE_MODELS
from featsep.settings import Strict, one_line

# Settings keys that configure the runner rather than one eval (usable in `--set`).
RUNNER_KEYS = ("hook", "cache_dir", "device", "dtype")

# SAEBench's datasets, the defaults of every dataset field a user leaves unset when the model
# comes from the hub: a GPU user evaluating gemma-2-2b must get SAEBench's numbers, not the
# offline sets' (which stay the defaults of the settings classes, for the offline models).
SAEBENCH_SCR_TPP_DATASETS = ["LabHC/bias_in_bios_class_set1", "canrager/amazon_reviews_mcauley_1and5"]
SAEBENCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "core": {"dataset": "Skylion007/openwebtext"},
    "sparse_probing": {"datasets": [  # = sparse_probing.SAEBENCH_DATASETS (no eval module imported here)
        "LabHC/bias_in_bios_class_set1", "LabHC/bias_in_bios_class_set2", "LabHC/bias_in_bios_class_set3",
        "canrager/amazon_reviews_mcauley_1and5", "canrager/amazon_reviews_mcauley_1and5_sentiment",
        "codeparrot/github-code", "fancyzhx/ag_news", "Helsinki-NLP/europarl",
    ]},
    "scr": {"datasets": SAEBENCH_SCR_TPP_DATASETS},
    "tpp": {"datasets": SAEBENCH_SCR_TPP_DATASETS},
    # WMDP's bio forget corpus is gated: SAEBench's is a local file the user names
    # (unlearning.forget_corpus); SAEBench runs this eval on gemma-2-2b-it (--model).
    "unlearning": {"forget_questions": ["wmdp-bio"],  # retain: unlearning.settings.SAEBENCH_RETAIN_SUBJECTS
                   "retain_questions": ["high_school_us_history", "college_computer_science", "high_school_geography",
                                        "human_aging"],
                   "retain_corpus": "wikitext"},
}


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


def _sae_model_name(item) -> str:
    """The model_name an SAE (object, SAE dir, run dir or sweep dir) records; "" if none."""
    from featsep.rundir import RunDir
    from featsep.sae.io import CFG_FILENAME

    if hasattr(item, "cfg"):
        return item.cfg.model_name or ""
    path = Path(item).expanduser()
    from featsep.sae import load_sae
    from featsep.sae.foreign import foreign_format

    if foreign_format(path) is not None:  # each format keeps the model name its own way: the loader knows
        return load_sae(path).cfg.model_name or ""
    candidates = [path / CFG_FILENAME, RunDir(path).sae_dir / CFG_FILENAME]
    if path.is_dir():
        candidates += sorted(RunDir(p).sae_dir / CFG_FILENAME for p in path.iterdir())
    for cfg in candidates:
        if cfg.is_file():
            return json.loads(cfg.read_text()).get("model_name") or ""
    return ""


def is_hub_model(model, sae_or_path=None) -> bool:
    """Whether the evals run on a hub model: an owner/name id that is neither a built-in offline
    model nor a local path (an in-memory test model named "tiny-llama" is not one). model as
    `evaluate` takes it: a LanguageModel, a name, or None (the SAE's model_name)."""
    name = getattr(model, "name", model)
    if name is None and sae_or_path is not None:
        items = sae_or_path if isinstance(sae_or_path, (list, tuple)) else [sae_or_path]
        name = _sae_model_name(items[0]) if items else ""
    name = str(name or OFFLINE_DEFAULT)
    return "/" in name and name not in OFFLINE_MODELS and not Path(name).expanduser().exists()


def resolve_settings(evals: Sequence[str], settings: Optional[dict], model=None,
                     sae_or_path=None) -> tuple[dict[str, EvalSettings], dict[str, Any]]:
    """Every selected eval's typed settings, and the runner's keys. model / sae_or_path as
    `evaluate` takes them: on a hub model, dataset fields the user left unset take SAEBench's
    values (SAEBENCH_DEFAULTS); with neither (a config being read), the classes' defaults."""
    for name in evals:
        get_eval(name)  # an unknown eval name fails here, listing the known ones
    per_eval, runner = split_settings(evals, settings)
    if (model is not None or sae_or_path is not None) and is_hub_model(model, sae_or_path):
        for name, values in per_eval.items():
            for key, value in SAEBENCH_DEFAULTS.get(name, {}).items():
                values.setdefault(key, copy.deepcopy(value))
    built = {name: build_settings(name, values) for name, values in per_eval.items()}
    return {name: built[name] for name in evals}, runner


class EvalConfig(Strict):
    """Evaluations run after training (names from `featsep.evals`), with per-eval settings."""

    evals: list[str] = Field(default_factory=list)
    settings: dict[str, Any] = Field(
        default_factory=dict, description="per-eval settings, e.g. [eval.settings.core] seed = 1"
    )
    models: dict[str, str] = Field(
        default_factory=dict,
        description="an eval run on another model than the run's, e.g. [eval.models] unlearning = "
        '"google/gemma-2-2b-it" (SAEBench runs unlearning on the instruct model)',
    )

    @model_validator(mode="after")
    def _settings_fit_the_evals(self) -> "EvalConfig":
        resolve_settings(self.evals, self.settings)
        known = set(available_evals())
        for name in self.models:
            if name not in known:
                raise ValueError(f"eval.models names {name!r}, which is not an eval; choose from: {', '.join(sorted(known))}")
        return self

    def by_model(self, evals: Sequence[str], default: str) -> dict[str, list[str]]:
        """`evals` grouped by the model each runs on (the run's, unless eval.models names another)."""
        groups: dict[str, list[str]] = {}
        for name in evals:
            groups.setdefault(self.models.get(name, default), []).append(name)
        return groups
