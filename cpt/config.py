"""Typed configuration: dataclasses loaded from YAML, overridable as `key.sub=value`, validated once.

Every problem in a file is collected and reported together, each naming the file, the key path, the
bad value and what is allowed, so a broken config fails before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import stat
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


# Aliases let a few lines of YAML stand for a tree of billions of values ("billion laughs"): PyYAML
# shares the aliased objects, so parsing is cheap, but anything that walks or prints the result (a type
# check, an error message) pays for the whole expansion. A config, stage or grid is a few hundred values.
MAX_YAML_NODES = 100_000  # scalars, lists and mappings of the document with every alias expanded
MAX_CONFIG_BYTES = 1 << 20  # a YAML file larger than this is not a config


def _expanded_size(root: yaml.Node) -> int:
    """Nodes of the composed document with every alias expanded (shared nodes counted each time they are
    reached), or a ConfigError past MAX_YAML_NODES or on an alias inside itself."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            open_.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > MAX_YAML_NODES:
                raise ConfigError("YAML", [f"its aliases expand to more than {MAX_YAML_NODES:,} values"])
            continue
        if key in sizes:
            continue
        if key in open_:
            raise ConfigError("YAML", ["an alias refers to the list or mapping that holds it"])
        open_.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def parse_yaml(text: str):
    """Parse YAML safely (no Python objects), numbers read as YAML 1.2 reads them, aliases bounded
    (MAX_YAML_NODES). Every YAML cpt reads (configs, stages, grids, `--set` values) goes through here."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        try:
            return loader.construct_document(node)
        except ValueError as e:  # an integer of thousands of digits (Python's int() refuses it), ...
            raise ConfigError("YAML", [f"a value cannot be read ({str(e).split(':')[0][:80]})"]) from None
    finally:
        loader.dispose()


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
        with open(path, "rb") as f:  # one open: the checks and the read see the same file
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ConfigError(str(path), ["not a regular file"])
            if info.st_size > MAX_CONFIG_BYTES:
                raise ConfigError(
                    str(path), [f"{info.st_size:,} bytes: a config is at most {MAX_CONFIG_BYTES:,}"]
                )
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(str(path), [f"cannot read the file ({e.strerror})"]) from None
    if len(raw) > MAX_CONFIG_BYTES:  # it grew while being read
        raise ConfigError(str(path), [f"a config is at most {MAX_CONFIG_BYTES:,} bytes"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(str(path), [f"not UTF-8 text (byte {e.start})"]) from None
    try:
        data = parse_yaml(text)
    except ConfigError as e:
        raise ConfigError(str(path), e.problems) from None
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
            problems.append(f"override {show(item)} must look like key.sub=value")
            continue
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(f"override {show(item)}: {part} is not a section")
                break
        else:
            try:
                node[parts[-1]] = parse_yaml(raw) if raw.strip() else None
            except ConfigError as e:
                problems += [f"override {show(item)}: {p}" for p in e.problems]
            except yaml.YAMLError as e:
                problems.append(
                    f"override {show(item)}: the value is not valid YAML ({getattr(e, 'problem', e)}); "
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
        problems.append(f"{path or '<top>'}: expected a mapping, got {show(data)}")
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
        problems.append(f"{path}: {show(value)} is not one of: {', '.join(names)}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, path, problems)
    if origin is typing.Literal:
        if value not in args:
            problems.append(f"{path}: {show(value)} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {show(value)}")
            return []
        return [_coerce(args[0], v, f"{path}[{i}]", problems) for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {show(value)}")
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
            problems.append(f"{path}: expected {tp.__name__}, got {show(value)}")
            return value
        return number
    if tp in (int, float, str, bool) and (
        not isinstance(value, tp) or (tp is int and isinstance(value, bool))
    ):
        problems.append(f"{path}: expected {tp.__name__}, got {show(value)}")
    elif isinstance(value, float) and not math.isfinite(value):  # .nan / .inf pass every range check
        problems.append(f"{path}: expected a finite number, got {value}")
    return value


def show(value: Any, limit: int = 60) -> str:
    """A value as an error message shows it: strings and scalars as written, cut to `limit` characters;
    lists and mappings by type and size (one of them may stand for millions of values)."""
    if isinstance(value, list):
        return f"a list of {len(value):,} items"
    if isinstance(value, dict):
        return f"a mapping of {len(value):,} keys"
    text = repr(value) if not isinstance(value, str) or len(value) <= limit else repr(value[:limit]) + "..."
    return text if len(text) <= limit + 5 else text[:limit] + "..."


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
