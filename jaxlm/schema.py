"""YAML-shaped data -> typed dataclasses: the one builder behind every config in the project.

jaxlm's training config (`jaxlm.config`), data_prep's config and its stage specs are dataclass
trees; this module turns plain data (from `yaml.safe_load` or `key.path=value` overrides) into
them, or raises ConfigError naming the dotted key at fault:

- an unknown key names the closest valid one as a full dotted key, searching the key's own
  section first and then the whole tree (`lr` -> `optim.lr`);
- a wrong type names the expected type and the value got (`'optim.lr' must be a float, got str 'x'`);
- a missing required field, a value outside a Literal's choices, a non-mapping section likewise.

Values are converted the way YAML users expect: an int where a float is wanted, a float written
as `3e-4` (which YAML 1.1 reads as a string), a whole float (`1.0e6`) where an int is wanted, a
digit string as an int mapping key (JSON objects have string keys). bools are never numbers.
Overrides address list entries by index or by the entry's `name` (else `type`):
`sources.0.weight`, `stages.minhash_dedup.bands`. Only the standard library and PyYAML are used,
so data_prep may import this module without the rest of jaxlm.
"""

from __future__ import annotations

import dataclasses
import difflib
import keyword
import types
import typing
from typing import Annotated, Any, Literal, Optional, Union

import yaml


class ConfigError(ValueError):
    """A config the user wrote cannot work; the message names the key and the fix.

    `key` is the dotted key at fault ('' when unknown); `override` the `key=value` argument that
    caused it, when one did.
    """

    def __init__(self, message: str, key: str = "", override: Optional[str] = None):
        super().__init__(message)
        self.key, self.override = key, override


class UnknownKeyError(ConfigError):
    """`key` is not in the schema; `name` is its last part, `section` the keys valid beside it."""

    def __init__(self, message: str, key: str, name: str, section: list[str]):
        super().__init__(message, key)
        self.name, self.section = name, section


class WrongTypeError(ConfigError):
    """The value at `key` does not fit `expected` (a type hint)."""

    def __init__(self, message: str, key: str, expected: Any, value: Any):
        super().__init__(message, key)
        self.expected, self.value = expected, value


# ----------------------------------------------------------------------------------------------
# Type hints


def strip_optional(tp):
    """X for Optional[X]; anything else unchanged."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _unannotated(tp) -> tuple[Any, str]:
    """(the type, an example for messages) of Annotated[type, "example"]."""
    if typing.get_origin(tp) is Annotated:
        inner, *meta = typing.get_args(tp)
        return inner, next((m for m in meta if isinstance(m, str)), "")
    return tp, ""


def type_name(tp) -> str:
    tp = _unannotated(strip_optional(tp))[0]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (list, tuple):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def _a(tp) -> str:
    name = type_name(tp)
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def key_of(field_name: str) -> str:
    """The config key of a dataclass field: the name, less the "_" that a Python keyword needs
    as a field name (`from_` is the key `from`)."""
    bare = field_name[:-1]
    return bare if field_name.endswith("_") and keyword.iskeyword(bare) else field_name


def fields_of(cls) -> dict[str, Any]:
    """Config key -> resolved type hint, for the fields a config may set (init fields)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {key_of(f.name): hints[f.name] for f in dataclasses.fields(cls) if f.init}


def to_plain(obj):
    """A dataclass tree as plain data under its config keys (what YAML and JSON records hold)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {key_of(f.name): to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------------------------
# Closest keys


def closest(word: str, choices, cutoff: float = 0.5) -> Optional[str]:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return match[0] if match else None


def _all_keys(cls, prefix: str = "") -> list[str]:
    """Every dotted key of a dataclass tree (sections and leaves; list entries are not expanded)."""
    keys = []
    for name, hint in fields_of(cls).items():
        key = prefix + name
        keys.append(key)
        inner = _unannotated(strip_optional(hint))[0]
        if dataclasses.is_dataclass(inner):
            keys.extend(_all_keys(inner, key + "."))
    return keys


def unknown_key(name: str, section_cls, prefix: str, root=None) -> UnknownKeyError:
    """The error for key `prefix + name`, not in `section_cls`. It suggests full dotted keys: with
    `root`, the same name in other sections (`lr` -> `optim.lr`); else the closest key of the same
    section; else (with `root`) a very close name anywhere in the tree."""
    section = list(fields_of(section_cls))
    keys = _all_keys(root) if root is not None else []
    candidates = [k for k in keys if k.rsplit(".", 1)[-1] == name][:3]  # the key, in another section
    if not candidates:
        match = closest(name, section)
        candidates = [prefix + match] if match is not None else []
    if not candidates and keys:
        leaves = {k.rsplit(".", 1)[-1]: k for k in keys}
        match = closest(name, leaves, cutoff=0.8)
        candidates = [leaves[match]] if match else []
    if candidates:
        tail = f"did you mean {' or '.join(repr(k) for k in candidates)}?"
    else:
        tail = f"valid keys: {', '.join(section)}"
    return UnknownKeyError(f"unknown config key {prefix + name!r}; {tail}", prefix + name, name, section)


# ----------------------------------------------------------------------------------------------
# Building


def build(tp, value: Any, key: str = "", root=None):
    """`value` (plain data) converted to type `tp`; ConfigError naming `key` on any mismatch.

    `root`, the tree's top dataclass, lets an unknown key be matched against the whole tree.
    """
    tp, example = _unannotated(tp)
    shown = key or "the config"
    optional = strip_optional(tp) is not tp
    tp = _unannotated(strip_optional(tp))[0]
    if tp is Any:
        return value
    if value is None and dataclasses.is_dataclass(tp) and not optional:
        value = {}  # a YAML section whose keys are all commented out
    if value is None:
        if optional:
            return None
        raise WrongTypeError(f"{shown!r} must be {_a(tp)}, got null", key, tp, value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise WrongTypeError(f"{shown!r} must be a mapping of keys, got {type(value).__name__}", key, tp, value)
        return tp(**build_fields(tp, value, key, root))
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    eg = f", e.g. {example}" if example else ""
    if origin is dict:
        if not isinstance(value, dict):
            raise WrongTypeError(f"{shown!r} must be a mapping{eg}, got {type(value).__name__} {value!r}", key, tp, value)
        key_tp, value_tp = args or (Any, Any)
        return {build(key_tp, int(k) if key_tp is int and isinstance(k, str) and k.isdigit() else k, f"{key}.{k}"):
                build(value_tp, v, f"{key}.{k}", root) for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise WrongTypeError(f"{shown!r} must be {_a(tp)}, got {type(value).__name__}", key, tp, value)
        item_tp = args[0] if args else Any
        return [build(item_tp, v, f"{key}.{i}", root) for i, v in enumerate(value)]
    if origin is Literal:
        if value not in args:
            match = closest(str(value), [str(a) for a in args])
            hint = f"; did you mean {match!r}?" if match else ""
            raise WrongTypeError(f"{shown!r} must be one of {type_name(tp)}, got {value!r}{hint}", key, tp, value)
        return value
    if origin in (Union, types.UnionType):
        for arm in args:
            try:
                return build(arm, value, key, root)
            except ConfigError:
                pass
        raise WrongTypeError(f"{shown!r} must be {_a(tp)}, got {type(value).__name__} {value!r}", key, tp, value)
    return _scalar(tp, value, key, shown)


def _scalar(tp, value, key: str, shown: str):
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is float:
        if isinstance(value, str):
            try:  # PyYAML (YAML 1.1) reads 1e-3 as a string
                return float(value)
            except ValueError:
                pass
        elif number:
            return float(value)
    elif tp is int:
        if number and (isinstance(value, int) or value.is_integer()):
            return int(value)  # 1.0e6 in YAML
    elif tp in (bool, str):
        if isinstance(value, tp):
            return value
    elif not isinstance(tp, type):
        raise TypeError(f"config schema uses an unsupported type {tp} at {shown}")
    elif isinstance(value, tp):
        return value
    raise WrongTypeError(f"{shown!r} must be {_a(tp)}, got {type(value).__name__} {value!r}", key, tp, value)


def build_fields(cls, value: dict, key: str = "", root=None) -> dict[str, Any]:
    """The converted keyword arguments of dataclass `cls` from mapping `value` (unknown keys,
    missing required fields and wrong types fail); `cls(**result)` builds it."""
    fields = fields_of(cls)
    prefix = f"{key}." if key else ""
    for k in value:
        if k not in fields:
            raise unknown_key(str(k), cls, prefix, root)
    missing = [key_of(f.name) for f in dataclasses.fields(cls) if f.init and key_of(f.name) not in value
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{prefix + missing[0]!r} is required but missing", prefix + missing[0])
    names = {key_of(f.name): f.name for f in dataclasses.fields(cls)}
    return {names[k]: build(fields[k], v, prefix + k, root) for k, v in value.items()}


# ----------------------------------------------------------------------------------------------
# Overrides: key.path=value


def parse_override(item: str) -> tuple[str, Any]:
    """('a.b', value) of 'a.b=value', the value read as YAML (`8` an int, `[a, b]` a list)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form key.path=value", override=item)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw  # not YAML (an unclosed bracket in a path, say): the text itself
    return key.strip(), value


def set_override(raw: dict, root, dotted: str, value: Any) -> None:
    """raw[a][b]... = value for 'a.b...', every part checked against dataclass `root` first."""
    _set(raw, root, root, dotted.split("."), value, dotted)


def _set(node: dict, cls, root, parts: list[str], value: Any, full: str) -> None:
    fields = fields_of(cls)
    prefix = full[: len(full) - len(".".join(parts))]
    name = parts[0]
    if name not in fields:
        raise unknown_key(name, cls, prefix, root)
    if len(parts) == 1:
        node[name] = value
        return
    tp = _unannotated(strip_optional(_unannotated(fields[name])[0]))[0]
    if dataclasses.is_dataclass(tp):
        if not isinstance(node.get(name), dict):
            node[name] = {}
        _set(node[name], tp, root, parts[1:], value, full)
    elif typing.get_origin(tp) is list:
        items = node.get(name)
        if not isinstance(items, list):
            raise ConfigError(f"cannot override {full!r}: {prefix + name!r} is not a list in the config", full)
        item = _find_item(items, parts[1], prefix + name)
        if len(parts) == 2:
            raise ConfigError(f"override {full!r} names a whole list entry; set one of its keys, e.g. {full}.weight=2", full)
        item_tp = _unannotated(typing.get_args(tp)[0])[0]
        if dataclasses.is_dataclass(item_tp):
            _set(item, item_tp, root, parts[2:], value, full)
        else:  # a free-form mapping (a stage spec): its keys are checked where it is built
            for part in parts[2:-1]:
                item = item.setdefault(part, {})
                if not isinstance(item, dict):
                    raise ConfigError(f"cannot override {full!r}: {part!r} is not a mapping in the config", full)
            item[parts[-1]] = value
    else:
        raise ConfigError(f"{prefix + name!r} has no sub-keys, so {full!r} is not a valid override", full)


def _find_item(items: list, ref: str, where: str) -> dict:
    names = [it.get("name", it.get("type")) for it in items if isinstance(it, dict)]
    for i, it in enumerate(items):
        if isinstance(it, dict) and (it.get("name", it.get("type")) == ref or str(i) == ref):
            return it
    raise ConfigError(f"{where} has no entry {ref!r}; use an index 0..{len(items) - 1} or a name: "
                      f"{', '.join(map(str, names))}", where)


def apply_overrides(raw: dict, root, overrides) -> dict[str, str]:
    """Applies `key.path=value` strings to `raw` in order; returns {dotted key: override} so that a
    later error can name the override that caused it (`cause`). Errors here name the override."""
    origins = {}
    for item in overrides:
        key, value = parse_override(item)
        try:
            set_override(raw, root, key, value)
        except ConfigError as e:
            e.override = item
            raise
        origins[key] = item
    return origins


def cause(error: ConfigError, origins: dict[str, str]) -> Optional[str]:
    """The override that set the key `error` is about (or a section above it), if one did."""
    if error.override:
        return error.override
    parts = error.key.split(".") if error.key else []
    for n in range(len(parts), 0, -1):
        found = origins.get(".".join(parts[:n]))
        if found:
            return found
    return None
