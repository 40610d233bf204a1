"""Instruction-tuning sources: files of examples -> conversations (`Document`s with meta["messages"]).

Source types (each file is a JSON list of records or JSONL, optionally .gz/.zst):
  alpaca         {instruction, input, output}: user = instruction (+ blank line + input when there is
                 one), assistant = output.
  self_instruct  {instruction, instances: [{input, output}]}: one conversation per instance (id
                 "<file>:<line>#<k>"), built like alpaca.
  chat           {messages: [{role, content}]} with roles system/user/assistant, any number of
                 turns; or {turns: [user texts], reference: [assistant texts]} (MT-Bench's layout:
                 the references, when present, answer the turns one by one).
  cot            chain of thought: {question, answer} where the answer is the rationale followed by
                 a final line "#### <answer>" (GSM8K), or {question, rationale, answer}, which is
                 written in that form.
  python_instruct  the embedded demo set, made from the standard library (see `python_examples`).

A document's text is the conversation's contents joined by blank lines: what the text stages
see (exact/near dedup on the whole example, decontamination, filters, the tokenizer sample). The
structure travels in meta["messages"] and is encoded with the chat template when the records are
written. A record without any assistant text has nothing to learn from: it is skipped and counted
("no_response"), as are malformed ones ("malformed_example", with file:line).
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Iterator

from data_prep import corpus
from data_prep.config import INSTRUCT_SOURCE_TYPES, SourceConfig  # noqa: F401  (the types this module reads)
from data_prep.document import Document
from data_prep.sources.common import DAMAGED_FILE_ERRORS, decode_utf8, open_binary
from data_prep.stats import StageStats
from jaxlm.data.chat import ANSWER_MARKER, ChatError, alpaca_prompt, check_messages


def example_text(messages: list[dict]) -> str:
    """The text the document stages see: every message's content, joined by blank lines."""
    return "\n\n".join(m["content"] for m in messages)


def _str(record: dict, key: str, optional: bool = False) -> str:
    value = record.get(key, "" if optional else None)
    if not isinstance(value, str):
        raise ChatError(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def conversations(kind: str, record) -> list[list[dict]]:
    """The conversations in one record of a source of type `kind`; raises ChatError when malformed."""
    if not isinstance(record, dict):
        raise ChatError(f"a record must be a JSON object, got {type(record).__name__}")
    if kind == "alpaca":
        return [[{"role": "user", "content": alpaca_prompt(_str(record, "instruction"), _str(record, "input", True))},
                 {"role": "assistant", "content": _str(record, "output")}]]
    if kind == "self_instruct":
        instruction, instances = _str(record, "instruction"), record.get("instances")
        if not isinstance(instances, list) or not all(isinstance(i, dict) for i in instances):
            raise ChatError("field 'instances' must be a list of {input, output}")
        return [[{"role": "user", "content": alpaca_prompt(instruction, _str(i, "input", True))},
                 {"role": "assistant", "content": _str(i, "output")}] for i in instances]
    if kind == "chat":
        if "messages" in record:
            return [check_messages(record["messages"])]
        turns, answers = record.get("turns"), record.get("reference") or []
        if not (isinstance(turns, list) and turns and all(isinstance(t, str) for t in turns)):
            raise ChatError("a chat record needs 'messages' (a list of {role, content}) or 'turns' (a list of strings)")
        messages = []
        for k, turn in enumerate(turns):
            messages.append({"role": "user", "content": turn})
            if k < len(answers) and isinstance(answers[k], str):
                messages.append({"role": "assistant", "content": answers[k]})
        return [messages]
    if kind == "cot":
        question, answer = _str(record, "question"), _str(record, "answer")
        if "rationale" in record:
            answer = f"{_str(record, 'rationale').rstrip()}\n{ANSWER_MARKER} {answer.strip()}"
        elif ANSWER_MARKER not in answer:
            raise ChatError(f"a cot answer must end with a '{ANSWER_MARKER} <answer>' line, or give 'rationale' and 'answer'")
        return [[{"role": "user", "content": question}, {"role": "assistant", "content": answer}]]
    raise ValueError(f"not an instruction source type: {kind}")


def read_records(path: str, where: str, stats: StageStats) -> Iterator[tuple[str, object]]:
    """(place, record) of a JSON list file or a JSONL file; bad lines are skipped and counted."""
    try:
        with open_binary(path) as f:
            data, bad = decode_utf8(f.read())
    except DAMAGED_FILE_ERRORS:
        stats.skip("corrupt_file", where)
        return
    if bad:
        stats.repair("invalid_utf8", where, bad)
    if not data.strip():
        stats.skip("empty_file", where)
        return
    if data.lstrip().startswith("["):  # one JSON list
        try:
            items = json.loads(data)
        except json.JSONDecodeError as e:
            stats.skip("malformed_json", f"{where}:{e.lineno}")
            return
        yield from ((f"{where}:{i}", item) for i, item in enumerate(items))
        return
    for number, line in enumerate(data.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield f"{where}:{number}", json.loads(line)
        except json.JSONDecodeError:
            stats.skip("malformed_json", f"{where}:{number}")


def read_examples(src: SourceConfig, path: str, where: str, stats: StageStats) -> Iterator[Document]:
    """The conversations of one file (one standard-library module for python_instruct)."""
    if src.type == "python_instruct":
        for doc_id, messages, module in python_examples(path, f"{src.name}/"):
            yield _document(messages, doc_id, src.name, module)
        return
    for at, record in read_records(path, where, stats):
        try:
            convs = conversations(src.type, record)
        except ChatError as e:
            stats.skip("malformed_example", f"{at} ({e})")
            continue
        for k, messages in enumerate(convs):
            doc_id = at if len(convs) == 1 else f"{at}#{k}"
            if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
                stats.skip("no_response", doc_id)
                continue
            yield _document(messages, doc_id, src.name)


def _document(messages: list[dict], doc_id: str, source: str, split_key: str | None = None) -> Document:
    meta = {"messages": messages}
    if split_key is not None:
        meta["split_key"] = split_key  # the split hashes this instead of the id: whole modules held out
    return Document(example_text(messages), doc_id, source, meta)


# --- the embedded demo set: questions about the standard library, answered by its docstrings --------

_DOCTEST_START = re.compile(r"^[ \t]*>>> ", re.MULTILINE)
MIN_ANSWER_CHARS = 20  # shorter first paragraphs ("Return x.") teach little


def module_name(rel_path: str) -> str:
    """'json/__init__.py' -> 'json', 'email/mime/text.py' -> 'email.mime.text'."""
    parts = rel_path[: -len(".py")].split(os.sep)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def first_paragraph(doc: str) -> str:
    return doc.strip().split("\n\n", 1)[0].strip()


def first_doctest(doc: str) -> str | None:
    """The first doctest block of a docstring (its >>> lines and their output), dedented; None if none."""
    m = _DOCTEST_START.search(doc)
    if not m:
        return None
    block = doc[m.start():].split("\n\n", 1)[0].rstrip().split("\n")
    indent = len(block[0]) - len(block[0].lstrip())
    return "\n".join(line[indent:] if line[:indent].isspace() else line.lstrip() for line in block)


def python_examples(rel_path: str, id_prefix: str = "") -> Iterator[tuple[str, list[dict], str]]:
    """(id, conversation, module) for the public names of one standard-library file.

    "What does `mod.name` do?" -> the first paragraph of its docstring; "Show an example of using
    `mod.name`." -> its first doctest; "What is the `mod` module for?" -> the module docstring's
    first paragraph. Private modules and names (leading underscore) are skipped. The source is
    parsed, never imported, so the set is the same on every machine with the same Python.
    """
    module = module_name(rel_path)
    if any(part.startswith("_") for part in module.split(".")):
        return
    try:
        with open(os.path.join(corpus.stdlib_dir(), rel_path), encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    package = module.split(".")[0]

    def qa(name: str, question: str, answer: str, kind: str):
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return f"{id_prefix}{module}:{name}:{kind}", messages, package

    doc = ast.get_docstring(tree)
    if doc and len(first_paragraph(doc)) >= MIN_ANSWER_CHARS:
        yield qa("", f"What is the `{module}` module for?", first_paragraph(doc), "what")

    def walk(body, prefix: str):
        for node in body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or node.name.startswith("_"):
                continue
            name = f"{prefix}{node.name}"
            doc = ast.get_docstring(node)
            if doc:
                if len(first_paragraph(doc)) >= MIN_ANSWER_CHARS and not first_paragraph(doc).startswith(">>>"):
                    yield qa(name, f"What does `{module}.{name}` do?", first_paragraph(doc), "what")
                example = first_doctest(doc)
                if example:
                    yield qa(name, f"Show an example of using `{module}.{name}`.", example, "example")
            if isinstance(node, ast.ClassDef) and not prefix:
                yield from walk(node.body, f"{node.name}.")

    yield from walk(tree.body, "")
