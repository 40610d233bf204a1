"""Search spaces over config keys: grids, random samples, and `key=value` override strings."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from typing import Any

import yaml



class SweepError(ValueError):
    """Bad sweep input; the message says what is wrong and what to do."""


def parse_value(text: str) -> Any:
    """A value as the trainer reads it: YAML (`3e-3` -> 0.003, `true`, `[1, 2]`, `llama`)."""
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError as e:
        raise SweepError(f"value {text!r} is not valid YAML ({e})") from None
    if isinstance(value, str):  # YAML 1.1 reads "3e-3" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    return value


def format_value(value: Any) -> str:
    """The inverse of parse_value, for `key=value` command-line overrides."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return repr(value) if isinstance(value, float) else str(value)
    return yaml.safe_dump(value, default_flow_style=True).strip()


def _split_key(item: str, flag: str) -> tuple[str, str]:
    key, sep, rest = item.partition("=")
    if not sep or not key.strip() or not rest:
        raise SweepError(f"{flag} {item!r} must look like key.path=..., e.g. {flag} optim.lr=1e-3,3e-3")
    return key.strip(), rest


def parse_grid(items: list[str]) -> dict[str, list]:
    """['optim.lr=1e-3,3e-3', 'model.d_model=64,128'] -> {'optim.lr': [0.001, 0.003], ...}."""
    grid = {}
    for item in items:
        key, rest = _split_key(item, "--grid")
        grid[key] = [parse_value(v.strip()) for v in rest.split(",")]
    return grid


def grid_trials(grid: dict[str, list]) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


@dataclasses.dataclass(frozen=True)
class Dimension:
    kind: str  # uniform | loguniform | int | choice
    args: tuple

    def sample(self, rng: random.Random) -> Any:
        if self.kind == "uniform":
            return rng.uniform(*self.args)
        if self.kind == "loguniform":
            lo, hi = self.args
            return math.exp(rng.uniform(math.log(lo), math.log(hi)))
        if self.kind == "int":
            return rng.randint(*self.args)
        return rng.choice(self.args)


def parse_space(items: list[str]) -> dict[str, Dimension]:
    """['optim.lr=loguniform:1e-4:1e-2', 'model.n_layers=int:2:6', 'model.family=choice:gpt2,llama']."""
    space = {}
    for item in items:
        key, rest = _split_key(item, "--space")
        kind, _, spec = rest.partition(":")
        if kind == "choice":
            space[key] = Dimension(kind, tuple(parse_value(v.strip()) for v in spec.split(",")))
            continue
        if kind not in ("uniform", "loguniform", "int"):
            raise SweepError(f"--space {item!r}: kind must be uniform, loguniform, int or choice "
                             "(e.g. optim.lr=loguniform:1e-4:1e-2)")
        bounds = [parse_value(v) for v in spec.split(":")]
        if len(bounds) != 2 or not all(isinstance(b, (int, float)) for b in bounds) or bounds[0] >= bounds[1]:
            raise SweepError(f"--space {item!r}: give two numeric bounds low:high with low < high")
        if kind == "loguniform" and bounds[0] <= 0:
            raise SweepError(f"--space {item!r}: loguniform bounds must be positive")
        if kind == "int":
            bounds = [int(b) for b in bounds]
        space[key] = Dimension(kind, tuple(bounds))
    return space


def random_trials(space: dict[str, Dimension], n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{k: dim.sample(rng) for k, dim in space.items()} for _ in range(n)]


def set_path(tree: dict, dotted: str, value: Any) -> None:
    """tree['a']['b'] = value for 'a.b', creating sections as needed. Keys are not checked here: a
    sweep of jaxlm's trainer checks every trial's config before the first trial runs
    (check_trial_configs), and another --train-cmd may take keys jaxlm does not know."""
    node: Any = tree
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            if last:
                node[int(part)] = value
            node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            node = node.setdefault(part, {})
        else:
            raise SweepError(f"cannot set {dotted!r}: {'.'.join(parts[:i])!r} is not a section of the config")
