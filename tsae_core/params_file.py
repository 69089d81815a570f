"""Reading a params file and `--set` overrides into plain data, refusing what YAML lets slip through.

Every problem is a `ConfigError` naming the file (or the override) and the key, never a traceback:
- the file must be UTF-8 text and not empty;
- a key given twice in one mapping is refused with its line (YAML's own rule is "last one wins");
- numbers follow YAML 1.2: `3e-4` is a float (PyYAML's YAML 1.1 reads it as the string "3e-4");
- `.inf` and `.nan` are refused everywhere: no parameter of an experiment is meant to be infinite;
- dates and other YAML types that are not plain data are refused (quote them to make strings);
- an override may change any key of the schema but may not create an entry of a named mapping
  (a variant, a sweep, a grid knob) that the file does not have.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from tsae_core.typed import ConfigError

_PLAIN = (str, int, float, bool, type(None))


# --------------------------------------------------------------------------------------------
# Project root and params files
# --------------------------------------------------------------------------------------------


def project_root() -> Path:
    """The project checkout (holding `params/`) when the package is used from one, else the cwd."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "params").is_dir() else Path.cwd()


def resolve_path(p: str | Path) -> Path:
    p = Path(p).expanduser()
    return p if p.is_absolute() else project_root() / p


SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin", "/sys",
                "/usr/bin", "/usr/include", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libexec", "/usr/sbin", "/usr/share")
"""The operating system's folders: no run or figure folder may be in or below them."""
SHARED_FOLDERS = ("/", "/home", "/media", "/mnt", "/opt", "/root", "/run", "/srv", "/tmp", "/usr", "/usr/local", "/var")
"""Folders holding other people's files: a run's folder may be below them, never one of them."""


def system_folder_problem(folder: Path) -> str | None:
    """Why a run may not write in `folder` (resolved): a system folder, a shared one, or a home; else None.

    A run writes, replaces and cleans up files in its folder: `run.out_dir: /` with `run.name: etc`
    would make that /etc."""
    folder = folder.resolve()
    for tree in SYSTEM_TREES:
        if folder == Path(tree) or Path(tree) in folder.parents:
            return f"{folder} is a system folder ({tree})"
    if str(folder) in SHARED_FOLDERS or folder == Path.home().resolve():
        return f"{folder} holds other files than this run's"
    return None


def find_params_file(path: str | Path) -> Path:
    """A params file given as a path (absolute, relative to the cwd or to the project root)."""
    p = Path(path).expanduser()
    for candidate in (p, project_root() / p, project_root() / "params" / p):
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(
        f"params file {str(path)!r} not found (looked in the current directory and in "
        f"{project_root() / 'params'}); pass a path such as params/default.yaml"
    )


# --------------------------------------------------------------------------------------------
# Strict YAML
# --------------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats, no timestamps, and duplicate keys refused."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:
                continue  # an unhashable key: the base constructor reports it
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {first}); keep only one", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 (core schema) reads 3e-4 and 1E5 as floats; YAML 1.1 needs a dot. Timestamps are not
# plain data (and not JSON): a date-like value stays a string.
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, origin: str) -> Any:
    """Plain data (mappings, lists, strings, numbers, booleans, null) from YAML text."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" on line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        context = f"{e.context}: " if e.context else ""
        raise ConfigError(f"{origin}: not valid YAML{where}: {context}{e.problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{origin}: not valid YAML: {' '.join(str(e).split())}") from None
    check_plain(data, origin, "")
    return data


def check_plain(data: Any, origin: str, key: str) -> None:
    """Refuse non-finite numbers and values that are not plain data, naming the key."""
    where = f"{origin}: {key}" if key else origin
    if isinstance(data, dict):
        for k, v in data.items():
            if not isinstance(k, (str, int, bool)) and k is not None:
                raise ConfigError(f"{where}: a key must be a name, got {k!r}")
            check_plain(v, origin, f"{key}.{k}" if key else str(k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            check_plain(v, origin, f"{key}[{i}]")
    elif isinstance(data, float) and not math.isfinite(data):
        raise ConfigError(f"{where}: {data} is not a finite number; give a finite value")
    elif not isinstance(data, _PLAIN):
        raise ConfigError(f"{where}: {type(data).__name__} values are not supported here ({data!r}); quote it to make it a string")


def read_params(file: Path) -> dict[str, Any]:
    """The mapping of sections in a params file (UTF-8, not empty, strict YAML)."""
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{file}: not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line}); "
                          f"save the file as UTF-8") from None
    data = parse_yaml(text, str(file))
    if data is None or data == {}:
        raise ConfigError(f"{file}: the params file is empty; give at least `run: {{name: ...}}` and the sections "
                          f"that differ from the defaults (params/ci.yaml is a small example)")
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[str, Any]:
    """`"train.steps=200"` -> `("train.steps", 200)`; the value is read as (strict) YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: the key must look like section.key, e.g. train.steps=200")
    return key, parse_yaml(raw, f"override {key}")


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any], schema: type | None = None,
                    origin: str = "<params>") -> dict[str, Any]:
    """Set dotted keys in a nested dict (a copy); intermediate mappings are created as needed.

    With `schema` (the config dataclass), every override path must name keys of the schema, and
    an entry of a named mapping (a variant, a sweep, a grid knob) must already exist."""
    data = copy.deepcopy(data)
    for dotted, value in overrides.items():
        parts = str(dotted).split(".")
        if schema is not None:
            check_override_path(schema, data, parts, origin)
        check_plain(value, f"override {dotted}", "value")
        node = data
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {dotted}: {part} is not a section")
            node = nxt
        node[parts[-1]] = value
    return data


def check_override_path(schema: type, data: Any, parts: list[str], origin: str) -> None:
    """Walk `parts` through the dataclass `schema` alongside the file's `data`; `ConfigError` naming
    the override where it leaves the schema or would create a named entry."""
    dotted = ".".join(parts)
    tp: Any = schema
    node: Any = data
    for i, part in enumerate(parts):
        here = ".".join(parts[:i])
        if dataclasses.is_dataclass(tp):
            fields = {f.name: f for f in dataclasses.fields(tp)}
            if part not in fields:
                raise ConfigError(f"{origin}: override {dotted}: unknown key {part!r}"
                                  f"{' in ' + here if here else ''}; allowed keys: {', '.join(sorted(fields))}")
            if not isinstance(node, dict) or node.get(part) is None:
                node = _default_value(fields[part])
            else:
                node = node[part]
            tp = typing.get_type_hints(tp)[part]
            continue
        tp = _strip_optional(tp)
        if typing.get_origin(tp) is dict:
            value_type = typing.get_args(tp)[1]
            if value_type is Any:
                return  # open-ended knobs (a variant's options): validated by whoever reads them
            entries = list(node) if isinstance(node, dict) else []
            if part not in entries:
                raise ConfigError(f"{origin}: override {dotted}: {here} has no entry {part!r} "
                                  f"(entries: {', '.join(map(str, entries)) or 'none'}); an override may change an "
                                  f"entry but not create one: add it to the params file")
            node, tp = node[part], value_type
            continue
        raise ConfigError(f"{origin}: override {dotted}: {here} is a single value, not a section")


def _default_value(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return dataclasses.asdict(f.default) if dataclasses.is_dataclass(f.default) else f.default
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return None


def _strip_optional(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return tp
