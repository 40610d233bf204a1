"""Verifiable rewards: functions (response text, reference answer) -> reward in [0, 1].

An RL config names one as "module:function" (e.g. "jaxlm.eval.verifiers:final_number"); any
importable function with the same signature works.
"""

from __future__ import annotations

import importlib
import math
import re
from typing import Callable

from jaxlm.eval.answers import final_answer
from jaxlm.eval.errors import EvalError
from jaxlm.eval.tasks import normalize_number


def final_number(response: str, answer: str) -> float:
    """1.0 when the response's final answer (after its last "####", as `answers.final_answer`
    reads it) equals the reference answer, else 0.0: the model must answer in the taught form."""
    got = final_answer(response)
    return 1.0 if got is not None and got == normalize_number(answer) else 0.0


_EQUATION = re.compile(r"(-?\d+(?:\.\d+)?)\s*([-+x*×/])\s*(-?\d+(?:\.\d+)?)\s*=\s*(-?\d+(?:\.\d+)?)")


def checked_working(response: str, answer: str) -> float:
    """1.0 when the final answer is right (as `final_number`) and every equation "a op b = c" the
    response writes on its way there (op one of + - x * × /) holds; else 0.0. A lucky final
    number after wrong working earns nothing: the reward of a worked answer, not a guess."""
    if final_number(response, answer) < 1.0:
        return 0.0
    for a, op, b, c in _EQUATION.findall(response):
        a, b, c = float(a), float(b), float(c)
        value = {"+": a + b, "-": a - b, "x": a * b, "*": a * b, "×": a * b}.get(op)
        if value is None:  # division
            value = a / b if b else math.nan
        if not math.isclose(value, c, rel_tol=1e-9, abs_tol=1e-9):
            return 0.0
    return 1.0


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
