"""Chat template: a conversation -> text (a Jinja2 template, as Hugging Face keeps `chat_template`)
-> token ids and a loss mask that is 1 exactly on the tokens the model must learn to write.

A conversation is a list of messages {"role": "system" | "user" | "assistant", "content": str}.
The default template gives every turn a role marker and an end-of-turn token, all four of them
special tokens (user-defined SentencePiece pieces, so they are never split or merged):

    <|system|>\\nYou are terse.<|end|><|user|>\\nHi<|end|><|assistant|>\\nHello.<|end|>

What is trained (mask 1): for every assistant turn, the text the model has to produce after the
prompt that ends in `<|assistant|>\\n` (what `add_generation_prompt=True` renders): the content
and the end-of-turn token. The end-of-turn token is in the loss so the model learns to stop;
role markers, system and user turns are not. The trained span of assistant turn i is found
without knowing the template: it is the text that render(messages[:i+1]) adds to
render(messages[:i], add_generation_prompt=True), so any template that renders a conversation as
the concatenation of its turns works (the check raises ChatTemplateError otherwise).

The text is rendered once and tokenized once, exactly as `tokenizer.apply_chat_template` does in
transformers (same Jinja2 settings: sandboxed, trim_blocks, lstrip_blocks), so an exported model's
HF tokenizer gives the same ids. The mask comes from SentencePiece's byte offsets of each piece.

Imports jinja2, numpy and sentencepiece only (no JAX): data_prep encodes records with it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Sequence

import numpy as np

ROLES = ("system", "user", "assistant")
END_OF_TURN = "<|end|>"
SPECIAL_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", END_OF_TURN)
DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
ANSWER_MARKER = "####"  # chain-of-thought answers end with "#### <final answer>" (GSM8K's form)
TEMPLATE_FILE = "chat_template.jinja"  # beside tokenizer.model, as transformers saves it


class ChatError(ValueError):
    """A conversation is malformed (roles, content); the message says which message and why."""


class ChatTemplateError(ValueError):
    """A chat template cannot be used to mask responses; the message says why and what to change."""


def alpaca_prompt(instruction: str, extra: str = "") -> str:
    """The user turn of an Alpaca-layout example: the instruction, then a blank line and the input
    when there is one (data_prep's `alpaca` source, and evaluation on the same files)."""
    return instruction.strip() + (f"\n\n{extra.strip()}" if extra and extra.strip() else "")


def check_messages(messages: Any) -> list[dict[str, str]]:
    """The conversation as a list of {role, content}; raises ChatError naming the bad message."""
    if not isinstance(messages, list) or not messages:
        raise ChatError(f"a conversation must be a non-empty list of messages, got {type(messages).__name__}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise ChatError(f"message {i} must be {{role: one of {'/'.join(ROLES)}, content: a string}}, got {str(m)[:120]}")
        if m["role"] == "system" and i:
            raise ChatError(f"message {i}: a system message may only come first")
        out.append({"role": m["role"], "content": m["content"]})
    return out


@functools.lru_cache(maxsize=16)
def _compile(source: str):
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(source)
    except TemplateError as e:
        raise ChatTemplateError(f"the chat template is not valid Jinja2: {e}") from None


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A Jinja2 chat template with the special tokens it uses and the end-of-turn token it ends turns with."""

    source: str = DEFAULT_TEMPLATE
    special_tokens: tuple[str, ...] = SPECIAL_TOKENS
    end_of_turn: str = END_OF_TURN
    bos_token: str = ""  # what `{{ bos_token }}` / `{{ eos_token }}` render as, from the tokenizer
    eos_token: str = ""

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
        from jinja2.exceptions import TemplateError

        try:
            return _compile(self.source).render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                                bos_token=self.bos_token, eos_token=self.eos_token)
        except TemplateError as e:
            raise ChatTemplateError(f"the chat template failed to render: {e}") from None

    def trained_spans(self, messages: Sequence[dict]) -> tuple[str, list[tuple[int, int]]]:
        """(the rendered text, [start, end) character spans of every assistant turn's trained text)."""
        messages = check_messages(list(messages))
        text = self.render(messages)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prompt, upto = self.render(messages[:i], add_generation_prompt=True), self.render(messages[: i + 1])
            if not (upto.startswith(prompt) and text.startswith(upto)):
                raise ChatTemplateError(
                    "the chat template does not render a conversation as its turns one after another (the "
                    f"text up to assistant turn {i} is not a prefix of the whole), so responses cannot be "
                    "masked; write the template as a loop that renders each message on its own")
            if len(upto) > len(prompt):
                spans.append((len(prompt), len(upto)))
        return text, spans

    def encode(self, sp, messages: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
        """(token ids int64, loss mask uint8) of a conversation with the SentencePieceProcessor `sp`."""
        text, spans = self.trained_spans(messages)
        return encode_with_spans(sp, text, spans)

    def prompt_ids(self, sp, messages: Sequence[dict]) -> list[int]:
        """Ids of the conversation so far plus the assistant header: what generation continues."""
        return sp.encode(self.render(check_messages(list(messages)), add_generation_prompt=True))


def encode_with_spans(sp, text: str, spans: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Tokenizes `text` once; mask 1 on the pieces inside the character `spans`.

    Raises ChatTemplateError when a piece crosses a span's edge (the template must end its role
    header at a token boundary, e.g. with a newline or a special token)."""
    pieces = sp.encode(text, return_type="proto").pieces
    ids = np.fromiter((p.id for p in pieces), np.int64, len(pieces))
    mask = np.zeros(len(pieces), np.uint8)
    if not spans:
        return ids, mask
    # character offsets -> byte offsets (SentencePiece reports byte offsets into the UTF-8 text)
    byte_at = np.concatenate([[0], np.cumsum([len(c.encode("utf-8")) for c in text])]) if not text.isascii() else None
    begin = np.fromiter((p.begin for p in pieces), np.int64, len(pieces))
    end = np.fromiter((p.end for p in pieces), np.int64, len(pieces))
    for s, e in spans:
        bs, be = (s, e) if byte_at is None else (int(byte_at[s]), int(byte_at[e]))
        inside = (begin >= bs) & (end <= be) & (end > begin)
        crossing = ((begin < bs) & (end > bs)) | ((begin < be) & (end > be))
        if crossing.any():
            t = int(np.argmax(crossing))
            raise ChatTemplateError(f"token {pieces[t].piece!r} crosses the edge of a response in {text[max(0, s - 20):s + 20]!r}; "
                                    "end the template's role header with a newline or a special token")
        mask |= inside.astype(np.uint8)
        # a character encoded as several byte-fallback pieces: all but the last carry an empty span
        mask |= ((begin >= bs) & (begin < be) & (end == begin)).astype(np.uint8)
    return ids, mask


def load_template(path: str | None = None, special_tokens: Sequence[str] | None = None, *,
                  end_of_turn: str | None = None, bos_token: str = "", eos_token: str = "") -> ChatTemplate:
    """The template in file `path` (None: the default), its special tokens (None: the default's)
    and its end-of-turn token (None: the default's)."""
    source = DEFAULT_TEMPLATE
    if path is not None:
        with open(path, encoding="utf-8") as f:
            source = f.read()
        _compile(source)
    tokens = tuple(SPECIAL_TOKENS if special_tokens is None and path is None else special_tokens or ())
    return ChatTemplate(source=source, special_tokens=tokens, end_of_turn=end_of_turn or END_OF_TURN,
                        bos_token=bos_token, eos_token=eos_token)


def dataset_template(dataset_dir: str) -> ChatTemplate | None:
    """The chat template of a prepared instruction dataset (None for a pre-training dataset)."""
    with open(os.path.join(dataset_dir, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    spec = manifest.get("chat")
    if not spec:
        return None
    with open(os.path.join(dataset_dir, spec["template"]), encoding="utf-8") as f:
        source = f.read()
    return ChatTemplate(source=source, special_tokens=tuple(spec["special_tokens"]), end_of_turn=spec["end_of_turn"],
                        bos_token=spec.get("bos_token", ""), eos_token=spec.get("eos_token", ""))
