"""Build stages from config dicts: `build_stage({"type": "gopher_quality", "min_words": 50})`.

Each stage class is a dataclass registered under its type name; its fields are the only keys
a spec may set (plus `type` and an optional instance `name`). Unknown types or keys and values
of the wrong type fail at build time, naming the closest valid choice (jaxlm.schema converts and
checks the options, as it does for every config).
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from data_prep.errors import ConfigError
from data_prep.stages.base import Filter, Mapper, Stage
from jaxlm import schema

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
    match = schema.closest(word, choices, cutoff=0.0)
    return f"; did you mean {match!r}?" if match else ""


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
    options = {k: v for k, v in spec.items() if k not in ("type", "name", "sources")}
    try:  # stage options are named per stage, not as dotted config keys
        kwargs = schema.build_fields(cls, options)
    except schema.UnknownKeyError as e:
        raise StageConfigError(
            f"stage {type_name!r} has no option {e.name!r}{_closest(e.name, sorted(e.section))} "
            f"(options: {', '.join(sorted(e.section)) or 'none'})") from None
    except schema.WrongTypeError as e:  # named by the whole option, also when one item of it is wrong
        key = e.key.split(".")[0]
        raise StageConfigError(f"stage {type_name!r} option {key!r} must be "
                               f"{schema.type_name(schema.fields_of(cls)[key])}, got {options[key]!r}") from None
    except schema.ConfigError as e:
        raise StageConfigError(f"stage {type_name!r}: {e}") from None
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
