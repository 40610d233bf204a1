"""The one place a prompt becomes model input: through the model's chat template when it ships
one, as plain text otherwise.

A chat template is the transformers convention: a Jinja template over `messages` (and
`add_generation_prompt`, `bos_token`, `eos_token`), found as `chat_template.jinja` or as the
`chat_template` string of `tokenizer_config.json`, in the model folder or its tokenizer's folder.
It is rendered in Jinja's immutable sandbox, so a template read from disk cannot reach Python.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from jinja2.sandbox import ImmutableSandboxedEnvironment

from jaxlm.humaneval.inputs import Prompt


def find_chat_template(*folders: str) -> Optional[str]:
    for folder in folders:
        path = os.path.join(folder, "chat_template.jinja")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return f.read()
        path = os.path.join(folder, "tokenizer_config.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                template = json.load(f).get("chat_template")
            if isinstance(template, str):
                return template
    return None


def model_input(prompt: Prompt, template: Optional[str], eos_token: str = "") -> str:
    """The text a model is given for `prompt`. The BOS token is left out of the rendering: the
    generator puts the tokenizer's own BOS id in front when the model was trained with one."""
    if template is None:
        return prompt.text
    messages = list(prompt.messages) if prompt.messages else [{"role": "user", "content": prompt.text}]
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=True, bos_token="",
                                            eos_token=eos_token)
