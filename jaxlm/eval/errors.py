"""The one exception type of jaxlm.eval: bad user input (paths, task files, prompts, checkpoints)."""


class EvalError(ValueError):
    """Input the user gave cannot be evaluated; the message says what is wrong and what to do."""
