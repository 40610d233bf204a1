"""Verifiable rewards: functions (response text, reference answer) -> reward in [0, 1].

An RL config names one as "module:function" (e.g. "jaxlm.eval.verifiers:final_number"); any
importable function with the same signature works.
"""

from __future__ import annotations

import importlib
import re
from typing import Callable, Optional

from jaxlm.eval.errors import EvalError

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_MARKED = re.compile(r"####\s*(-?[\d,]*\.?\d+)")


def final_answer(text: str) -> Optional[str]:
    """The number after the first "####" (GSM8K's marker), else the last number in the text;
    thousands separators removed."""
    m = _MARKED.search(text)
    if m:
        return m.group(1).replace(",", "")
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def _same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return a.strip() == b.strip()


def final_number(response: str, answer: str) -> float:
    """1.0 when the response's final answer equals the reference number, else 0.0."""
    got = final_answer(response)
    return 1.0 if got is not None and _same_number(got, answer) else 0.0


def load_verifier(spec: str) -> Callable[[str, str], float]:
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise EvalError(f"verifier {spec!r} must look like 'module:function'")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise EvalError(f"verifier {spec!r} cannot be loaded ({e})") from None
    if not callable(fn):
        raise EvalError(f"verifier {spec!r} is not a function")
    return fn
