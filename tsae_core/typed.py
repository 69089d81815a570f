"""Frozen dataclasses built from plain (YAML) data, with errors that name the offending key.

`build(cls, data, key)` checks every field against its type hint (int, float, str, bool,
Literal, unions, tuples, lists, dicts and nested dataclasses) and reports unknown keys with
the allowed ones; the dataclasses' own `__post_init__` checks ranges.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any, Literal


class ConfigError(ValueError):
    """A params file or override is invalid; the message names the key and the file."""


def check(ok: bool, key: str, message: str) -> None:
    """Raise `ConfigError("key: message")` unless `ok` (for range checks in `__post_init__`)."""
    if not ok:
        raise ConfigError(f"{key}: {message}")


PLAIN_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def check_plain_name(name: str, key: str) -> None:
    """A name that becomes a file or folder name: letters, digits, `.`, `_`, `-`; not `.` or `..`."""
    check(bool(PLAIN_NAME.fullmatch(name)) and name not in (".", ".."), key,
           f"{name!r} must be a plain name (letters, digits, '.', '_', '-'; not '.' or '..'): it names a folder")


def build(cls: type, data: Any, key: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{key or 'top level'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(data) - names))
    if unknown:
        where = f"{key}." if key else ""
        raise ConfigError(
            f"unknown key {where}{unknown[0]!s}; allowed keys{' of ' + key if key else ''}: {', '.join(sorted(names))}"
        )
    kwargs = {name: _convert(hints[name], value, f"{key}.{name}" if key else name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(key) or not key else f"{key}.{msg}") from None


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if tp is Any:
        return value
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {value!r}")
        return None
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        for a in args:
            try:
                return _convert(a, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} does not match {tp}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return {str(k): _convert(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - a programming error
