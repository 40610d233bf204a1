"""Prompt files and response files.

Prompts: a `.jsonl`/`.json` file holds one JSON object per line with `prompt` (text) or `messages`
(a chat: a list of {"role", "content"}); any other file holds one prompt per non-empty line.

Responses: JSON lines with the prompt (`prompt` or `messages`, as above), `response` (text), and
optionally `system` (a file may hold several systems) and `sample` (0, 1, ...; otherwise a prompt's
responses are its samples in file order). Self-Instruct's prediction files have this shape.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

from jaxlm.eval.errors import EvalError
from jaxlm.eval.tasks import _jsonl as json_lines  # one JSON lines reader (with line numbers) for jaxlm
from jaxlm.humaneval.errors import HumanEvalError


@dataclasses.dataclass(frozen=True)
class Prompt:
    text: str  # shown to raters (a chat's turns as "role: content" paragraphs); the plain model input
    messages: Optional[tuple] = None  # ({"role", "content"}, ...) for a chat prompt

    @property
    def key(self) -> str:
        """What identifies this prompt in a responses file."""
        return self.text if self.messages is None else json.dumps(list(self.messages), sort_keys=True)


def _json_lines(path: str) -> list[tuple[int, dict]]:
    """(line number, object) of every non-empty line, read by the task loader's JSON lines reader."""
    if not os.path.isfile(path):
        raise HumanEvalError(f"file {path!r} does not exist")
    try:
        return list(json_lines(path))
    except EvalError as e:
        raise HumanEvalError(f"{e}; write one JSON object per line") from None


def _prompt_of(row: dict, where: str) -> Prompt:
    if isinstance(row.get("messages"), list):
        turns = row["messages"]
        if not turns or not all(isinstance(t, dict) and isinstance(t.get("role"), str)
                                and isinstance(t.get("content"), str) for t in turns):
            raise HumanEvalError(f"{where}: messages must be a non-empty list of {{\"role\": ..., \"content\": ...}} "
                                 "objects with text values")
        turns = tuple({"role": t["role"], "content": t["content"]} for t in turns)
        return Prompt("\n\n".join(f"{t['role']}: {t['content']}" for t in turns), turns)
    if isinstance(row.get("prompt"), str) and row["prompt"].strip():
        return Prompt(row["prompt"])
    raise HumanEvalError(f"{where}: no prompt; give \"prompt\" (text) or \"messages\" (a chat), found keys "
                         f"{sorted(row)}")


def read_prompts(path: str) -> list[Prompt]:
    if path.endswith((".jsonl", ".json")):
        prompts = [_prompt_of(row, f"{path}:{n}") for n, row in _json_lines(path)]
    else:
        if not os.path.isfile(path):
            raise HumanEvalError(f"prompt file {path!r} does not exist")
        with open(path, encoding="utf-8") as f:
            prompts = [Prompt(line.rstrip("\n")) for line in f if line.strip()]
    if not prompts:
        raise HumanEvalError(f"prompt file {path!r} holds no prompts")
    seen = set()
    for p in prompts:
        if p.key in seen:
            raise HumanEvalError(f"prompt file {path!r} repeats the prompt {p.text[:60]!r}; use --samples for "
                                 "several responses per prompt")
        seen.add(p.key)
    return prompts


def read_responses(path: str) -> tuple[dict[str, dict[str, list[str]]], list[Prompt]]:
    """({system: {prompt key: [response per sample]}}, the prompts in file order). Rows without a
    `system` belong to one named after the file (its name without extension)."""
    default = os.path.splitext(os.path.basename(path))[0]
    out: dict[str, dict[str, dict[int, str]]] = {}
    prompts: dict[str, Prompt] = {}
    for n, row in _json_lines(path):
        where = f"{path}:{n}"
        prompt = _prompt_of(row, where)
        if not isinstance(row.get("response"), str):
            raise HumanEvalError(f"{where}: no \"response\" text")
        name = row.get("system", default)
        samples = out.setdefault(str(name), {}).setdefault(prompt.key, {})
        sample = row.get("sample", len(samples))
        if not isinstance(sample, int) or sample < 0 or sample in samples:
            raise HumanEvalError(f"{where}: sample {sample!r} is not a new non-negative integer for this prompt")
        samples[sample] = row["response"]
        prompts.setdefault(prompt.key, prompt)
    if not out:
        raise HumanEvalError(f"responses file {path!r} holds no responses")
    ordered = {s: {k: [v[i] for i in sorted(v)] for k, v in per.items()} for s, per in out.items()}
    return ordered, list(prompts.values())
