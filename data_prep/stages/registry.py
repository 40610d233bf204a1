"""Build stages from config dicts: `build_stage({"type": "gopher_quality", "min_words": 50})`.

Each stage class is a dataclass registered under its type name; its fields are the only keys
a spec may set (plus `type` and an optional instance `name`). Unknown types or keys and values
of the wrong type fail at build time, naming the closest valid choice.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Callable, TypeVar

from data_prep.errors import ConfigError
from data_prep.stages.base import Filter, Mapper, Stage

STAGES: dict[str, type[Stage]] = {}
S = TypeVar("S", bound=type)


class StageConfigError(ConfigError, ValueError):
    """A stage spec is wrong; the message says what and how to fix it."""


def register(type_name: str) -> Callable[[S], S]:
    def add(cls: S) -> S:
        if type_name in STAGES:
            raise ValueError(f"stage type {type_name!r} registered twice")
        STAGES[type_name] = cls
        cls.type_name = type_name
        return cls

    return add


def _closest(word: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.0)
    return f"; did you mean {match[0]!r}?" if match else ""


def _matches(value: Any, hint: Any) -> bool:
    """Whether a YAML/JSON value fits a field's annotation (the few kinds stages use)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return isinstance(value, (list, tuple)) and all(_matches(v, item) for v in value)
    if origin is dict:
        key_hint, value_hint = typing.get_args(hint) or (Any, Any)
        return isinstance(value, dict) and all(
            (_matches(k, key_hint) or (key_hint is int and str(k).isdigit())) and _matches(v, value_hint)
            for k, v in value.items())  # JSON object keys are strings: "5" stands for 5
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def build_stage(spec: dict[str, Any]) -> Stage:
    """A configured stage from `spec`; raises StageConfigError naming what is wrong."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise StageConfigError(
            f"a stage spec must be a mapping with a 'type' key, got {spec!r}; "
            f"valid types: {', '.join(sorted(STAGES))}")
    type_name = spec["type"]
    if type_name not in STAGES:
        raise StageConfigError(
            f"unknown stage type {type_name!r}{_closest(str(type_name), sorted(STAGES))} "
            f"(valid types: {', '.join(sorted(STAGES))})")
    cls = STAGES[type_name]
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in spec.items():
        if key in ("type", "name", "sources"):
            continue
        if key not in fields:
            raise StageConfigError(
                f"stage {type_name!r} has no option {key!r}{_closest(key, sorted(fields))} "
                f"(options: {', '.join(sorted(fields)) or 'none'})")
        if not _matches(value, hints[key]):
            raise StageConfigError(
                f"stage {type_name!r} option {key!r} must be {_describe(hints[key])}, got {value!r}")
        kwargs[key] = value
    try:
        stage = cls(**kwargs)
    except StageConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise StageConfigError(f"stage {type_name!r}: {e}") from None
    stage.name = str(spec.get("name", type_name))
    if "sources" in spec:
        sources = spec["sources"]
        if not (isinstance(sources, list) and all(isinstance(x, str) for x in sources)):
            raise StageConfigError(f"stage {stage.name!r}: 'sources' must be a list of source names, got {sources!r}")
        if not isinstance(stage, (Filter, Mapper)):
            raise StageConfigError(
                f"stage {stage.name!r}: 'sources' applies to per-document stages only; "
                f"{type_name!r} needs every document (remove the 'sources' key)")
        stage.sources = frozenset(sources)
    return stage


def build_stages(specs: list[dict[str, Any]]) -> list[Stage]:
    """Build a list of stages; instance names must be unique (they key stats and state)."""
    stages = [build_stage(s) for s in specs]
    names = [s.name for s in stages]
    for name in names:
        if names.count(name) > 1:
            raise StageConfigError(
                f"two stages are named {name!r}; give each a distinct 'name' key in the config")
    return stages


def check(condition: bool, message: str) -> None:
    """Validate an option inside a stage's __post_init__."""
    if not condition:
        raise StageConfigError(message)
