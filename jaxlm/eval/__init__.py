"""Evaluation: perplexity / bits per byte, the n-shot harness, KV-cache generation.

    from jaxlm.eval import run_tasks, scalars          # the trainer's hook
    from jaxlm.eval.generate import Generator, SamplingConfig

Attributes load lazily, so `python -m jaxlm.eval.<module>` runs without importing the rest.
"""

from jaxlm.eval.errors import EvalError

__all__ = ["EvalError", "evaluate_tasks", "format_table", "run_tasks", "scalars"]


def __getattr__(name):
    if name in ("evaluate_tasks", "format_table", "run_tasks", "scalars"):
        from jaxlm.eval import harness  # lazy: `python -m jaxlm.eval.<module>` needs no harness (see above)
        return getattr(harness, name)
    raise AttributeError(f"module 'jaxlm.eval' has no attribute {name!r}")
