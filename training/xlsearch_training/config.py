"""The one way a training config is read: ``from_dict(cls, data, source)`` for every config dataclass.

Policy, the same for every config (train configs, model configs, experiment files and their sections):
- an unknown key is an error naming the key, the config and ``source`` (the file, and where in it: a section
  ``train``, a variant ``variants['W2VV']``, a nested ``tagger.vocab``);
- a missing key without a default is an error;
- values are checked against the field's annotation: ``bool`` takes only true/false; ``int`` takes integers (not
  booleans); ``float`` takes integers and floats and stores a float; ``str`` takes strings; ``X | None`` takes null;
  ``list[T]`` takes a list (or tuple) and checks every item; ``dict[str, T]`` takes an object and checks every
  value; a dataclass field is read with ``from_dict`` itself; ``Any`` takes anything;
- a field that stays a plain dict but holds another config's keys names that config in its metadata
  (``field(metadata={"schema": TaggerConfig})``): the dict is checked with that config's rules and kept as given
  (partial dicts are fine, the named config's defaults fill the rest where it is used);
- a ``ValueError`` from the dataclass's own checks (``__post_init__``) is re-raised as ``ConfigError`` with the
  source in front.

``ConfigError`` is a ``ValueError``. ``Config`` is the mixin every training config dataclass inherits:
``Cls.from_dict(data, source=...)``, ``Cls.load(path)`` and ``to_dict()``. ``CONFIG_DIR`` holds the shipped
experiment files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

__all__ = ["CONFIG_DIR", "Config", "ConfigError", "from_dict", "read_config"]

T = TypeVar("T")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A training config that cannot be used: the message names the file (or config) and the key."""


def read_config(path: str | os.PathLike[str]) -> tuple[dict[str, Any], str]:
    """(the JSON object in ``path``, the source label for its errors: the path as given)."""
    source = str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{source}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {_kind(data)}")
    return data, source


def _label(cls: type) -> str:
    """The config's name in messages: its ``config_name``, else its class name in words ("TagVocabConfig" ->
    "tag vocab")."""
    name = getattr(cls, "config_name", None)
    if name:
        return name
    words = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z0-9]+", cls.__name__.removesuffix("Config"))
    return " ".join(w if w.isupper() else w.lower() for w in words) or cls.__name__


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {json.dumps(value)}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, int | float):
        return f"number {value!r}"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _type_name(tp: Any) -> str:
    if tp is Any:
        return "any value"
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return f"a list of {_type_name(item)}" if item is not Any else "a list"
    if origin is dict or tp is dict:
        return "an object"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    """A value that does not fit its annotation (turned into a ConfigError by the caller)."""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked (and, for float and list, converted) against the annotation ``tp``."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _Mismatch
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except _Mismatch:
                continue
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin is list or tp is list:
        if not isinstance(value, list | tuple):
            raise _Mismatch
        (item,) = typing.get_args(tp) or (Any,)
        return [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch
        key_tp, val_tp = typing.get_args(tp) or (str, Any)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) and key_tp is str:
                raise _Mismatch
            out[k] = _check(v, val_tp, f"{where}[{k!r}]")
        return out
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return from_dict(tp, value, where)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch
    return value


def _check(value: Any, tp: Any, where: str) -> Any:
    try:
        return _coerce(value, tp, where)
    except _Mismatch:
        raise ConfigError(f"{where} must be {_type_name(tp)}, got {_kind(value)}") from None


def from_dict(cls: type[T], data: Any, source: str) -> T:
    """An instance of the dataclass ``cls`` from the JSON-like ``data``, by the module's policy; errors name
    ``source``."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected an object of {_label(cls)} options, got {_kind(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = [k for k in data if k not in fields]
    if unknown:
        keys = ", ".join(repr(k) for k in unknown)
        raise ConfigError(
            f"{source}: unknown {_label(cls)} option{'s' if len(unknown) > 1 else ''} {keys} "
            f"(known: {', '.join(fields)})"
        )
    missing = [
        name
        for name, f in fields.items()
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{source}: missing {_label(cls)} option(s) {', '.join(map(repr, missing))}")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, value in data.items():
        where = f"{source}: {name}"
        values[name] = _check(value, hints.get(name, Any), where)
        schema = fields[name].metadata.get("schema")
        if schema is not None and values[name] is not None:
            from_dict(schema, values[name], f"{source}: {name}")  # checked, kept as the dict it is
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{source}: {e}") from e


class Config:
    """Mixin of the training config dataclasses: ``from_dict`` by the module's policy, ``to_dict``.

    ``config_name`` names the config in error messages ("unknown tagger option 'epoch'")."""

    config_name: ClassVar[str] = ""

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any], source: str | None = None) -> T:
        return from_dict(cls, data, source or f"{_label(cls)} config")

    @classmethod
    def load(cls: type[T], path: str | os.PathLike[str]) -> T:
        """The config in the JSON file ``path`` (errors name the file)."""
        data, source = read_config(path)
        return cls.from_dict(data, source)  # type: ignore[attr-defined]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]
