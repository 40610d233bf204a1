"""The one place a prompt becomes model input: through the model's chat template when it ships
one, as plain text otherwise.

A chat template is the transformers convention: a Jinja template over `messages` (and
`add_generation_prompt`, `bos_token`, `eos_token`). It is found, in the model folder or its
tokenizer's folder, as an instruction dataset's manifest names it (`chat`: `template` file and
`end_of_turn` token, which then also stops generation), as `chat_template.jinja`, or as the
`chat_template` string of `tokenizer_config.json`. It is rendered in Jinja's immutable sandbox, so
a template read from disk cannot reach Python.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

from jinja2.sandbox import ImmutableSandboxedEnvironment

from jaxlm.humaneval.inputs import Prompt


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    template: str
    end_of_turn: Optional[str] = None  # a stop string for generation, when the template names one


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return data if isinstance(data, dict) else {}


def find_chat_format(*folders: str) -> Optional[ChatFormat]:
    for folder in folders:
        spec = _read_json(os.path.join(folder, "manifest.json")).get("chat")
        if isinstance(spec, dict) and isinstance(spec.get("template"), str):
            with open(os.path.join(folder, spec["template"]), encoding="utf-8") as f:
                return ChatFormat(f.read(), spec.get("end_of_turn"))
        path = os.path.join(folder, "chat_template.jinja")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return ChatFormat(f.read())
        template = _read_json(os.path.join(folder, "tokenizer_config.json")).get("chat_template")
        if isinstance(template, str):
            return ChatFormat(template)
    return None


def model_input(prompt: Prompt, chat: Optional[ChatFormat], eos_token: str = "") -> str:
    """The text a model is given for `prompt`. The BOS token is left out of the rendering: the
    generator puts the tokenizer's own BOS id in front when the model was trained with one."""
    if chat is None:
        return prompt.text
    messages = list(prompt.messages) if prompt.messages else [{"role": "user", "content": prompt.text}]
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(chat.template).render(messages=messages, add_generation_prompt=True, bos_token="",
                                                 eos_token=eos_token)
