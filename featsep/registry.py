"""A name -> class registry whose classes carry a pydantic config (SAE architectures, penalties).

One implementation of "register by name, build from keyword parameters, explain bad
parameters in one line", shared so every registry answers errors the same way.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import ValidationError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, name_attribute: str, noun: str | None = None):
        self.kind = kind  # e.g. "SAE architecture", used in messages
        self.noun = noun or kind  # e.g. "SAE" in "bad parameters for SAE 'topk'"
        self.name_attribute = name_attribute  # class attribute that receives the registered name
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str):
        """Class decorator: make `cls` buildable as `name`."""

        def deco(cls: type[T]) -> type[T]:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            setattr(cls, self.name_attribute, name)
            self._classes[name] = cls
            return cls

        return deco

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
            bad = "; ".join(f"{'.'.join(map(str, er['loc']))}: {er['msg']}" for er in e.errors())
            allowed = ", ".join(sorted(config_class.model_fields))
            raise ValueError(f"bad parameters for {self.noun} {name!r}: {bad} (accepted: {allowed})") from None
        return cls(cfg)
