"""The one exception type of jaxlm.humaneval: input the user gave (paths, prompt and response files,
a database of another round) that cannot be used; the message says what is wrong and what to do."""


class HumanEvalError(ValueError):
    pass
