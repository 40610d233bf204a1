"""Preference sources: files of judged response pairs -> `Document`s with meta["pair"].

A pair is {"prompt": the conversation so far (messages, ending with a user turn), "chosen": the
preferred assistant response, "rejected": the other one}. The pipeline renders prompt + response
with the chat template twice and writes one "pair" record (jaxlm.data.format) whose loss masks
cover the final response only: earlier assistant turns belong to the prompt.

Source types (JSON list or JSONL files, optionally .gz/.zst):
  hh_rlhf      Anthropic HH-RLHF: {chosen, rejected}, each a whole transcript of
               "\\n\\nHuman: ..." / "\\n\\nAssistant: ..." turns; the two share every turn but the
               last assistant one. A pair whose transcripts differ before it is skipped
               ("prompts_differ"), as is one whose last turn is not the assistant's.
  pairs        generic: {prompt (a string: one user turn) | messages (the conversation so far),
               chosen, rejected}; chosen/rejected are strings, or message lists whose last message
               is the assistant's response (TRL's conversational form): the messages before it,
               the same in both, continue the prompt (or are the prompt, when none is given).
  alpaca_eval  AlpacaEval annotations: {instruction, output_1, output_2, preference}; preference 1
               or 2 names the better output; anything else (a tie, 0, missing) is skipped
               ("no_preference").
Skips are counted with file:line, as for every source (report.md, manifest).

A document's text is every message's content joined by blank lines, prompt then chosen then
rejected: what dedup, decontamination and the filters see.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from data_prep.config import SourceConfig
from data_prep.document import Document
from data_prep.instruct import example_text, read_records
from data_prep.stats import StageStats
from jaxlm.data.chat import ChatError, check_messages

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def hh_turns(transcript: str) -> list[dict]:
    """An HH-RLHF transcript as messages (Human -> user, Assistant -> assistant); ChatError if it has none."""
    parts = _HH_TURN.split(transcript)
    if len(parts) < 3 or parts[0].strip():
        raise ChatError("an HH-RLHF transcript must start with '\\n\\nHuman:' and alternate Human/Assistant turns")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[who], "content": text.strip()} for who, text in zip(parts[1::2], parts[2::2])]


def _split_last_response(messages: list[dict], what: str) -> tuple[list[dict], str]:
    if not messages or messages[-1]["role"] != "assistant":
        raise ChatError(f"the {what} conversation must end with the assistant's response")
    return messages[:-1], messages[-1]["content"]


def _response(value, what: str) -> tuple[list[dict] | None, str]:
    """(the messages before the response, or None for a bare string; the response)."""
    if isinstance(value, str):
        return None, value
    if isinstance(value, list):
        return _split_last_response(check_messages(value), what)
    raise ChatError(f"field {what!r} must be a string or a list of messages")


def pair_of(kind: str, record) -> dict:
    """The pair in one record of a source of type `kind`; raises ChatError when it has none."""
    if not isinstance(record, dict):
        raise ChatError(f"a record must be a JSON object, got {type(record).__name__}")
    if kind == "hh_rlhf":
        sides = []
        for what in ("chosen", "rejected"):
            if not isinstance(record.get(what), str):
                raise ChatError(f"field {what!r} must be a transcript string")
            sides.append(_split_last_response(hh_turns(record[what]), what))
        (prompt, chosen), (prompt_r, rejected) = sides
        if prompt != prompt_r:
            raise ChatError("prompts_differ")
        return _checked(prompt, chosen, rejected)
    if kind == "pairs":
        (before_c, chosen), (before_r, rejected) = _response(record.get("chosen"), "chosen"), _response(record.get("rejected"), "rejected")
        if (before_c or []) != (before_r or []):
            raise ChatError("chosen and rejected message lists must share everything but the last response")
        if isinstance(record.get("prompt"), str):
            prompt = [{"role": "user", "content": record["prompt"]}]
        elif "messages" in record:
            prompt = check_messages(record["messages"])
        elif before_c:
            prompt = []
        else:
            raise ChatError("a pairs record needs 'prompt' (a string), 'messages' (the conversation so far), or "
                            "chosen/rejected message lists that hold the conversation before the response")
        return _checked(prompt + (before_c or []), chosen, rejected)
    if kind == "alpaca_eval":
        preference = record.get("preference")
        if preference not in (1, 2, 1.0, 2.0):
            raise ChatError("no_preference")
        outputs = [record.get("output_1"), record.get("output_2")]
        if not isinstance(record.get("instruction"), str) or not all(isinstance(o, str) for o in outputs):
            raise ChatError("an alpaca_eval record needs 'instruction', 'output_1' and 'output_2' strings")
        better = int(preference) - 1
        return _checked([{"role": "user", "content": record["instruction"]}], outputs[better], outputs[1 - better])
    raise ValueError(f"not a preference source type: {kind}")


def _checked(prompt: list[dict], chosen: str, rejected: str) -> dict:
    prompt = check_messages(prompt) if prompt else []
    if not prompt or prompt[-1]["role"] != "user":
        raise ChatError("the prompt must end with a user turn")
    if not chosen.strip() or not rejected.strip():
        raise ChatError("empty_response")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def read_pairs(src: SourceConfig, path: str, where: str, stats: StageStats) -> Iterator[Document]:
    """The pairs of one file; malformed records are skipped and counted."""
    for at, record in read_records(path, where, stats):
        try:
            pair = pair_of(src.type, record)
        except ChatError as e:
            reason = str(e) if str(e) in ("prompts_differ", "no_preference", "empty_response") else "malformed_pair"
            stats.skip(reason, at if reason != "malformed_pair" else f"{at} ({e})")
            continue
        text = example_text(pair["prompt"] + [{"content": pair["chosen"]}, {"content": pair["rejected"]}])
        yield Document(text, at, src.name, {"pair": pair})
