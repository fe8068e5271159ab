"""Frozen-dataclass configs with JSON round trips and a version field."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError
from .io._atomic import atomic_write_text

__all__ = ["JsonConfig"]

T = TypeVar("T", bound="JsonConfig")


def _to_native(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_native(v) for v in value]
    if dataclasses.is_dataclass(value):
        return {f.name: _to_native(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


class JsonConfig:
    """Mixin for ``@dataclass(frozen=True)`` configs whose fields are JSON-native.

    Tuples are written as lists and read back as tuples; nested configs are written as
    objects and read back through their own ``from_dict``. Unknown keys are an error, so a
    typo in a JSON file is not silently ignored.
    """

    def to_dict(self) -> dict[str, Any]:
        return _to_native(self)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            atomic_write_text(path, text + "\n")
        return text

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__} expects a JSON object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}; "
                              f"known fields are {sorted(fields)}")
        kwargs = {}
        for name, value in data.items():
            default = fields[name].default
            if default is dataclasses.MISSING and fields[name].default_factory is not dataclasses.MISSING:
                default = fields[name].default_factory()
            if dataclasses.is_dataclass(default) and isinstance(value, dict):
                value = type(default).from_dict(value)  # type: ignore[union-attr]
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[name] = value
        try:
            return cls(**kwargs)
        except TypeError as exc:  # pragma: no cover - dataclass signature mismatch
            raise ConfigError(f"{cls.__name__}: {exc}") from exc

    @classmethod
    def from_json(cls: type[T], text_or_path: str | os.PathLike) -> T:
        """Read a config from a JSON string or from a path to a JSON file."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            path = Path(text_or_path)
            if not path.is_file():
                raise ConfigError(f"config file {path} does not exist")
            text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{cls.__name__}: not valid JSON ({exc})") from exc
        return cls.from_dict(data)
