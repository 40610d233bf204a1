"""Chatting with an instruction-tuned model: its chat template, and replies generated turn by turn.

The template comes from where the model does: a training run's dataset (manifest `chat` block and
chat_template.jinja, jaxlm.data.chat) or a transformers folder (tokenizer_config.json's
`chat_template`; its end-of-turn token is the first `eos_token_id` of generation_config.json, as
jaxlm.export writes it). A reply is generated from the conversation rendered with the generation
prompt, and ends at the end-of-turn token (finish reason "end_of_turn").
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

from jaxlm.data.chat import ChatError, ChatTemplate, ChatTemplateError, check_messages, dataset_template
from jaxlm.data.format import DataFormatError
from jaxlm.data.remote import local_dataset
from jaxlm.eval.errors import EvalError
from jaxlm.eval.generate import Generation, Generator, SamplingConfig
from jaxlm.eval.loading import EvalModel


def workdir_template(em: EvalModel) -> ChatTemplate:
    """The chat template of the dataset a run trained on (its first data source)."""
    sources = em.config.data.sources if em.config is not None else []
    template = None
    if sources:
        try:
            folder = local_dataset(sources[0].path)  # a dataset on Cloud Storage: its local copy
        except DataFormatError as e:
            raise EvalError(str(e)) from None
        if os.path.isfile(os.path.join(folder, "manifest.json")):
            template = dataset_template(folder)
    if template is None:
        where = sources[0].path if sources else "(no data source in the run's config)"
        raise EvalError(f"--chat needs a model tuned on an instruction dataset, but the run's dataset {where} "
                        "has no chat template (manifest.json `chat`); prepare one with data_prep's instruction "
                        "sources, or sample without --chat")
    return template


def hf_template(hf_dir: str, em: EvalModel) -> ChatTemplate:
    """The chat template of a transformers folder (tokenizer_config.json `chat_template`)."""
    def read(name):
        path = os.path.join(hf_dir, name)
        if not os.path.isfile(path):
            return {}
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    config = read("tokenizer_config.json")
    source = config.get("chat_template")
    if not isinstance(source, str) or em.tokenizer is None:
        raise EvalError(f"--chat needs a chat model: {hf_dir} has no tokenizer_config.json `chat_template` "
                        "(or no tokenizer.model); export an instruction-tuned run, or sample without --chat")
    eos = read("generation_config.json").get("eos_token_id")
    first = eos[0] if isinstance(eos, list) and eos else eos
    if not isinstance(first, int) or not 0 <= first < em.tokenizer.vocab_size:
        raise EvalError(f"{hf_dir}/generation_config.json gives no end-of-turn id (eos_token_id), so a reply "
                        "could not end; export the model with jaxlm.export")

    def token(name):
        value = config.get(name) or ""
        return value.get("content", "") if isinstance(value, dict) else value

    return ChatTemplate(source=source, special_tokens=(), end_of_turn=em.tokenizer.sp.id_to_piece(first),
                        bos_token=token("bos_token"), eos_token=token("eos_token"))


def end_of_turn_id(template: ChatTemplate, tokenizer) -> int:
    sp = tokenizer.sp
    i = sp.piece_to_id(template.end_of_turn)
    if i == sp.unk_id() and template.end_of_turn != sp.id_to_piece(sp.unk_id()):
        raise EvalError(f"the tokenizer has no piece {template.end_of_turn!r} (the template's end of turn): "
                        "it is not the tokenizer the instruction data was made with")
    return i


def reply(em: EvalModel, template: ChatTemplate, conversations: Sequence[Sequence[dict]],
          cfg: SamplingConfig, generator: Optional[Generator] = None) -> list[Generation]:
    """The assistant's next turn for each conversation (text cut at the end-of-turn token)."""
    if em.tokenizer is None:
        raise EvalError("chat needs the model's tokenizer")
    try:
        prompts = [template.prompt_ids(em.tokenizer.sp, check_messages(list(c))) for c in conversations]
    except (ChatError, ChatTemplateError) as e:
        raise EvalError(str(e)) from None
    eot = end_of_turn_id(template, em.tokenizer)
    generator = generator or Generator(em.graphdef, em.params, em.window, tokenizer=em.tokenizer, eos_id=eot)
    outs = generator.generate_ids(prompts, cfg)
    for g in outs:
        if g.finish_reason == "eos":
            g.finish_reason = "end_of_turn"
        g.text = em.tokenizer.decode(g.tokens)
    return outs


def converse(em: EvalModel, template: ChatTemplate, user_turns: Sequence[str], cfg: SamplingConfig, *,
             history: Sequence[dict] = (), samples: int = 1) -> list[list[dict]]:
    """`samples` conversations: `history` (answered first when it ends with a user turn), then each
    user turn followed by the model's reply. Replies carry their `finish_reason` (end_of_turn or
    length: a reply that ran out of tokens stays in the conversation as far as it got)."""
    conversations = [[dict(m) for m in history] for _ in range(samples)]
    generator = Generator(em.graphdef, em.params, em.window, tokenizer=em.tokenizer,
                          eos_id=end_of_turn_id(template, em.tokenizer))
    pending = bool(history) and history[-1].get("role") == "user"
    if not pending and not user_turns:
        raise EvalError("nothing to answer: give a user turn (--prompt), or messages that end with one")
    for turn in [None] * pending + list(user_turns):
        for c in conversations:
            if turn is not None:
                c.append({"role": "user", "content": turn})
        for c, g in zip(conversations, reply(em, template, conversations, cfg, generator)):
            c.append({"role": "assistant", "content": g.text, "finish_reason": g.finish_reason})
    return conversations
