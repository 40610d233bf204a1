"""Evaluation: perplexity / bits per byte, the n-shot harness, KV-cache generation.

    from jaxlm.eval import run_tasks, scalars          # the trainer's hook
    from jaxlm.eval.generate import Generator, SamplingConfig
"""

from jaxlm.eval.errors import EvalError
from jaxlm.eval.harness import evaluate_tasks, format_table, run_tasks, scalars

__all__ = ["EvalError", "evaluate_tasks", "format_table", "run_tasks", "scalars"]
