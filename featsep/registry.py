"""Registries by name: SAE architectures, penalties, evals and datasets all use this one.

One implementation of "register by name, look up with one clear error, build from keyword
parameters, explain bad parameters in one line", so every registry answers the same way.
Class entries carry a pydantic `config_class`; other entries (an eval's spec, a dataset) are
added as objects with `add`.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import ValidationError

from featsep.settings import one_line

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, name_attribute: str = "name", noun: str | None = None):
        self.kind = kind  # e.g. "SAE architecture", used in messages
        self.noun = noun or kind  # e.g. "SAE" in "bad parameters for SAE 'topk'"
        self.name_attribute = name_attribute  # class attribute that receives the registered name
        self._classes: dict[str, type[T]] = {}

    def add(self, name: str, entry: Any) -> Any:
        """Register `entry` under `name` (the same entry again is a no-op: modules may reload)."""
        if name in self._classes and self._classes[name] is not entry:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._classes[name] = entry
        return entry

    def register(self, name: str):
        """Class decorator: make `cls` buildable as `name`."""

        def deco(cls: type[T]) -> type[T]:
            setattr(cls, self.name_attribute, name)
            return self.add(name, cls)

        return deco

    def entries(self) -> list[Any]:
        """The registered entries, in registration order."""
        return list(self._classes.values())

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def names(self) -> list[str]:
        return sorted(self._classes)

    def get(self, name: str) -> type[T]:
        if name not in self._classes:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")
        return self._classes[name]

    def build(self, name: str, **params: Any) -> T:
        """Validate `params` with the class's config_class and construct it."""
        cls = self.get(name)
        config_class = cls.config_class  # type: ignore[attr-defined]
        try:
            cfg = config_class(**params)
        except ValidationError as e:
            bad = one_line(e)
            allowed = ", ".join(sorted(config_class.model_fields))
            raise ValueError(f"bad parameters for {self.noun} {name!r}: {bad} (accepted: {allowed})") from None
        return cls(cfg)
