"""What every configuration section shares: strict pydantic models, TOML reading, `--set`
overrides and one readable error for a bad value.

Foundation layer: each stage defines its own section (lm.config.ModelConfig,
data.config.DataConfig, train.config.TrainConfig, evals.settings.EvalConfig) on `Strict`, and
featsep.config composes them into the whole run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Tag, ValidationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A config a user wrote is wrong; the message names the field and the fix."""


class Strict(BaseModel):
    """A config section: unknown keys are an error, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def parse_value(raw: str) -> Any:
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
        set_dotted(data, key.strip(), parse_value(raw.strip()), f"override {item!r}")
    return data


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass a TOML file (see examples/)")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from None


def _walk(model: type[BaseModel], loc: tuple) -> tuple[list[str], list[str]]:
    """The user's path to `loc` (union tags such as "topk" dropped: the file never says them)
    and the field names valid where it points, for "unknown field" errors."""
    node: Any = model
    shown: list[str] = []
    for part in loc[:-1]:
        if isinstance(part, int):  # a list index
            shown.append(str(part))
            continue
        if isinstance(node, dict):  # a tagged union: this part names the member
            node = node.get(part)
            continue
        shown.append(str(part))
        fields = getattr(node, "model_fields", {})
        node = _section_of(fields[part].annotation) if part in fields else None
    if loc and not (isinstance(node, dict) and loc[-1] in node):  # a member's own check ends at its tag
        shown.append(str(loc[-1]))
    allowed = sorted(getattr(node, "model_fields", {})) if node is not None and not isinstance(node, dict) else []
    return shown, allowed


def _section_of(annotation: Any):
    """The model inside an annotation (Optional, list, Annotated), or {tag: model} for a
    tagged union; None for plain values."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _section_of(args[0])
    tagged = {}
    for arg in args:
        if get_origin(arg) is Annotated:
            tags = [m.tag for m in get_args(arg)[1:] if isinstance(m, Tag)]
            if tags:
                tagged[tags[0]] = get_args(arg)[0]
    if tagged:
        return tagged
    for arg in args:
        found = _section_of(arg)
        if found is not None:
            return found
    return None


def format_errors(e: ValidationError, model: type[BaseModel] | None = None) -> list[str]:
    """pydantic's report as `  loc: message` lines; unknown keys list the valid ones."""
    lines = []
    for err in e.errors():
        loc = tuple(err["loc"])
        shown, allowed = _walk(model, loc) if model is not None else ([str(x) for x in loc], [])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling" + (f"; valid here: {', '.join(allowed)})" if allowed else ")")
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        lines.append(f"  {'.'.join(shown) or '(top level)'}: {msg}")
    return lines


def one_line(e: ValidationError, model: type[BaseModel] | None = None, prefix: str = "") -> str:
    """format_errors joined into one line (`prefix` before each location, e.g. "core.")."""
    return "; ".join(prefix + line.strip() for line in format_errors(e, model))


def validate(model: type[BaseModel], data: dict, source: str = "config"):
    """Validate `data` as `model`, turning pydantic's report into one readable ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"invalid {source}:\n" + "\n".join(format_errors(e, model))) from None
