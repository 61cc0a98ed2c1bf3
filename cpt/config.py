"""Typed configuration: dataclasses loaded from YAML, overridable as `key.sub=value`, validated once.

Every problem in a file is collected and reported together, each naming the file, the key path, the
bad value and what is allowed, so a broken config fails before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: `1e-4`, `1E5`, `.5` are numbers, as users write them
    (YAML 1.1, which PyYAML follows, reads an exponent without a dot, `1e-4`, as a string)."""


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    """Parse YAML safely (no Python objects), numbers read as YAML 1.2 reads them. Every YAML cpt reads
    (configs, stages, grids, `--set` values) goes through here."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message lists every problem found."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        if len(problems) == 1:
            super().__init__(f"{source}: {problems[0]}")
        else:
            lines = "\n".join(f"  - {p}" for p in problems)
            super().__init__(f"{source}: {len(problems)} problems in the configuration:\n{lines}")


def read_yaml(path: str | Path) -> dict:
    """Parse a YAML mapping safely; a missing file or a syntax error is a one-line ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(path), [f"cannot read the file ({e.strerror})"]) from None
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(str(path), [f"{where}not valid YAML ({getattr(e, 'problem', e)})"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), [f"the top level must be a mapping of keys, got {type(data).__name__}"])
    return data


def apply_overrides(data: dict, overrides: list[str], source: str = "command line") -> dict:
    """Set `a.b.c=value` overrides into a nested dict; values are parsed as YAML scalars or lists."""
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            problems.append(f"override {item!r} must look like key.sub=value")
            continue
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(f"override {item!r}: {part} is not a section")
                break
        else:
            try:
                node[parts[-1]] = parse_yaml(raw) if raw.strip() else None
            except yaml.YAMLError as e:
                problems.append(
                    f"override {item!r}: the value is not valid YAML ({getattr(e, 'problem', e)}); "
                    "quote it, or close its brackets"
                )
    if problems:
        raise ConfigError(source, problems)
    return data


def build(cls: type[T], data: dict | None, source: str, path: str = "") -> T:
    """Turn a nested mapping into the dataclass `cls`, rejecting unknown keys and wrong types."""
    problems: list[str] = []
    obj = _build(cls, data or {}, path, problems)
    post = getattr(obj, "validate", None)
    if post is not None:
        reported = {q.split(":")[0] for q in problems}
        try:
            problems += [p for p in post() if p.split(":")[0] not in reported]
        except (TypeError, ValueError):
            if not problems:
                raise
            # a value of the wrong type (reported above) broke a cross-key check: those wait for the fix
    if problems:
        raise ConfigError(source, problems)
    return obj


def _build(cls: type, data: Any, path: str, problems: list[str]) -> Any:
    if not isinstance(data, dict):
        problems.append(f"{path or '<top>'}: expected a mapping, got {data!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    for key in unknown:
        allowed = ", ".join(sorted(fields))
        problems.append(f"{_join(path, key)}: unknown key (allowed: {allowed})")
    values = {}
    for name in fields:
        if name in data:
            values[name] = _coerce(hints[name], data[name], _join(path, name), problems)
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        problems.append(f"{path or '<top>'}: {e}")
        return cls()


def _coerce(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _coerce(non_none[0], value, path, problems)
        for alternative in non_none:  # the first alternative the value fits
            trial: list[str] = []
            coerced = _coerce(alternative, value, path, trial)
            if not trial:
                return coerced
        names = [
            repr(a) if typing.get_origin(a) is typing.Literal else getattr(a, "__name__", str(a))
            for a in non_none
        ]
        problems.append(f"{path}: {value!r} is not one of: {', '.join(names)}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, path, problems)
    if origin is typing.Literal:
        if value not in args:
            problems.append(f"{path}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {value!r}")
            return []
        return [_coerce(args[0], v, f"{path}[{i}]", problems) for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {value!r}")
            return {}
        return (
            {k: _coerce(args[1], v, _join(path, str(k)), problems) for k, v in value.items()}
            if args
            else value
        )
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, str):  # "1.0", "1e-4", "100": a number written as a string
        number = _number(value, tp)
        if number is None:
            problems.append(f"{path}: expected {tp.__name__}, got {value!r}")
            return value
        return number
    if tp in (int, float, str, bool) and (
        not isinstance(value, tp) or (tp is int and isinstance(value, bool))
    ):
        problems.append(f"{path}: expected {tp.__name__}, got {value!r}")
    return value


def _number(text: str, tp: type) -> int | float | None:
    """A numeric string as `tp` (float: any finite decimal; int: a whole number); None if it is not one."""
    text = text.strip().replace("_", "")
    try:
        number = float(text)
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    if tp is float:
        return number
    return int(text) if re.fullmatch(r"[-+]?[0-9]+", text) else None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
